"""The host yields by itself, on a two-peer loopback mesh: given a busy sample, a peer becomes
the mesh's last resort; under critical memory pressure its idle models are unloaded at once."""

from __future__ import annotations

from collections.abc import Callable

from conftest import NodeThread
from helpers import eventually
from meshes import served_by, two_warm_peers

from meshd.hostload import CRITICAL, NORMAL, HostSample
from meshd.types import ModelState


def test_a_busy_host_yields_and_a_pressed_one_unloads(
    start_node: Callable[..., NodeThread],
) -> None:
    a, b = two_warm_peers(start_node)
    assert a.node is not None and b.node is not None
    a_id = a.node.peer_id

    b.call(b.node.host_watch.apply(HostSample(0.95, NORMAL, False)))
    assert b.node.mesh.local_info().yielding.startswith("its owner's work uses over")
    assert served_by(b) == a_id, "asked of the busy peer, served by the other"
    eventually(lambda: served_by(a) == a_id)

    b.call(b.node.host_watch.apply(HostSample(0.1, CRITICAL, False)))
    assert b.engine.hosts["tiny"].state is ModelState.COLD, "unloaded at once"

    b.call(b.node.host_watch.apply(HostSample(0.1, NORMAL, False)))
    assert b.node.mesh.local_info().yielding == ""
