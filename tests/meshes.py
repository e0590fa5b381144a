"""Real meshes with mutual TLS for tests: a founder, invites, joined peers, the Admin stub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import NodeThread

from meshd.rpc import channels
from meshd.rpc.join import join_mesh
from meshd.security.credentials import TlsCredentials
from meshd.security.keyring import Keyring
from meshd.types import WarmRequest
from meshd.v1 import access_pb2 as apb

Start = Callable[..., NodeThread]


def admin(node: NodeThread) -> Any:
    """The Admin stub over the node's Unix socket."""
    assert node.node is not None
    return channels.admin_stub(channels.open_channel(f"unix:{node.node.socket}"))


def invite_code(node: NodeThread, ttl: float = 60.0) -> str:
    return str(admin(node).CreateInvite(apb.CreateInviteRequest(ttl_seconds=ttl)).code)


def founder(tmp_path: Path, start: Start, name: str = "a", **kw: Any) -> NodeThread:
    Keyring(tmp_path / name).init_mesh("friends")
    return start(name, **kw)


def joined(tmp_path: Path, start: Start, inviter: NodeThread, name: str, **kw: Any) -> NodeThread:
    join_mesh(tmp_path / name, invite_code(inviter))
    return start(name, **kw)


def credentials_of(home: Path) -> TlsCredentials:
    found = Keyring(home).credentials()
    assert found is not None
    return found


# Heartbeats often, and a peer out of routing after 2 s without one: a busy machine's late
# heartbeat must not drop a live peer (the default is 2.5 s).
FAST = {"heartbeat_interval": "0.2s", "dead_after": "2s"}


def served_by(node: NodeThread) -> str:
    """Which peer served a small completion asked of node."""
    from meshd.client import MeshClient

    with MeshClient(node.address) as mesh:
        return mesh.complete("tiny", "Hello", max_tokens=2).served_by


def two_warm_peers(start: Start, **settings: Any) -> tuple[NodeThread, NodeThread]:
    """Two loopback peers (insecure-dev), each with its own warm copy of tiny, live to each
    other, b serving what is asked of it."""
    import time

    from helpers import eventually

    a = start(**FAST, **settings)
    b = start(peers=[a.address], **FAST, **settings)
    assert a.node is not None and b.node is not None
    for node in (a, b):  # each its own copy (a Warm asked of b may be served by a warm a)
        node.call(node.engine.warm(WarmRequest("tiny", wait=True)))
    b_id = b.node.peer_id
    eventually(lambda: served_by(b) == b_id and len(a.node.table.live(time.monotonic())) == 1)
    return a, b
