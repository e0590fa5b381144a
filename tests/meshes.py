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
