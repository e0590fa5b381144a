"""The interfaces between the mesh and its transport, so that neither imports the other.

- `PeerLink`: how this peer's router asks another peer (generate, warm). Its gRPC
  implementation is `meshd.rpc.links.GrpcLink`; tests use in-memory links.
- `ReplicaFetcher`: how this peer's router copies a model file from another peer
  (`meshd.replicas.PeerFetcher`).
- `Router`: what the doors (the gRPC servicer, the HTTP app) need of this peer's router;
  `meshd.mesh.Mesh` is the one implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Protocol

from meshd.types import (
    Chunk,
    GenerateRequest,
    MeshStatus,
    ModelInfo,
    PeerInfo,
    PeerStatus,
    Prefix,
    ReplicaPull,
    WarmRequest,
    WarmResult,
)


class PeerLink(Protocol):
    """Requests to another peer, by its address and the peer id its certificate must name;
    failures raise meshd errors."""

    def generate(
        self, address: str, peer_id: str, request: GenerateRequest
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the completion that peer serves (or routes; request.hops says how far)."""
        ...

    async def warm(self, address: str, peer_id: str, request: WarmRequest) -> WarmResult:
        """Warm the model on that peer (and the prefix into a slot there); pull_from names a
        peer it copies the file from first."""
        ...

    async def renew_certificate(self, address: str, peer_id: str) -> bytes:
        """A new certificate (PEM) for this peer's key, from the CA holder at address."""
        ...


class ReplicaFetcher(Protocol):
    """How this peer copies a model file from another peer, then warms it (a replica)."""

    def start(
        self, model: str, address: str, source: str, lease: float, prefix: Prefix | None = None
    ) -> asyncio.Task[None]:
        """Pull model from the peer at address (peer id source), then warm it (and the
        prefix) for the lease; a pull of the same model under way is joined, not repeated."""
        ...

    def pulling(self) -> tuple[ReplicaPull, ...]:
        """The pulls under way, with their progress."""
        ...

    def use(self) -> tuple[int, int, int, int]:
        """Replicas held for the mesh and their bytes, against the most of each."""
        ...


class Router(Protocol):
    """This peer's request path and what it knows, as the doors call it: nothing behind it
    (its engine, its peer table) is reached through it."""

    peer_id: str

    def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]: ...

    async def warm(self, request: WarmRequest) -> WarmResult: ...

    def local_info(self) -> PeerInfo: ...

    def status(self) -> MeshStatus: ...

    async def models(self) -> list[ModelInfo]:
        """This peer's models, the store looked at again first."""
        ...

    def peer_status(self) -> PeerStatus:
        """This peer's identity, load and memory, now."""
        ...

    def heard_from(self, address: str, teller: str, teller_local: bool, vouched: bool) -> None:
        """A peer heartbeat this one from address: heartbeat it back (see PeerTable.add)."""
        ...
