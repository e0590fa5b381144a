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
from typing import Any, Generic, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from meshd.errors import PeerUnavailable
from meshd.rpc import channels, convert
from meshd.rpc.status import UNREACHABLE, error_from_rpc
from meshd.security.credentials import TlsCredentials
from meshd.types import (
    MAX_HOPS,
    ChatMessage,
    Chunk,
    FinishReason,
    GenerateRequest,
    MeshStatus,
    ModelInfo,
    PeerStatus,
    Prefix,
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
Result = TypeVar("Result")


@dataclass(frozen=True)
class Completion:
    """A whole completion, as returned by complete()."""

    text: str
    tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None
    served_by: str
    cached_tokens: int = 0  # prompt tokens the serving slot had in its cache already
    routing_reason: str = ""  # why the mesh chose the peer that served it


def _chat_message(message: ChatMessage | Mapping[str, str]) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    return ChatMessage(message["role"], message["content"])


def build_request(
    model: str,
    prompt: str | None,
    messages: Messages | None,
    max_tokens: int,
    sampling: Sampling,
    local_only: bool = False,
) -> pb.GenerateRequest:
    """The wire request for generate(); exactly one of prompt and messages."""
    chat = tuple(_chat_message(m) for m in messages or ())
    request = GenerateRequest(
        model=model,
        prompt=None if chat else (prompt or ""),
        messages=chat,
        max_tokens=max_tokens,
        sampling=sampling,
        hops=MAX_HOPS if local_only else 0,  # local_only: served by the peer asked, never routed
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
        "".join(parts),
        last.tokens,
        last.prompt_tokens,
        last.finish_reason,
        last.served_by,
        last.cached_tokens,
        last.routing_reason,
    )


@dataclass(frozen=True)
class Unary(Generic[Result]):
    """One unary call, as both faces make it: which method, the request, the deadline, and
    how the reply becomes a result."""

    method: str
    request: Any
    timeout: float | None
    decode: Callable[[Any], Result]
    health: bool = False


class _Core(abc.ABC):
    """What both clients share: the peers they may use (the one that answered last first),
    their credentials and deadlines, every request and every reply. The faces only call."""

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        credentials: TlsCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        generate_timeout: float = GENERATE_TIMEOUT_S,
        peer_id: str = "",
    ) -> None:
        self.credentials = credentials
        # With mutual TLS and a peer id, only a certificate naming that peer is accepted.
        self.peer_id = peer_id
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

    def failed(self, exc: grpc.RpcError, index: int, remaining: int) -> None:
        """Raise the call's error unless the peer is unreachable and another one is left."""
        error = error_from_rpc(exc, self.addresses[index])
        if not isinstance(error, PeerUnavailable) or remaining == 0:
            tcp = not self.addresses[index].startswith("unix:")
            unreachable = str(error).startswith(UNREACHABLE)  # not a meshd server's own error
            if unreachable and tcp and self.credentials is None:
                raise PeerUnavailable(f"{error}; {PLAINTEXT_HINT}") from None
            raise error from None

    def _stub(self, call: Unary[Any], index: int) -> Any:
        stubs: list[Any] = self._health if call.health else self._mesh  # type: ignore[attr-defined]
        return getattr(stubs[index], call.method)

    # -- the calls -------------------------------------------------------------------------

    def _warm(
        self,
        model: str,
        lease: float,
        wait: bool,
        replicas: int,
        timeout: float | None,
        prefix: str | None,
        messages: Messages | None,
    ) -> Unary[WarmResult]:
        request = pb.WarmRequest(model=model, lease_seconds=lease, wait=wait, replicas=replicas)
        if prefix or messages:
            chat = tuple(_chat_message(m) for m in messages or ())
            convert.prefix_to_pb(Prefix(prefix or "", chat), request)
        limit = timeout or (self.generate_timeout if wait else self.timeout)
        return Unary("Warm", request, limit, convert.warm_from_pb)

    @staticmethod
    def _models(timeout: float | None) -> Unary[list[ModelInfo]]:
        return Unary(
            "ListModels",
            pb.ListModelsRequest(),
            timeout,
            lambda reply: [convert.model_from_pb(m) for m in reply.models],
        )

    @staticmethod
    def _status(timeout: float | None) -> Unary[PeerStatus]:
        return Unary("PeerStatus", pb.PeerStatusRequest(), timeout, convert.status_from_pb)

    @staticmethod
    def _mesh_status(timeout: float | None) -> Unary[MeshStatus]:
        return Unary("MeshStatus", pb.MeshStatusRequest(), timeout, convert.mesh_status_from_pb)

    @staticmethod
    def _health_check(timeout: float | None) -> Unary[bool]:
        serving = health_pb2.HealthCheckResponse.SERVING
        request = health_pb2.HealthCheckRequest(service="")
        return Unary("Check", request, timeout, lambda r: bool(r.status == serving), health=True)


