"""The owner decides, on a two-peer loopback mesh: `meshd pause` sends the mesh's requests
elsewhere within seconds, `meshd resume` brings them back, and a pause outlives a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NodeThread, node_settings
from helpers import eventually, meshd
from meshes import FAST, founder, served_by, two_warm_peers

from meshd.client import MeshClient
from meshd.errors import PeerUnavailable
from meshd.security.keyring import Keyring
from meshd.types import WarmRequest


def test_pause_and_resume_move_the_mesh_s_requests(
    start_node: Callable[..., NodeThread], tiny_model: Path
) -> None:
    a, b = two_warm_peers(start_node)
    assert a.node is not None and b.node is not None
    a_id, b_id = a.node.peer_id, b.node.peer_id

    paused = meshd("pause", "--for", "1h", home=b.settings.home)
    assert paused.returncode == 0 and "paused until" in paused.stdout
    # How fast the requests leave is a figure of bench/owner.py; here: that they do.
    eventually(lambda: served_by(b) == a_id, timeout=30)  # asked of b, served by a
    assert served_by(a) == a_id
    status = json.loads(meshd("status", "--json", home=a.settings.home).stdout)
    seen = {p["info"]["peer_id"]: p["info"]["paused"] for p in status["peers"]}
    assert seen[b_id].startswith("paused by its owner until") and seen[a_id] == ""
    with MeshClient(b.address) as mesh, pytest.raises(PeerUnavailable, match="no mesh requests"):
        # What a request forwarded to b looks like (hops = 1): refused, so its sender goes on.
        list(mesh.generate("tiny", "Hello", max_tokens=2, local_only=True))

    assert meshd("resume", home=b.settings.home).returncode == 0
    eventually(lambda: served_by(b) == b_id, timeout=30)


def test_a_pause_outlives_a_restart(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "b"
    assert meshd("pause", home=home).returncode == 0
    node = NodeThread(node_settings(home, {"tiny": tiny_model})).start()
    try:
        assert node.node is not None
        assert node.node.mesh.local_info().paused == "paused by its owner"
    finally:
        node.stop()
    assert "resumed" in meshd("resume", home=home).stdout
    assert meshd("pause", "--for", "0", home=home).returncode == 1


def test_a_paused_peer_unloads_models_nobody_used_for_a_while(
    start_node: Callable[..., NodeThread],
) -> None:
    node = start_node(paused_unload_after="30m")
    assert node.node is not None
    host = node.node.engine.hosts["tiny"]
    node.call(node.node.engine.warm(WarmRequest("tiny", wait=True)))
    assert node.call(node.node.paused_unload.check()) == []  # not paused: kept
    assert meshd("pause", home=node.settings.home).returncode == 0
    assert node.call(node.node.paused_unload.check()) == []  # used just now: kept
    host.last_used -= 31 * 60  # as if nobody had used it for 31 minutes
    assert node.call(node.node.paused_unload.check()) == ["tiny"]
    assert not host.loaded
    assert meshd("resume", home=node.settings.home).returncode == 0


def test_a_paused_peer_serves_only_its_owner(
    tmp_path: Path, start_peer: Callable[..., NodeThread]
) -> None:
    """Pause means pause: an app with its own certificate, asking this peer directly, is
    refused as a peer's forwarded request is; the owner's own requests (the Unix socket) run."""
    a = founder(tmp_path, start_peer)
    assert a.node is not None
    bundle = tmp_path / "app.meshd.json"
    bundle.write_bytes(Keyring(tmp_path / "a").client_bundle("app", [a.address]))
    with MeshClient.from_bundle(bundle) as app:
        assert app.complete("tiny", "Hello", max_tokens=2).tokens == 2
        assert meshd("pause", "--for", "1h", home=tmp_path / "a").returncode == 0
        with pytest.raises(PeerUnavailable, match="takes no mesh requests"):
            app.complete("tiny", "Hello", max_tokens=2)
        with pytest.raises(PeerUnavailable, match="takes no mesh requests"):
            app.warm("tiny", lease=60)
    with MeshClient(f"unix:{a.node.socket}") as owner:
        assert owner.complete("tiny", "Hello", max_tokens=2).tokens == 2
        assert owner.warm("tiny", lease=60).model == "tiny"
    assert meshd("resume", home=tmp_path / "a").returncode == 0
    with MeshClient.from_bundle(bundle) as app:
        assert app.complete("tiny", "Hello", max_tokens=2).tokens == 2


def test_a_model_only_a_paused_peer_has_is_named_as_such(
    start_node: Callable[..., NodeThread],
) -> None:
    a = start_node(**FAST)
    b = start_node(models={}, peers=[a.address], **FAST)
    assert a.node is not None and b.node is not None
    eventually(lambda: len(b.node.table.live(time.monotonic())) == 1, timeout=30)  # type: ignore[union-attr]
    assert served_by(b) == a.node.peer_id
    assert meshd("pause", home=a.settings.home).returncode == 0
    with MeshClient(b.address) as mesh:

        def refused() -> str:
            try:
                mesh.complete("tiny", "Hello", max_tokens=2)
            except PeerUnavailable as exc:
                return str(exc)
            return ""

        eventually(lambda: "only on peers that take no requests" in refused(), timeout=30)
        assert f"{a.node.peer_id}: paused by its owner" in refused()
