"""The app-facing client: MeshClient (blocking) and AsyncMeshClient (asyncio), same methods.

An app talks to the mesh over mutual TLS with the credential bundle of
`meshd invite --client --name APP`:

    from meshd import MeshClient
    with MeshClient.from_bundle("myapp.meshd.json") as mesh:
        mesh.warm("tiny")                       # on page load: returns at once
        for chunk in mesh.generate("tiny", "Once upon a time", max_tokens=64):
            print(chunk.text, end="")

On the daemon's own machine its Unix socket needs no credentials:
`MeshClient("unix:/path/to/meshd-home/meshd.sock")`.

Every call has a deadline; failures raise typed meshd.errors.MeshdError subclasses.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2

from meshd.errors import MeshdError, PeerUnavailable
from meshd.routing import MAX_HOPS
from meshd.rpc import channels, convert
from meshd.rpc.status import UNREACHABLE, error_from_rpc
from meshd.security.credentials import TlsCredentials
from meshd.types import (
    ChatMessage,
    Chunk,
    FinishReason,
    GenerateRequest,
    MeshStatus,
    ModelInfo,
    PeerStatus,
    Sampling,
    WarmResult,
)
from meshd.v1 import mesh_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:7070"
DEFAULT_TIMEOUT_S = 30.0  # unary calls
GENERATE_TIMEOUT_S = 600.0  # a whole streamed completion, cold load included
DEFAULT_LEASE_S = 300.0

PLAINTEXT_HINT = (
    "a peer in a mesh accepts TCP only with mutual TLS: use MeshClient.from_bundle(...) or "
    "the daemon's unix: socket"
)

Messages = Iterable[ChatMessage | Mapping[str, str]]


@dataclass(frozen=True)
class Completion:
    """A whole completion, as returned by complete()."""

    text: str
    tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None
    served_by: str


def build_request(
    model: str, prompt: str | None, messages: Messages | None, max_tokens: int, sampling: Sampling
) -> pb.GenerateRequest:
    """The wire request for generate(); exactly one of prompt and messages."""
    chat = tuple(
        m if isinstance(m, ChatMessage) else ChatMessage(m["role"], m["content"])
        for m in (messages or ())
    )
    request = GenerateRequest(
        model=model,
        prompt=None if chat else (prompt or ""),
        messages=chat,
        max_tokens=max_tokens,
        sampling=sampling,
    )
    return convert.request_to_pb(request)


def sampling_of(
    temperature: float, top_p: float, top_k: int, seed: int | None, stop: Iterable[str]
) -> Sampling:
    """Sampling from keyword arguments."""
    return Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop))


def _join(chunks: Iterable[Chunk]) -> Completion:
    parts, last = [], Chunk("", 0)
    for chunk in chunks:
        parts.append(chunk.text)
        last = chunk
    return Completion(
        "".join(parts), last.tokens, last.prompt_tokens, last.finish_reason, last.served_by
    )


class _Addresses(abc.ABC):
    """What both clients share: the peers they may use (the one that answered last first),
    their credentials and deadlines."""

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        credentials: TlsCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        generate_timeout: float = GENERATE_TIMEOUT_S,
    ) -> None:
        self.credentials = credentials
        self.timeout, self.generate_timeout = timeout, generate_timeout
        self.addresses = [address] if isinstance(address, str) else list(address)
        if not self.addresses:
            raise ValueError("MeshClient needs at least one address")
        self.current = 0
        self._connect()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open a channel and stubs per address."""

    @classmethod
    def from_bundle(
        cls, path: str | Path, address: str | Sequence[str] | None = None, **options: Any
    ) -> Self:
        """A client with the app credentials of `meshd invite --client` (mutual TLS), for the
        bundle's addresses unless others are given."""
        from meshd.security.keyring import load_bundle  # cryptography: only for bundles

        credentials, addresses = load_bundle(Path(path))
        return cls(address or addresses, credentials=credentials, **options)

    @property
    def address(self) -> str:
        """The address in use."""
        return self.addresses[self.current]

    def attempts(self) -> list[tuple[int, int]]:
        """(index, how many remain after it) per address to try: the current one first."""
        n = len(self.addresses)
        return [((self.current + k) % n, n - 1 - k) for k in range(n)]

    def failed(self, error: MeshdError, index: int, remaining: int) -> None:
        """Re-raise unless the peer is unreachable and another one is left to try."""
        if not isinstance(error, PeerUnavailable) or remaining == 0:
            tcp = not self.addresses[index].startswith("unix:")
            unreachable = str(error).startswith(UNREACHABLE)  # not a meshd server's own error
            if unreachable and tcp and self.credentials is None:
                raise PeerUnavailable(f"{error}; {PLAINTEXT_HINT}") from None
            raise error


