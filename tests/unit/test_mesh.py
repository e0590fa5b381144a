"""meshd/mesh.py, the router, with in-memory peer links: forwarding, retry before the first
token only, partial failures, the hop limit and Warm anywhere, in milliseconds. The same paths
run over real gRPC between real daemons in tests/integration/test_mesh_loopback.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from meshd.errors import InvalidRequest, ModelNotFound, Overloaded, PeerUnavailable
from meshd.mesh import Mesh
from meshd.peers import PeerTable
from meshd.types import (
    MAX_HOPS,
    Chunk,
    FinishReason,
    GenerateRequest,
    ModelState,
    PeerInfo,
    PeerModel,
    WarmRequest,
    WarmResult,
)

Script = list[Chunk | Exception]


def answer(*texts: str) -> Script:
    """Chunks of a whole answer, the last one finished."""
    chunks: Script = [Chunk(t, i + 1) for i, t in enumerate(texts[:-1])]
    return [*chunks, Chunk(texts[-1], len(texts), FinishReason.LENGTH, prompt_tokens=2)]


class MemoryLink:
    """A PeerLink whose peers answer from scripts; it records every call."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[str, str, int]] = []

    async def generate(
        self, address: str, peer_id: str, request: GenerateRequest
    ) -> AsyncGenerator[Chunk, None]:
        self.calls.append(("generate", address, request.hops))
        for item in self.scripts[address]:
            if isinstance(item, Exception):
                raise item
            yield item

    async def warm(self, address: str, peer_id: str, request: WarmRequest) -> WarmResult:
        self.calls.append(("warm", address, request.hops))
        return WarmResult(
            request.model, ModelState.LOADING, 0.5, 99.0, served_by=f"peer-{address[0]}"
        )


class NoModelsHere:
    """The engine of a peer with no models: only what the router asks of it."""

    memory_budget = 0

    def __init__(self) -> None:
        self.hosts: dict[str, Any] = {}
        self.generated: list[GenerateRequest] = []

    async def refresh(self) -> None:
        return None

    def loads(self) -> list[Any]:
        return []

    def models(self) -> list[Any]:
        return []

    def memory_in_models(self) -> int:
        return 0

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        self.generated.append(request)
        raise ModelNotFound(f"no model named {request.model!r} here")
        yield  # an async generator

    async def warm(self, request: WarmRequest) -> WarmResult:
        raise ModelNotFound(f"no model named {request.model!r} here")


def router(peers: dict[str, bool], scripts: dict[str, Script]) -> tuple[Mesh, MemoryLink]:
    """A router on peer "me" that knows live peers by address ("b:1" -> peer-b), each with
    model m warm (True) or cold (False); b is the least loaded, then c, then d."""
    table = PeerTable("me", "mesh", dead_after=60)
    now = time.monotonic()
    for i, (address, warm) in enumerate(peers.items()):
        state = ModelState.WARM if warm else ModelState.COLD
        model = PeerModel("m", state, active=i, slots=1, service_seconds=0.1)
        info = PeerInfo(f"peer-{address[0]}", "mesh", "1", address, (model,), memory_free=100 - i)
        table.record_ok(address, info, rtt=0.001, now=now)
    link = MemoryLink(scripts)
    mesh = Mesh(NoModelsHere(), table, link, "me", "mesh", "me:1")  # type: ignore[arg-type]
    return mesh, link


def run(mesh: Mesh, request: GenerateRequest) -> list[Chunk]:
    async def collect() -> list[Chunk]:
        return [chunk async for chunk in mesh.generate(request)]

    return asyncio.run(collect())


REQUEST = GenerateRequest("m", "Hi", max_tokens=3)


def test_a_request_goes_to_the_warm_peer_one_hop_further() -> None:
    mesh, link = router({"b:1": True}, {"b:1": answer("a", "b", "c")})
    chunks = run(mesh, REQUEST)
    assert [c.text for c in chunks] == ["a", "b", "c"]
    assert link.calls == [("generate", "b:1", 1)]
    assert chunks[-1].routing_reason == "warm on peer-b, least expected wait 1 ms"
    assert chunks[0].routing_reason == chunks[-1].routing_reason, "the first says why (headers)"
    assert chunks[1].routing_reason == "", "the ones between pass through untouched"
    assert mesh.outstanding["peer-b"]["m"] == 0, "the forwarded request is no longer counted"
    assert [(r.model, r.peer_id) for r in mesh.recent] == [("m", "peer-b")]


@pytest.mark.parametrize("error", [PeerUnavailable("gone"), Overloaded("full")])
def test_before_the_first_token_it_is_retried_on_the_next_peer(error: Exception) -> None:
    mesh, link = router({"b:1": True, "c:1": True}, {"b:1": [error], "c:1": answer("x", "y")})
    chunks = run(mesh, REQUEST)
    assert [c.text for c in chunks] == ["x", "y"]
    assert [address for _, address, _ in link.calls] == ["b:1", "c:1"]
    assert chunks[-1].routing_reason.startswith("warm on peer-c")


def test_after_the_first_token_it_fails_as_partial_and_is_not_repeated() -> None:
    script: Script = [Chunk("a", 1), Chunk("b", 2), PeerUnavailable("gone")]
    mesh, link = router({"b:1": True, "c:1": True}, {"b:1": script, "c:1": answer("x")})
    got: list[str] = []

    async def collect() -> None:
        async for chunk in mesh.generate(REQUEST):
            got.append(chunk.text)

    with pytest.raises(PeerUnavailable) as caught:
        asyncio.run(collect())
    assert str(caught.value) == "peer peer-b failed after 2 tokens; the text so far is partial"
    assert got == ["a", "b"]
    assert [address for _, address, _ in link.calls] == ["b:1"], "never sent elsewhere"
    assert mesh.outstanding["peer-b"]["m"] == 0


