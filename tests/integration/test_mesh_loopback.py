"""The mesh on loopback with static peers: membership, routing, forwarding, Warm, faults."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import eventually, meshd
from meshes import FAST

from meshd import errors
from meshd.client import MeshClient
from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring
from meshd.types import Chunk, ModelState


def live_peers(address: str) -> set[str]:
    with MeshClient(address) as mesh:
        return {p.info.peer_id for p in mesh.mesh_status().peers if p.alive and not p.local}


def test_a_static_link_to_one_peer_reveals_the_rest(start_node: Callable, tiny_model: Path) -> None:
    a = start_node(models={"a": tiny_model}, **FAST)
    b = start_node(models={"b": tiny_model}, peers=[a.address], **FAST)
    c = start_node(models={}, peers=[a.address], **FAST)
    ids = {n.node.peer_id for n in (a, b, c)}
    for node in (a, b, c):
        eventually(lambda node=node: live_peers(node.address) == ids - {node.node.peer_id})


def test_a_request_is_served_by_the_peer_that_has_the_model(
    start_node: Callable, tiny_model: Path
) -> None:
    a = start_node(models={"a": tiny_model}, **FAST)
    b = start_node(models={"b": tiny_model}, peers=[a.address], **FAST)
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    with MeshClient(a.address) as mesh:
        chunks = list(mesh.generate("b", "Hello", max_tokens=6, temperature=0))
        assert {c.served_by for c in chunks} == {b.node.peer_id}
        assert b.node.peer_id in chunks[-1].routing_reason
        assert chunks[-1].tokens == 6
        local = mesh.complete("a", "Hello", max_tokens=3)
        assert local.served_by == a.node.peer_id
        recent = mesh.mesh_status().recent
        assert [r.model for r in recent][-2:] == ["b", "a"]
    with MeshClient(b.address) as direct:
        assert direct.complete("b", "Hello", max_tokens=6, temperature=0).text == "".join(
            c.text for c in chunks
        ), "forwarding changes nothing in the text"


def test_forwarding_uses_the_address_a_peer_answered_at_not_what_it_advertises(
    start_node: Callable, tiny_model: Path
) -> None:
    # A peer behind NAT, or one that advertises an address that does not route from here.
    b = start_node(models={"b": tiny_model}, advertise="0.0.0.0:9", **FAST)
    a = start_node(models={}, peers=[b.address], **FAST)
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    with MeshClient(a.address) as mesh:
        assert mesh.complete("b", "Hello", max_tokens=3).served_by == b.node.peer_id


def test_warm_through_any_peer_warms_where_the_model_lives(
    start_node: Callable, tiny_model: Path
) -> None:
    a = start_node(models={}, **FAST)
    b = start_node(models={"b": tiny_model}, peers=[a.address], **FAST)
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    with MeshClient(a.address) as mesh:
        result = mesh.warm("b", lease=30)
        assert result.served_by == b.node.peer_id
        assert result.state in (ModelState.LOADING, ModelState.WARM)
    with MeshClient(b.address) as on_b:
        eventually(lambda: on_b.models()[0].state is ModelState.WARM)
        assert on_b.models()[0].warm_until > time.time() + 25


def test_unknown_models_and_other_meshes(start_node: Callable, tiny_model: Path) -> None:
    a = start_node(models={"a": tiny_model}, **FAST)
    stranger = start_node(models={"secret": tiny_model}, peers=[a.address], mesh_id="other", **FAST)
    time.sleep(1.0)  # several heartbeats both ways
    assert live_peers(a.address) == set()
    assert live_peers(stranger.address) == set()
    with (
        MeshClient(a.address) as mesh,
        pytest.raises(errors.ModelNotFound, match="in the mesh"),
    ):
        mesh.complete("secret", "Hello", max_tokens=2)
    assert not stranger.engine.hosts["secret"].service_times, "nothing reached the other mesh"


def test_a_stopped_peer_leaves_routing(start_node: Callable, tiny_model: Path) -> None:
    a = start_node(models={}, **FAST)
    b = start_node(models={"b": tiny_model}, peers=[a.address], **FAST)
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    b.stop()
    eventually(lambda: live_peers(a.address) == set(), timeout=30)
    with MeshClient(a.address) as mesh, pytest.raises(errors.ModelNotFound):
        mesh.complete("b", "Hello", max_tokens=2)


def test_the_client_fails_over_to_the_next_address(start_node: Callable) -> None:
    a = start_node()
    with MeshClient(["127.0.0.1:9", a.address]) as mesh:
        assert mesh.complete("tiny", "Hello", max_tokens=2).tokens == 2
        assert mesh.address == a.address


# -- faults with real processes: kill -9 and SIGSTOP ---------------------------------------

SERVE = ["--context", "4096", "--threads", "1"]


def _process_peer(tmp_path: Path, model: Path, peer: str) -> DaemonProcess:
    """A `meshd serve` process with the tiny model and a static link to peer."""
    args = [*SERVE, "--peer", peer, "--no-discovery"]
    return DaemonProcess(tmp_path / "b", [f"tiny={model}"], extra_args=args).start()


def _warm_on(address: str) -> int:
    """How many peers (this one included) have a model warm, as the peer at address sees it."""
    with MeshClient(address) as mesh:
        return sum(
            any(m.state is ModelState.WARM for m in p.info.models)
            for p in mesh.mesh_status().peers
            if p.alive
        )


def _busy(address: str, model: str, tokens: int) -> threading.Thread:
    """Keep the peer's only slot busy for a while."""

    def run() -> None:
        with MeshClient(address) as mesh:
            mesh.complete(model, "Once", max_tokens=tokens)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_kill_9_before_the_first_token_is_served_elsewhere(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    a = start_node(models={"tiny": tiny_model}, slots=1, context=4096)
    b = _process_peer(tmp_path, tiny_model, a.address)
    try:
        eventually(lambda: len(live_peers(a.address)) == 1)
        with MeshClient(a.address) as mesh:
            mesh.warm("tiny", wait=True, replicas=2)  # warm on both: an idle a wins ties
        eventually(lambda: _warm_on(a.address) == 2)
        busy = _busy(a.address, "tiny", 3000)  # then a's slot is taken: b looks better
        eventually(lambda: a.engine.hosts["tiny"].active == 1)
        b.signal(signal.SIGKILL)
        b.proc.wait(5)  # type: ignore[union-attr]
        with MeshClient(a.address) as mesh:
            chunks = list(mesh.generate("tiny", "Hello", max_tokens=8, temperature=0))
            tried = [r.peer_id for r in mesh.mesh_status().recent][-2:]
        b_id = Keyring(tmp_path / "b").peer_id()
        assert tried == [b_id, a.node.peer_id], "first routed to the dead peer, then retried"
        assert {c.served_by for c in chunks} == {a.node.peer_id}
        assert chunks[-1].tokens == 8 and len("".join(c.text for c in chunks)) > 0
        busy.join(60)
    finally:
        b.stop()


def test_kill_9_mid_stream_is_a_clear_partial_error(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    a = start_node(models={})
    b = _process_peer(tmp_path, tiny_model, a.address)
    received: list[Chunk] = []
    try:
        eventually(lambda: len(live_peers(a.address)) == 1)
        with MeshClient(a.address) as mesh:
            stream = mesh.generate("tiny", "Once", max_tokens=4000)
            received.append(next(stream))
            b.signal(signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(errors.PeerUnavailable, match="partial"):
                for chunk in stream:
                    received.append(chunk)
            # Not left hanging until the runner's stall timeout (60 s): the broken connection
            # ends the stream.
            assert time.monotonic() - killed < 30
        counts = [c.tokens for c in received]
        assert counts == sorted(set(counts)), "no chunk was sent twice"
    finally:
        b.stop()


def test_a_paused_peer_leaves_routing_and_comes_back(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    a = start_node(models={})
    b = _process_peer(tmp_path, tiny_model, a.address)
    try:
        eventually(lambda: len(live_peers(a.address)) == 1)
        b.signal(signal.SIGSTOP)
        # How fast it leaves is a figure of bench/mesh.py; here: that it leaves, and returns.
        eventually(lambda: live_peers(a.address) == set(), timeout=30)
        b.signal(signal.SIGCONT)
        eventually(lambda: len(live_peers(a.address)) == 1, timeout=30)
        with MeshClient(a.address) as mesh:
            assert mesh.complete("tiny", "Hello", max_tokens=3).tokens == 3
    finally:
        b.signal(signal.SIGCONT)
        b.stop()


def test_all_peers_busy_is_resource_exhausted_naming_them(
    start_node: Callable, tiny_model: Path
) -> None:
    a = start_node(models={"tiny": tiny_model}, slots=1, max_queue=0, context=4096, **FAST)
    b = start_node(
        models={"tiny": tiny_model}, slots=1, max_queue=0, context=4096, peers=[a.address], **FAST
    )
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    busy = [_busy(b.address, "tiny", 3000), _busy(a.address, "tiny", 3000)]
    eventually(lambda: a.engine.hosts["tiny"].active == b.engine.hosts["tiny"].active == 1)
    with MeshClient(a.address) as mesh, pytest.raises(errors.Overloaded) as caught:
        mesh.complete("tiny", "Hello", max_tokens=2)
    assert a.node.peer_id in str(caught.value) and b.node.peer_id in str(caught.value)
    for thread in busy:
        thread.join(60)


def test_warm_on_app_open_then_generate_hits_a_warm_peer(
    start_node: Callable, tiny_model: Path
) -> None:
    front = start_node(models={}, **FAST)
    back = start_node(models={"m": tiny_model}, peers=[front.address], **FAST)
    eventually(lambda: live_peers(front.address) == {back.node.peer_id})
    with MeshClient(front.address) as app:
        app.warm("m")  # the page opens; the person reads until it is warm where it lives
        eventually(lambda: back.engine.hosts["m"].state is ModelState.WARM, timeout=30)
        eventually(lambda: _warm_on(front.address) == 1, timeout=30)  # as front sees it
        answer = list(app.generate("m", "Hello", max_tokens=4))
    assert answer[-1].served_by == back.node.peer_id
    assert answer[-1].routing_reason.startswith("warm on"), answer[-1].routing_reason


def test_models_says_where_else_in_the_mesh(start_node: Callable, tiny_model: Path) -> None:
    a = start_node(models={"shared": tiny_model}, **FAST)
    b = start_node(models={"shared": tiny_model}, peers=[a.address], **FAST)
    eventually(lambda: live_peers(a.address) == {b.node.peer_id})
    with MeshClient(b.address) as on_b:
        on_b.complete("shared", "Hi", max_tokens=2, local_only=True)  # warm on b
    eventually(lambda: _warm_on(a.address) == 1)
    out = meshd("models", "--json", "--addr", a.address)
    (shared,) = json.loads(out.stdout)
    assert shared["elsewhere"] == [f"{b.node.peer_id} (warm)"]
