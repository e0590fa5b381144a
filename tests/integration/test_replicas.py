"""Replicas on demand, on a three-peer mutual-TLS loopback mesh: `meshd warm --replicas 2` makes a
verified copy of a model that lives on one peer, both copies serve, and the model outlives the
peer it came from; auto_replicas keeps the count while apps use the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import NodeThread
from helpers import eventually, meshd
from meshes import FAST, Start, founder, joined

from meshd.client import MeshClient
from meshd.pull import LocalSource, pull
from meshd.store import ModelStore, sha256_file
from meshd.types import ModelState


def _three_peers(
    tmp_path: Path, start_peer: Start, tiny_model: Path, **kw: object
) -> list[NodeThread]:
    """a holds tiny in its store; b and c have nothing; all live to each other."""
    pull(ModelStore(tmp_path / "a"), LocalSource(tiny_model), name="tiny")
    a = founder(tmp_path, start_peer, "a", models={}, **FAST, **kw)
    b = joined(tmp_path, start_peer, a, "b", models={}, **FAST, **kw)
    c = joined(tmp_path, start_peer, a, "c", models={}, **FAST, **kw)
    nodes = [a, b, c]
    eventually(lambda: all(len(n.node.table.live(time.monotonic())) == 2 for n in nodes))
    return nodes


def _client(node: NodeThread) -> MeshClient:
    """An app on the peer's own machine: its Unix socket."""
    assert node.node is not None
    return MeshClient(f"unix:{node.node.socket}")


def _holders(nodes: list[NodeThread]) -> list[NodeThread]:
    return [n for n in nodes if n.node is not None and "tiny" in n.node.engine.hosts]


def _warm_on(node: NodeThread) -> bool:
    assert node.node is not None
    host = node.node.engine.hosts.get("tiny")
    return host is not None and host.state is ModelState.WARM