class MeshClient(_Core):
    """A blocking client for a mesh: one peer's address, or several to fail over between."""

    def _connect(self) -> None:
        self._channels = [
            channels.open_channel(a, self.credentials, peer_id=self.peer_id) for a in self.addresses
        ]
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
        request = build_request(model, prompt, messages, max_tokens, sampling, local_only)
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
                self.failed(exc, index, 0 if started else left)
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
        prefix: str | None = None,
        messages: Messages | None = None,
    ) -> WarmResult:
        """Start warming model and keep it warm for lease seconds; wait=True returns when warm.
        With a prefix (the start of later prompts) or messages (the first messages of later
        chats, e.g. the system prompt), it is also evaluated into a slot's cache and held for
        the lease, so later requests that start with it prefill only the rest."""
        call = self._warm(model, lease, wait, replicas, timeout, prefix, messages)
        return self._call(call)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the peer has, warm or cold."""
        return self._call(self._models(timeout))

    def status(self, *, timeout: float | None = None) -> PeerStatus:
        """The peer's load and memory."""
        return self._call(self._status(timeout))

    def mesh_status(self, *, timeout: float | None = None) -> MeshStatus:
        """The mesh as the peer sees it: every peer, live or not, and recent routing."""
        return self._call(self._mesh_status(timeout))

    def health(self, *, timeout: float | None = None) -> bool:
        """True when the peer reports SERVING."""
        return self._call(self._health_check(timeout))

    def _call(self, call: Unary[Result]) -> Result:
        for index, left in self.attempts():
            try:
                reply = self._stub(call, index)(call.request, timeout=call.timeout or self.timeout)
            except grpc.RpcError as exc:
                self.failed(exc, index, left)
                continue
            self.current = index
            return call.decode(reply)
        raise AssertionError("unreachable: the last attempt raises")


class AsyncMeshClient(_Core):
    """The asyncio face of the same client; create and use it inside a running loop."""

    def _connect(self) -> None:
        self._channels = [
            channels.open_aio_channel(a, self.credentials, self.peer_id) for a in self.addresses
        ]
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
        request = build_request(model, prompt, messages, max_tokens, sampling, local_only)
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
                self.failed(exc, index, 0 if started else left)
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
        prefix: str | None = None,
        messages: Messages | None = None,
    ) -> WarmResult:
        """Start warming model and keep it warm for lease seconds; wait=True returns when warm.
        With a prefix (the start of later prompts) or messages (the first messages of later
        chats, e.g. the system prompt), it is also evaluated into a slot's cache and held for
        the lease, so later requests that start with it prefill only the rest."""
        call = self._warm(model, lease, wait, replicas, timeout, prefix, messages)
        return await self._call(call)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the peer has, warm or cold."""
        return await self._call(self._models(timeout))

    async def status(self, *, timeout: float | None = None) -> PeerStatus:
        """The peer's load and memory."""
        return await self._call(self._status(timeout))

    async def mesh_status(self, *, timeout: float | None = None) -> MeshStatus:
        """The mesh as the peer sees it: every peer, live or not, and recent routing."""
        return await self._call(self._mesh_status(timeout))

    async def health(self, *, timeout: float | None = None) -> bool:
        """True when the peer reports SERVING."""
        return await self._call(self._health_check(timeout))

    async def _call(self, call: Unary[Result]) -> Result:
        for index, left in self.attempts():
            try:
                stub = self._stub(call, index)
                reply = await stub(call.request, timeout=call.timeout or self.timeout)
            except grpc.RpcError as exc:
                self.failed(exc, index, left)
                continue
            self.current = index
            return call.decode(reply)
        raise AssertionError("unreachable: the last attempt raises")
