"""The one table between meshd errors and gRPC status codes, used by server and client."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from meshd import errors
from meshd.logthrottle import Throttle

log = logging.getLogger("meshd.rpc")

# The error's class name travels in trailing metadata so the client raises the same type.
ERROR_KIND_KEY = "meshd-error"
# The request field at fault, for InvalidRequest.
ERROR_FIELD_KEY = "meshd-field"
# How an error the transport raised (no meshd server answered) begins.
UNREACHABLE = "cannot reach meshd at"

STATUS_OF: dict[type[errors.MeshdError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidModelFile: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InsufficientMemory: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PeerUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AccessDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DownloadFailed: grpc.StatusCode.UNAVAILABLE,
    errors.InsufficientSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}

# For a status that carries no meshd metadata (raised by gRPC itself, or by a foreign server).
ERROR_OF: dict[grpc.StatusCode, type[errors.MeshdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.UNAVAILABLE: errors.PeerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: errors.AccessDenied,
    grpc.StatusCode.PERMISSION_DENIED: errors.AccessDenied,
    grpc.StatusCode.INTERNAL: errors.InternalError,
}


def status_of(error: errors.MeshdError) -> grpc.StatusCode:
    """The status code for an error, by its nearest mapped class."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def trailers_of(error: errors.MeshdError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata naming the error type (and field), for the client."""
    pairs = [(ERROR_KIND_KEY, type(error).__name__)]
    if isinstance(error, errors.InvalidRequest) and error.field:
        pairs.append((ERROR_FIELD_KEY, error.field))
    return tuple(pairs)


def error_from_rpc(exc: grpc.RpcError, address: str = "") -> errors.MeshdError:
    """The typed MeshdError for a failed call, as the server raised it when it was meshd."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or code.name
    trailers = dict(_metadata(exc))
    kind = errors.error_types().get(str(trailers.get(ERROR_KIND_KEY, "")))
    if kind is errors.InvalidRequest:
        return errors.InvalidRequest(details, field=str(trailers.get(ERROR_FIELD_KEY, "")))
    if kind is not None:
        return kind(details)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return errors.RequestTooLarge(f"request refused as too large: {details}")
    if code is grpc.StatusCode.UNAVAILABLE and "handshake" in details.lower():
        return errors.AccessDenied(
            f"meshd at {address or 'the peer'} refused the TLS handshake: "
            "not a peer of this mesh, or this certificate is not one it accepts"
        )
    if code is grpc.StatusCode.UNAVAILABLE and address:
        reason = "connection refused" if "Connection refused" in details else details
        return errors.PeerUnavailable(f"{UNREACHABLE} {address} ({reason})")
    return ERROR_OF.get(code, errors.MeshdError)(details)


def _metadata(exc: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    trailing = getattr(exc, "trailing_metadata", None)
    if trailing is None:
        return []
    try:
        return list(trailing() or [])
    except Exception:  # a locally raised RpcError may have no metadata at all
        return []


async def abort_with(context: aio.ServicerContext[Any, Any], error: errors.MeshdError) -> None:
    """End a call with the error's status and its type in the trailers (always raises)."""
    context.set_trailing_metadata(trailers_of(error))
    await context.abort(status_of(error), str(error))


class ErrorsAsStatus(aio.ServerInterceptor):  # type: ignore[type-arg]
    """The server side's one place where an error becomes a gRPC status: every handler of a
    server with this interceptor just raises. A MeshdError gets its own status; a request
    that is not a valid message gets INVALID_ARGUMENT; anything else (a bug) gets INTERNAL
    and its traceback in the log, once a minute per method and error type."""

    def __init__(self) -> None:
        self.throttle = Throttle()

    async def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        handler = handler._replace(
            request_deserializer=_lenient(handler.request_deserializer, method)
        )
        return wrap_behavior(handler, lambda behavior: self._mapped(behavior, method))

    def _mapped(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        # A stream's behavior is a generator, or a coroutine that writes (the health Watch).
        if inspect.isasyncgenfunction(behavior):
            return _stream(behavior, lambda exc: self._unexpected(exc, method))
        return _unary(behavior, lambda exc: self._unexpected(exc, method))

    def _unexpected(self, exc: Exception, method: str) -> errors.MeshdError:
        key = (method, type(exc).__name__)
        if self.throttle.allow(key):
            log.error("%s failed unexpectedly", method, exc_info=exc)
        return errors.InternalError(f"{method} failed: {type(exc).__name__} (see the peer's log)")


@dataclass(frozen=True)
class Malformed:
    """What a request that failed to parse becomes, so the handler can refuse it cleanly."""

    message: str


def _lenient(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, anything protobuf refuses
            return Malformed(f"{method}: the request is not a valid message ({exc})"[:200])

    return parse


def wrap_behavior(handler: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """A server interceptor's handler with its unary-unary or unary-stream behavior wrapped."""
    if handler is not None and handler.unary_unary is not None:
        return handler._replace(unary_unary=wrap(handler.unary_unary))
    if handler is not None and handler.unary_stream is not None:
        return handler._replace(unary_stream=wrap(handler.unary_stream))
    return handler


def _unary(
    behavior: Callable[..., Any], unexpected: Callable[[Exception], errors.MeshdError]
) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            _refuse_malformed(request)
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, unexpected)

    return call


def _stream(
    behavior: Callable[..., Any], unexpected: Callable[[Exception], errors.MeshdError]
) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            _refuse_malformed(request)
            async for item in behavior(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, unexpected)

    return call


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidRequest(request.message)


async def _abort(
    context: aio.ServicerContext[Any, Any],
    exc: Exception,
    unexpected: Callable[[Exception], errors.MeshdError],
) -> None:
    """End the call: a MeshdError with its own status, anything else as INTERNAL."""
    await abort_with(context, exc if isinstance(exc, errors.MeshdError) else unexpected(exc))