def test_warm_replicas_copies_the_model_to_a_second_peer(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    a, b, c = _three_peers(tmp_path, start_peer, tiny_model)
    warmed = meshd("warm", "tiny", "--replicas", "2", "--wait", home=b.settings.home)
    assert warmed.returncode == 0, warmed.stderr
    holders = _holders([a, b, c])
    assert len(holders) == 2 and a in holders
    copy = next(n for n in holders if n is not a)
    stored = ModelStore(copy.settings.home).get("tiny")
    assert (
        "sha256:" + sha256_file(ModelStore(copy.settings.home).blob_path(stored.digest)).hexdigest()
        == stored.digest
    )
    assert stored.digest == ModelStore(a.settings.home).get("tiny").digest
    assert _warm_on(a) and _warm_on(copy)
    for node in (a, copy):  # each serves its own copy
        with _client(node) as mesh:
            assert mesh.complete("tiny", "Hello", max_tokens=2, local_only=True).tokens == 2

    status = json.loads(meshd("status", "--json", home=c.settings.home).stdout)
    assert {p["info"]["peer_id"] for p in status["peers"] if p["info"]["ca_holder"]} == {
        a.node.peer_id  # type: ignore[union-attr]
    }

    a.stop()  # the peer the model came from goes away: the mesh still serves it
    other = c if copy is b else b
    assert other.node is not None and copy.node is not None
    eventually(lambda: len(other.node.table.live(time.monotonic())) == 1)
    with _client(other) as mesh:
        assert mesh.complete("tiny", "Hello", max_tokens=2).served_by == copy.node.peer_id


def test_replicas_on_every_peer_each_pull_once(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    a, b, c = _three_peers(tmp_path, start_peer, tiny_model)
    with _client(a) as mesh:
        first = mesh.warm("tiny", replicas=3)  # returns at once: the pulls run on b and c
        again = mesh.warm("tiny", replicas=3)  # counted as copies under way, not pulled again
    assert first.model == again.model == "tiny"
    eventually(lambda: len(_holders([a, b, c])) == 3 and all(_warm_on(n) for n in (a, b, c)))
    for node in (b, c):
        assert len(ModelStore(node.settings.home).models()) == 1
        assert not list(ModelStore(node.settings.home).partial.glob("*.part"))


def test_only_a_peer_may_ask_for_a_pull(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    import grpc
    import pytest

    from meshd.rpc import channels
    from meshd.v1 import mesh_pb2 as pb

    a, b, _ = _three_peers(tmp_path, start_peer, tiny_model)
    # The Unix socket is this machine's owner, not a peer's router.
    stub = channels.mesh_stub(channels.open_channel(f"unix:{b.node.socket}"))  # type: ignore[union-attr]
    request = pb.WarmRequest(model="tiny", hops=1, pull_from=a.address)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Warm(request)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "tiny" not in b.node.engine.hosts  # type: ignore[union-attr]


def test_auto_replicas_keeps_two_copies_while_the_model_is_used(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    a, b, c = _three_peers(tmp_path, start_peer, tiny_model, auto_replicas={"tiny": 2})
    assert len(_holders([a, b, c])) == 1  # unused: nothing copied
    with _client(b) as mesh:
        assert mesh.complete("tiny", "Hello", max_tokens=2).tokens == 2  # in use through b
    eventually(lambda: sum(_warm_on(n) for n in (a, b, c)) == 2, timeout=30)


def test_replicas_for_others_have_a_quota_and_expire(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    """A peer holds at most replica_max_models files for the mesh, says so in status, and
    removes a replica nobody used for replica_expire_after."""
    from tinygguf import write_tiny_gguf

    other = write_tiny_gguf(tmp_path / "other.gguf", seed=3)
    pull(ModelStore(tmp_path / "a"), LocalSource(other), name="other")
    a, b, c = _three_peers(tmp_path, start_peer, tiny_model, replica_max_models=1)
    first = meshd("warm", "tiny", "--replicas", "3", "--wait", home=a.settings.home)
    assert first.returncode == 0, first.stderr
    assert len(_holders([a, b, c])) == 3  # b and c hold one replica each: their most
    refused = meshd("warm", "other", "--replicas", "2", "--wait", home=a.settings.home)
    assert refused.returncode == 1 and "replica_max_models = 1" in refused.stderr
    for node in (b, c):
        assert node.node is not None and "other" not in node.node.engine.hosts
    status = json.loads(meshd("status", "--json", home=b.settings.home).stdout)
    assert status["replicas"]["held"] == 1 and status["replicas"]["max_models"] == 1
    text = meshd("status", home=b.settings.home).stdout
    assert "this peer holds 1 of 1 replicas for the mesh" in text, text
    assert b.node is not None
    b.node.engine.hosts["tiny"].last_used = 0.0  # as if nobody had used it since the pull
    b.call(b.node.engine.unload_idle())
    later = time.time() + 8 * 86400  # past replica_expire_after (7 days)
    assert b.call(b.node.fetcher.expire(later)) == ["tiny"]
    assert ModelStore(b.settings.home).models() == [] and "tiny" not in b.node.engine.hosts


def test_a_remote_caller_s_lease_is_capped(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    from meshd.security.keyring import Keyring

    a = founder(tmp_path, start_peer, "a", remote_lease_cap="10m")
    bundle = tmp_path / "app.meshd.json"
    bundle.write_bytes(Keyring(tmp_path / "a").client_bundle("app", [a.address]))
    week = 7 * 86400.0
    with MeshClient.from_bundle(bundle) as app:
        app.warm("tiny", lease=week, wait=True)
    assert a.node is not None
    assert a.node.engine.hosts["tiny"].lease_until <= time.time() + 600
    with _client(a) as owner:  # the owner's own lease is the owner's to choose
        owner.warm("tiny", lease=week)
    assert a.node.engine.hosts["tiny"].lease_until > time.time() + week - 60


def test_replicas_of_a_model_served_from_a_path_are_refused_in_one_line(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    """`meshd serve --model r=./r.gguf` then `meshd warm r --replicas 2`: no peer can copy a
    file that is not in a store, so the CLI says so and exits 1, instead of reporting copies."""
    a = founder(tmp_path, start_peer, "a", models={"r": tiny_model}, **FAST)
    b = joined(tmp_path, start_peer, a, "b", models={}, **FAST)
    eventually(lambda: len(b.node.table.live(time.monotonic())) == 1)
    refused = meshd("warm", "r", "--replicas", "2", home=b.settings.home)
    assert refused.returncode == 1
    assert "served from a file path" in refused.stderr + refused.stdout
    assert len((refused.stderr + refused.stdout).strip().splitlines()) == 1
    assert a.node is not None and b.node is not None
    assert "r" in a.node.engine.hosts and "r" not in b.node.engine.hosts
    one = meshd("warm", "r", "--json", home=b.settings.home)  # one copy: fine, as before
    assert one.returncode == 0 and json.loads(one.stdout)["copies"] == 1


def test_warm_says_how_many_copies_it_could_make(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    _, b, _ = _three_peers(tmp_path, start_peer, tiny_model)
    short = meshd("warm", "tiny", "--replicas", "5", "--json", home=b.settings.home)
    assert short.returncode == 1, short.stdout + short.stderr
    assert json.loads(short.stdout)["copies"] == 3  # a warm, b and c pulling