class MeshClient(_Addresses):
    """A blocking client for a mesh: one peer's address, or several to fail over between."""

    def _connect(self) -> None:
        self._channels = [channels.open_channel(a, self.credentials) for a in self.addresses]
        self._mesh = [channels.mesh_stub(c) for c in self._channels]
        self._health = [channels.health_stub(c) for c in self._channels]

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()

    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: Iterable[str] = (),
        timeout: float | None = None,
        local_only: bool = False,
    ) -> Iterator[Chunk]:
        """Stream the completion chunk by chunk; leaving the loop early cancels it on the peer.

        An unreachable peer is skipped for the next address, but only before the first chunk.
        """
        sampling = sampling_of(temperature, top_p, top_k, seed, stop)
        request = build_request(model, prompt, messages, max_tokens, sampling)
        if local_only:  # served by the peer asked, never routed elsewhere
            request.hops = MAX_HOPS
        for index, left in self.attempts():
            call: Any = self._mesh[index].Generate(
                request, timeout=timeout or self.generate_timeout
            )
            started = False
            try:
                for message in call:
                    started = True
                    yield convert.chunk_from_pb(message)
                self.current = index
                return
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, self.addresses[index])
                self.failed(error, index, 0 if started else left)
            finally:
                call.cancel()

    def complete(self, model: str, prompt: str | None = None, **kwargs: Any) -> Completion:
        """The whole completion at once; takes the same arguments as generate()."""
        return _join(self.generate(model, prompt, **kwargs))

    def warm(
        self,
        model: str,
        *,
        lease: float = DEFAULT_LEASE_S,
        wait: bool = False,
        replicas: int = 1,
        timeout: float | None = None,
    ) -> WarmResult:
        """Start warming model and keep it warm for lease seconds; wait=True returns when warm."""
        request = pb.WarmRequest(model=model, lease_seconds=lease, wait=wait, replicas=replicas)
        limit = timeout or (self.generate_timeout if wait else self.timeout)
        return convert.warm_from_pb(self._unary(lambda i: self._mesh[i].Warm, request, limit))

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the peer has, warm or cold."""
        reply = self._unary(lambda i: self._mesh[i].ListModels, pb.ListModelsRequest(), timeout)
        return [convert.model_from_pb(m) for m in reply.models]

    def status(self, *, timeout: float | None = None) -> PeerStatus:
        """The peer's load and memory."""
        reply = self._unary(lambda i: self._mesh[i].PeerStatus, pb.PeerStatusRequest(), timeout)
        return convert.status_from_pb(reply)

    def mesh_status(self, *, timeout: float | None = None) -> MeshStatus:
        """The mesh as the peer sees it: every peer, live or not, and recent routing."""
        reply = self._unary(lambda i: self._mesh[i].MeshStatus, pb.MeshStatusRequest(), timeout)
        return convert.mesh_status_from_pb(reply)

    def health(self, *, timeout: float | None = None) -> bool:
        """True when the peer reports SERVING."""
        request = health_pb2.HealthCheckRequest(service="")
        reply = self._unary(lambda i: self._health[i].Check, request, timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _unary(self, method: Callable[[int], Any], request: Any, timeout: float | None) -> Any:
        for index, left in self.attempts():
            try:
                reply = method(index)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                self.failed(error_from_rpc(exc, self.addresses[index]), index, left)
                continue
            self.current = index
            return reply
        raise AssertionError("unreachable")


class AsyncMeshClient(_Addresses):
    """The asyncio twin of MeshClient; create and use it inside a running loop."""

    def _connect(self) -> None:
        self._channels = [channels.open_aio_channel(a, self.credentials) for a in self.addresses]
        self._mesh = [channels.aio_mesh_stub(c) for c in self._channels]
        self._health = [channels.health_stub(c) for c in self._channels]

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            await channel.close(None)

    async def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: Iterable[str] = (),
        timeout: float | None = None,
        local_only: bool = False,
    ) -> AsyncIterator[Chunk]:
        """Stream the completion chunk by chunk; leaving the loop early cancels it on the peer."""
        sampling = sampling_of(temperature, top_p, top_k, seed, stop)
        request = build_request(model, prompt, messages, max_tokens, sampling)
        if local_only:  # served by the peer asked, never routed elsewhere
            request.hops = MAX_HOPS
        for index, left in self.attempts():
            call: Any = self._mesh[index].Generate(
                request, timeout=timeout or self.generate_timeout
            )
            started = False
            try:
                async for message in call:
                    started = True
                    yield convert.chunk_from_pb(message)
                self.current = index
                return
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, self.addresses[index])
                self.failed(error, index, 0 if started else left)
            finally:
                call.cancel()

    async def complete(self, model: str, prompt: str | None = None, **kwargs: Any) -> Completion:
        """The whole completion at once; takes the same arguments as generate()."""
        return _join([chunk async for chunk in self.generate(model, prompt, **kwargs)])

    async def warm(
        self,
        model: str,
        *,
        lease: float = DEFAULT_LEASE_S,
        wait: bool = False,
        replicas: int = 1,
        timeout: float | None = None,
    ) -> WarmResult:
        """Start warming model and keep it warm for lease seconds; wait=True returns when warm."""
        request = pb.WarmRequest(model=model, lease_seconds=lease, wait=wait, replicas=replicas)
        limit = timeout or (self.generate_timeout if wait else self.timeout)
        reply = await self._unary(lambda i: self._mesh[i].Warm, request, limit)
        return convert.warm_from_pb(reply)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the peer has, warm or cold."""
        reply = await self._unary(
            lambda i: self._mesh[i].ListModels, pb.ListModelsRequest(), timeout
        )
        return [convert.model_from_pb(m) for m in reply.models]

    async def status(self, *, timeout: float | None = None) -> PeerStatus:
        """The peer's load and memory."""
        reply = await self._unary(
            lambda i: self._mesh[i].PeerStatus, pb.PeerStatusRequest(), timeout
        )
        return convert.status_from_pb(reply)

    async def mesh_status(self, *, timeout: float | None = None) -> MeshStatus:
        """The mesh as the peer sees it: every peer, live or not, and recent routing."""
        reply = await self._unary(
            lambda i: self._mesh[i].MeshStatus, pb.MeshStatusRequest(), timeout
        )
        return convert.mesh_status_from_pb(reply)

    async def health(self, *, timeout: float | None = None) -> bool:
        """True when the peer reports SERVING."""
        request = health_pb2.HealthCheckRequest(service="")
        reply = await self._unary(lambda i: self._health[i].Check, request, timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _unary(
        self, method: Callable[[int], Any], request: Any, timeout: float | None
    ) -> Any:
        for index, left in self.attempts():
            try:
                reply = await method(index)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                self.failed(error_from_rpc(exc, self.addresses[index]), index, left)
                continue
            self.current = index
            return reply
        raise AssertionError("unreachable")
