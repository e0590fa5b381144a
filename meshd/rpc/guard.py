"""Who is calling, and may they call this method: checked on every call, health included.

The TLS handshake has already refused callers without a certificate from the mesh CA, and
expired ones. Here, per call: revoked certificates, and roles. A peer may call everything
on TCP; an app (a "client" certificate) may generate, warm and read state, but not fetch model
files or heartbeat; Admin is served only to the local Unix socket, whoever asks over TCP.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from meshd.addresses import is_loopback
from meshd.errors import InvalidRequest
from meshd.logthrottle import Throttle, source_of
from meshd.rpc.status import wrap_behavior
from meshd.security import pki
from meshd.security.revocation import RevocationList

log = logging.getLogger("meshd.guard")

PEER_ONLY = frozenset(
    {"/meshd.v1.Mesh/FetchModel", "/meshd.v1.Mesh/Heartbeat", "/meshd.v1.Mesh/RenewCertificate"}
)
LOCAL_ONLY_SERVICE = "/meshd.v1.Admin/"
_CACHE_SIZE = 256


@dataclass(frozen=True)
class Caller:
    """Who made a call: "local" (the Unix socket), "dev" (plaintext), "peer" or "client"."""

    kind: str
    name: str = ""
    serial: int = 0


def allowed(caller: Caller, method: str) -> bool:
    """The permission table: may this caller call this method?"""
    if caller.kind == "local":
        return True
    if method.startswith(LOCAL_ONLY_SERVICE):
        return False
    if caller.kind == "client":
        return method not in PEER_ONLY
    return caller.kind in ("peer", "dev")


class Guard(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses revoked certificates and calls a caller's role does not allow."""

    def __init__(self, revocations: Callable[[], RevocationList], allow_plaintext: bool) -> None:
        self.revocations, self.allow_plaintext = revocations, allow_plaintext
        self._throttle = Throttle()

    async def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is not None and handler.unary_unary is None and handler.unary_stream is None:
            raise RuntimeError(f"{method}: client-streaming methods are not guarded")
        return wrap_behavior(handler, lambda behavior: self._wrap(behavior, method))

    def _wrap(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                await self.check(context, method)
                async for item in behavior(request, context):
                    yield item

            return stream

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await self.check(context, method)
            return await behavior(request, context)

        return unary

    def _warn(self, message: str, *args: object) -> None:
        """Log a refusal once a minute per message and caller: a revoked peer retries forever."""
        self._throttle.log(log, logging.WARNING, (message, *map(str, args[1:])), message, *args)

    async def check(self, context: aio.ServicerContext[Any, Any], method: str) -> None:
        """Abort the call unless the caller may make it."""
        caller = self.identify(context.auth_context())
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a mesh certificate is required")
            return
        if caller.serial and self.revocations().refuses(caller.serial, caller.name or None):
            self._warn("refused %s from %s: its certificate is revoked", method, caller.name)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"the certificate of {caller.name} is revoked"
            )
        if not allowed(caller, method):
            self._warn("refused %s from %s %s: not allowed", method, caller.kind, caller.name)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not open to {caller.kind} {caller.name}".rstrip(),
            )

    def identify(self, auth: Mapping[str, Iterable[bytes]]) -> Caller | None:
        """The caller, from what the transport proved; None when it proved nothing."""
        kind = b"".join(auth.get("transport_security_type", []))
        if kind == b"local":
            return Caller("local")
        pem = b"".join(auth.get("x509_pem_cert", []))
        if pem:
            return _caller_of(pem)
        return Caller("dev") if self.allow_plaintext and kind in (b"", b"insecure") else None


def certified_caller(context: aio.ServicerContext[Any, Any]) -> Caller | None:
    """The caller's mesh certificate as a Caller, or None (Unix socket, plaintext)."""
    pem = b"".join(context.auth_context().get("x509_pem_cert", []))
    return _caller_of(pem) if pem else None


def calls_from_here(context: aio.ServicerContext[Any, Any]) -> bool:
    """Whether the caller is on this machine: the Unix socket or a loopback TCP address."""
    kind, _, host = source_of(context.peer()).partition(":")
    return kind == "unix" or (kind in ("ipv4", "ipv6") and is_loopback(host))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _caller_of(pem: bytes) -> Caller | None:
    try:
        holder = pki.holder_of(pki.load_cert(pem))
    except InvalidRequest:
        return None
    return Caller(holder.role, holder.name, holder.serial)
