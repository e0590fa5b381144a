"""Pull from a friend's peer over gRPC, serve what was pulled, and refuse what a bad peer sends."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from meshd import errors
from meshd.client import MeshClient
from meshd.pull import LocalSource, PeerSource, pull
from meshd.rpc import channels
from meshd.store import ModelStore
from meshd.types import ModelState
from meshd.v1 import mesh_pb2 as pb, mesh_pb2_grpc


def _stored_peer(start_node: Callable, tiny_model: Path, tmp_path: Path) -> Any:
    """A running daemon whose store holds the tiny model as 'tiny'."""
    node = start_node(models={})
    pull(ModelStore(node.settings.home), LocalSource(tiny_model), name="tiny")
    return node


def test_pull_from_a_peer_by_name_and_by_digest(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    peer = _stored_peer(start_node, tiny_model, tmp_path)
    mine = ModelStore(tmp_path / "mine")
    by_name = pull(mine, PeerSource(peer.address, "tiny"))
    assert by_name.model.name == "tiny"
    assert mine.blob_path(by_name.model.digest).read_bytes() == tiny_model.read_bytes()
    other = ModelStore(tmp_path / "other")
    by_digest = pull(other, PeerSource(peer.address, by_name.model.digest), name="copy")
    assert by_digest.model.digest == by_name.model.digest


def test_a_peer_pull_resumes_from_the_partial_file(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    peer = _stored_peer(start_node, tiny_model, tmp_path)
    content = tiny_model.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    mine = ModelStore(tmp_path / "mine")
    mine.partial.mkdir(parents=True)
    (mine.partial / f"{digest}.part").write_bytes(content[:200_000])  # an earlier, cut pull
    result = pull(mine, PeerSource(peer.address, "tiny"))
    assert result.downloaded_bytes == len(content) - 200_000
    assert result.model.digest == f"sha256:{digest}"


def test_a_peer_serves_only_what_is_in_its_store(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    peer = start_node(models={"configured": tiny_model})  # served, but not in the store
    mine = ModelStore(tmp_path / "mine")
    for wanted in ("configured", "sha256:" + "a" * 64):
        with pytest.raises(errors.ModelNotFound, match=f"peer {peer.address}"):
            pull(mine, PeerSource(peer.address, wanted))
    assert mine.models() == []


def test_the_daemon_serves_a_model_pulled_after_it_started(
    start_node: Callable, tiny_model: Path
) -> None:
    node = start_node(models={})
    with MeshClient(node.address) as mesh:
        assert mesh.models() == []
        pull(ModelStore(node.settings.home), LocalSource(tiny_model), name="late")
        assert [m.name for m in mesh.models()] == ["late"]
        assert mesh.models()[0].digest.startswith("sha256:")
        assert mesh.complete("late", "Hello", max_tokens=3).tokens == 3
        ModelStore(node.settings.home).remove("late")
        assert mesh.models() == []


def test_a_tampered_stored_model_is_refused_at_load(start_node: Callable, tiny_model: Path) -> None:
    node = start_node(models={"tiny": tiny_model})
    store = ModelStore(node.settings.home)
    model = pull(store, LocalSource(tiny_model), name="stored").model
    blob = store.blob_path(model.digest)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size, new mtime
    with MeshClient(node.address) as mesh:
        with pytest.raises(errors.ModelUnavailable, match="changed after import"):
            mesh.complete("stored", "Hello", max_tokens=3)
        assert {m.name: m.state for m in mesh.models()}["stored"] is not ModelState.WARM
        assert mesh.complete("tiny", "Hello", max_tokens=3).tokens == 3


class LyingPeer(mesh_pb2_grpc.MeshServicer):
    """A peer that announces the right digest and then sends other bytes."""

    def __init__(self, content: bytes, corrupt: Callable[[bytes], bytes]) -> None:
        self.content, self.corrupt = content, corrupt

    async def FetchModel(self, request: Any, context: Any) -> AsyncIterator[pb.FetchModelChunk]:
        digest = "sha256:" + hashlib.sha256(self.content).hexdigest()
        yield pb.FetchModelChunk(
            manifest=pb.ModelManifest(name="tiny", digest=digest, size=len(self.content))
        )
        body = self.corrupt(self.content)[request.offset :]
        for i in range(0, len(body), 1 << 20):
            yield pb.FetchModelChunk(data=body[i : i + (1 << 20)])


@pytest.fixture
def lying_peer(tiny_model: Path) -> Iterator[Callable[[Callable[[bytes], bytes]], str]]:
    """Start a lying peer on 127.0.0.1:0 with a given corruption; returns its address."""
    loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread, aio.Server]] = []

    def start(corrupt: Callable[[bytes], bytes]) -> str:
        ready: list[Any] = []
        loop = asyncio.new_event_loop()
        liar = LyingPeer(tiny_model.read_bytes(), corrupt)

        async def serve() -> None:
            server = aio.server()
            mesh_pb2_grpc.add_MeshServicer_to_server(liar, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            ready.append((server, port))

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        server, port = ready[0]
        loops.append((loop, thread, server))
        return f"127.0.0.1:{port}"

    yield start
    for loop, thread, server in loops:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _flip(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize(
    "corrupt", [_flip, lambda d: d + b"extra bytes"], ids=["flipped-bit", "extra-bytes"]
)
def test_a_peer_sending_wrong_bytes_is_named_and_nothing_is_kept(
    lying_peer: Callable, tmp_path: Path, corrupt: Callable[[bytes], bytes]
) -> None:
    address = lying_peer(corrupt)
    store = ModelStore(tmp_path)
    with pytest.raises(errors.IntegrityError, match=f"peer {address}"):
        pull(store, PeerSource(address, "tiny"))
    assert store.models() == []
    assert list(store.partial.glob("*.part")) == [], "the bad bytes are not resumed from"
    assert not store.blobs.exists() or list(store.blobs.iterdir()) == []


def test_a_pull_never_disturbs_a_model_being_served(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    node = start_node(models={}, context=4096)
    store = ModelStore(node.settings.home)
    pull(store, LocalSource(tiny_model), name="served")
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_model.read_bytes()[:-8] + b"\0" * 8)  # same shape, other digest
    with MeshClient(node.address) as mesh:
        expected = mesh.complete("served", "Once", max_tokens=600, temperature=0).text
        stream = mesh.generate("served", "Once", max_tokens=600, temperature=0)
        parts = [next(stream).text]
        pull(store, LocalSource(tiny_model), name="again")  # the same file under a new name
        pull(store, LocalSource(other), name="other")  # and another file
        parts.extend(chunk.text for chunk in stream)
        assert "".join(parts) == expected
        assert {m.name for m in mesh.models()} == {"served", "again", "other"}


@pytest.mark.parametrize("offset", [10**9, 2**63 - 1, 2**63, 2**64 - 1])
def test_an_offset_past_the_end_is_invalid(
    start_node: Callable, tiny_model: Path, tmp_path: Path, offset: int
) -> None:
    peer = _stored_peer(start_node, tiny_model, tmp_path)
    channel = channels.open_channel(peer.address)
    chunks = channels.mesh_stub(channel).FetchModel(
        pb.FetchModelRequest(name="tiny", offset=offset), timeout=10
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(chunks)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "past the end" in str(caught.value.details())
    size = tiny_model.stat().st_size
    at_end = channels.mesh_stub(channel).FetchModel(pb.FetchModelRequest(name="tiny", offset=size))
    assert [c.WhichOneof("part") for c in at_end] == ["manifest"]
