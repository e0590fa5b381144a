"""The two interfaces between the mesh and its transport, so that neither imports the other.

- `PeerLink`: how this peer's router asks another peer (generate, warm). Its gRPC
  implementation is `meshd.rpc.links.GrpcLink`; tests use in-memory links.
- `Router`: what the gRPC servicer (one door in) needs of this peer's router; `meshd.mesh.Mesh`
  is the one implementation.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Protocol

from meshd.types import Chunk, GenerateRequest, MeshStatus, PeerInfo, WarmResult

if TYPE_CHECKING:
    from meshd.engine import Engine
    from meshd.peers import PeerTable


class PeerLink(Protocol):
    """Requests to another peer, by its address; failures raise meshd errors."""

    def generate(self, address: str, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Stream the completion that peer serves (or routes; request.hops says how far)."""
        ...

    async def warm(
        self, address: str, model: str, lease: float, wait: bool, hops: int
    ) -> WarmResult:
        """Warm model on that peer."""
        ...


class Router(Protocol):
    """This peer's request path, as the servicer calls it."""

    peer_id: str
    engine: Engine
    table: PeerTable

    def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]: ...

    async def warm(
        self, model: str, lease: float, wait: bool, replicas: int, hops: int
    ) -> WarmResult: ...

    def local_info(self) -> PeerInfo: ...

    def status(self) -> MeshStatus: ...