def test_an_error_that_is_not_about_the_peer_is_not_retried() -> None:
    refused = InvalidRequest("max_tokens must be between 1 and 8", field="max_tokens")
    mesh, link = router({"b:1": True, "c:1": True}, {"b:1": [refused], "c:1": answer("x")})
    with pytest.raises(InvalidRequest, match="max_tokens"):
        run(mesh, REQUEST)
    assert [address for _, address, _ in link.calls] == ["b:1"]


def test_when_every_peer_fails_the_error_names_them() -> None:
    scripts: dict[str, Script] = {"b:1": [PeerUnavailable("b gone")], "c:1": [Overloaded("full")]}
    mesh, _ = router({"b:1": True, "c:1": True}, scripts)
    with pytest.raises(Overloaded) as caught:
        run(mesh, REQUEST)
    assert str(caught.value) == "full (tried: peer-b, peer-c)"


def test_a_model_nobody_has_is_not_found_with_what_the_mesh_has() -> None:
    mesh, link = router({"b:1": True}, {})
    with pytest.raises(ModelNotFound) as caught:
        run(mesh, GenerateRequest("other", "Hi"))
    assert str(caught.value) == "no model named 'other' in the mesh (it has: m)"
    assert link.calls == []


def test_a_request_at_the_hop_limit_is_served_here_and_never_forwarded() -> None:
    mesh, link = router({"b:1": True}, {"b:1": answer("x")})
    with pytest.raises(ModelNotFound, match="here"):
        run(mesh, GenerateRequest("m", "Hi", hops=MAX_HOPS))
    assert link.calls == []
    assert [r.hops for r in mesh.engine.generated] == [MAX_HOPS]  # type: ignore[attr-defined]


def test_a_cold_model_goes_to_the_peer_with_the_most_free_memory() -> None:
    mesh, link = router({"b:1": False, "c:1": False}, {"b:1": answer("x"), "c:1": answer("y")})
    chunks = run(mesh, REQUEST)
    assert link.calls == [("generate", "b:1", 1)]
    assert chunks[-1].routing_reason == "no peer had it warm; peer-b has the most free memory"


def test_warm_anywhere_warms_where_the_model_lives() -> None:
    mesh, link = router({"b:1": True, "c:1": False}, {})
    result = asyncio.run(mesh.warm(WarmRequest("m", lease=60)))
    assert link.calls == [("warm", "b:1", 1)]
    assert (result.served_by, result.state, result.ready_in) == ("peer-b", ModelState.LOADING, 0.5)
    asyncio.run(mesh.warm(WarmRequest("m", lease=60, replicas=2)))
    assert link.calls[1:] == [("warm", "b:1", 1), ("warm", "c:1", 1)]


def test_warm_of_a_model_nobody_has() -> None:
    mesh, link = router({"b:1": True}, {})
    with pytest.raises(ModelNotFound, match="no model named 'x' in the mesh"):
        asyncio.run(mesh.warm(WarmRequest("x")))
    assert link.calls == []


def test_warm_at_the_hop_limit_stays_here() -> None:
    mesh, link = router({"b:1": True}, {})
    with pytest.raises(ModelNotFound, match="here"):
        asyncio.run(mesh.warm(WarmRequest("m", hops=MAX_HOPS)))
    assert link.calls == []


def test_a_relay_passes_messages_through_and_notes_only_the_first_and_last() -> None:
    messages = [object(), object(), object()]
    script: Script = [
        dataclasses.replace(chunk, wire=message)
        for chunk, message in zip(answer("a", "b", "c"), messages, strict=True)
    ]
    mesh, _ = router({"b:1": True}, {"b:1": script})
    chunks = run(mesh, REQUEST)
    assert [c.wire for c in chunks[1:-1]] == messages[1:-1], "sent on as they came"
    assert chunks[0].wire is None and chunks[-1].wire is None, "these carry the routing note"
    assert chunks[0].routing_reason.startswith("warm on peer-b")
    assert chunks[-1].routing_reason.startswith("warm on peer-b")


def test_replicas_due_counts_copies_as_placement_does() -> None:
    """auto_replicas tops up while fewer warm copies than asked exist, counted by the same rule
    as placement: a paused holder is no copy (else it would ask, every 5 s, for nothing)."""
    table = PeerTable("me", "mesh", dead_after=60)
    now = time.monotonic()
    warm = PeerModel("m", ModelState.WARM, slots=1)
    table.record_ok("b:1", PeerInfo("peer-b", "mesh", "1", "b:1", (warm,)), rtt=0.001, now=now)
    paused = PeerInfo("peer-c", "mesh", "1", "c:1", (warm,), paused="its owner")
    table.record_ok("c:1", paused, rtt=0.001, now=now)
    mesh = Mesh(NoModelsHere(), table, MemoryLink({}), "me", "mesh", "me:1")  # type: ignore[arg-type]
    mesh.routed_at["m"] = time.monotonic()
    assert mesh.replicas_due({"m": 2}, in_use_for=60) == [("m", 2)]
    assert mesh.replicas_due({"m": 1}, in_use_for=60) == []
    mesh.routed_at["m"] = time.monotonic() - 120  # not asked for lately: left as it is
    assert mesh.replicas_due({"m": 2}, in_use_for=60) == []
