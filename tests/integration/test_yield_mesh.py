"""The host yields by itself, on a two-peer loopback mesh: given a busy sample, a peer becomes
the mesh's last resort; under critical memory pressure its idle models are unloaded at once."""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import NodeThread
from helpers import eventually

from meshd.client import MeshClient
from meshd.hostload import CRITICAL, NORMAL, HostSample
from meshd.types import ModelState

FAST = {"heartbeat_interval": "0.2s", "dead_after": "0.6s"}


def served_by(node: NodeThread) -> str:
    with MeshClient(node.address) as mesh:
        return mesh.complete("tiny", "Hello", max_tokens=2).served_by


def test_a_busy_host_yields_and_a_pressed_one_unloads(
    start_node: Callable[..., NodeThread],
) -> None:
    a = start_node(**FAST)
    b = start_node(peers=[a.address], **FAST)
    assert a.node is not None and b.node is not None
    for node in (a, b):  # each its own copy (a Warm asked of b may be served by a warm a)
        node.call(node.engine.warm("tiny", wait=True))
    a_id, b_id = a.node.peer_id, b.node.peer_id
    eventually(lambda: served_by(b) == b_id and len(a.node.table.live(time.monotonic())) == 1)

    b.call(b.node.host_watch.apply(HostSample(0.95, NORMAL, False)))
    assert b.node.mesh.local_info().yielding.startswith("its owner's work uses over")
    assert served_by(b) == a_id, "asked of the busy peer, served by the other"
    eventually(lambda: served_by(a) == a_id)

    b.call(b.node.host_watch.apply(HostSample(0.1, CRITICAL, False)))
    assert b.engine.hosts["tiny"].state is ModelState.COLD, "unloaded at once"

    b.call(b.node.host_watch.apply(HostSample(0.1, NORMAL, False)))
    assert b.node.mesh.local_info().yielding == ""
