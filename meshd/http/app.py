"""The HTTP door: an OpenAI-compatible API, warm-on-open for web pages, metrics and a chat page,
all going through the same router as gRPC (meshd.links.Router)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshd import errors
from meshd.http.gate import Gate, origin_allowed
from meshd.http.openai import (
    Completion,
    HttpError,
    Shaper,
    http_error,
    parse_body,
    parse_completion,
    parse_prefix,
    sse,
)
from meshd.links import Router
from meshd.logthrottle import Throttle
from meshd.telemetry import Telemetry, Tracked
from meshd.types import Chunk, ModelState, WarmRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_WARM_LEASE_S = 300.0
WEB_WARM_LEASE_CAP_S = 900.0  # the longest a web page's warm holds a model (apps: any lease)
JSON_ONLY = "application/json"
# Every answer: no other site may frame the page (and with it, warm a model on the owner's
# behalf), nor have a browser guess another type than the one sent.
PAGE_HEADERS = [
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
]
MESHD_HEADERS = "x-meshd-served-by, x-meshd-routing-reason"


def require_json(request: Request) -> None:
    """Generation takes JSON only (415 otherwise): a page of another site can send text/plain
    or a form without asking the browser first, but never JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != JSON_ONLY:
        raise HttpError(
            415,
            f"send the body as {JSON_ONLY} (got {kind[:64] or 'no content-type'!r})",
            code="unsupported_media_type",
        )


def error_response(error: HttpError) -> JSONResponse:
    headers = {"retry-after": str(error.retry_after)} if error.retry_after else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _page(name: str) -> bytes:
    return resources.files("meshd.http").joinpath("page", name).read_bytes()


class Door:
    """The routes; every request reaches the router as gRPC's do."""

    def __init__(self, router: Router, telemetry: Telemetry, max_body: int, owner: bool) -> None:
        self.router, self.telemetry, self.max_body = router, telemetry, max_body
        # A door on loopback serves this machine's owner (and the pages they open); one on
        # another address serves apps with keys, which a pause refuses like other peers.
        self.owner = owner
        self.index, self.script = _page("index.html"), _page("meshd-warm.js")

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/warm", self.warm, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/meshd-warm.js", self.warm_script, methods=["GET"]),
            Route("/", self.page, methods=["GET"]),
        ]

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) past max_body without reading the rest."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise HttpError(413, f"the body is over {self.max_body} bytes", code="too_large")
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > self.max_body:
                raise HttpError(413, f"the body is over {self.max_body} bytes", code="too_large")
        return bytes(data)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        require_json(request)
        asked = parse_completion(parse_body(await self._body(request)), chat)
        asked = dataclasses.replace(
            asked, request=dataclasses.replace(asked.request, from_owner=self.owner)
        )
        noted(request)["model"] = asked.request.model
        tracked = self.telemetry.track(asked.request.model, "http")
        stream = self.router.generate(asked.request)
        try:
            first = await anext(stream)
        except BaseException as exc:  # a refusal, or the client gone before the first token
            await stream.aclose()
            if isinstance(exc, StopAsyncIteration):
                raise HttpError(500, "the model sent nothing", "server_error") from None
            tracked.failed(type(exc).__name__ if isinstance(exc, errors.MeshdError) else "gone")
            raise
        tracked.token()
        served_by = first.served_by
        noted(request)["served_by"] = served_by
        headers = {
            "x-meshd-served-by": served_by,
            "x-meshd-routing-reason": first.routing_reason,
        }
        if asked.stream:
            events = self._events(asked, first, stream, tracked)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return await self._whole(asked, first, stream, headers, tracked)

    async def _whole(
        self,
        asked: Completion,
        first: Chunk,
        stream: AsyncGenerator[Chunk, None],
        headers: dict[str, str],
        tracked: Tracked,
    ) -> Response:
        text, last = [first.text], first
        async with contextlib.aclosing(stream) as rest:
            try:
                async for chunk in rest:
                    text.append(chunk.text)
                    last = chunk
            except errors.MeshdError as error:
                tracked.failed(type(error).__name__)
                raise
        body = Shaper(asked.request.model, asked.chat).whole("".join(text), last)
        body["meshd"] = {"served_by": last.served_by, "routing_reason": last.routing_reason}
        tracked.finished(last, self.router.peer_id)
        return JSONResponse(body, headers=headers)

    async def _events(
        self,
        asked: Completion,
        first: Chunk,
        stream: AsyncGenerator[Chunk, None],
        tracked: Tracked,
    ) -> AsyncIterator[bytes]:
        """SSE: a chunk per piece of text, the finish, the usage when asked, [DONE]. A failure
        after the first token is one `error` event, then the end: never repeated text."""
        shaper = Shaper(asked.request.model, asked.chat)
        async with contextlib.aclosing(stream) as rest:
            chunk, is_first = first, True
            try:
                while True:
                    yield self._event(shaper, chunk, is_first)
                    if chunk.finish_reason is not None:
                        break
                    chunk, is_first = await anext(rest), False
            except errors.MeshdError as error:
                tracked.failed(type(error).__name__)
                yield sse({"error": http_error(error).body()["error"]})
                return
            except StopAsyncIteration:
                tracked.failed("truncated")
                return
            except (GeneratorExit, asyncio.CancelledError):  # the client went away
                tracked.abandoned()
                raise
        if asked.include_usage:
            yield sse(shaper.usage_chunk(chunk))
        tracked.finished(chunk, self.router.peer_id)
        yield sse("[DONE]")

    @staticmethod
    def _event(shaper: Shaper, chunk: Chunk, first: bool) -> bytes:
        body = shaper.chunk(chunk.text, chunk.finish_reason, first)
        if chunk.finish_reason is not None:
            body["meshd"] = {"served_by": chunk.served_by, "routing_reason": chunk.routing_reason}
        return sse(body)

    def _listing(self) -> list[dict[str, Any]]:
        """Every model in the mesh: where it is warm, its best state, whether it chats."""
        seen = self.router.status()
        order = [ModelState.WARM, ModelState.LOADING, ModelState.COLD, ModelState.FAILED]
        found: dict[str, dict[str, Any]] = {}
        for peer in seen.peers:
            if not (peer.alive or peer.local):
                continue
            for m in peer.info.models:
                entry = found.setdefault(
                    m.name,
                    {
                        "id": m.name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "meshd",
                        "state": m.state.value,
                        "warm_on": [],
                        "paged_out_on": [],
                        "resident": {},
                        "chat_template": m.chat_template,
                    },
                )
                if m.state is ModelState.WARM:
                    entry["warm_on"].append(peer.info.peer_id)
                if m.paged_out:
                    entry["paged_out_on"].append(peer.info.peer_id)
                share = m.resident_share
                if share is not None:  # of its file in memory on that peer (mincore)
                    entry["resident"][peer.info.peer_id] = round(share, 4)
                if order.index(m.state) < order.index(ModelState(entry["state"])):
                    entry["state"] = m.state.value
                entry["chat_template"] = entry["chat_template"] or m.chat_template
        for entry in found.values():
            entry["chat"] = bool(entry["chat_template"])
        return sorted(found.values(), key=lambda e: e["id"])

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self._listing()})

    async def model(self, request: Request) -> Response:
        """One model of the mesh, or OpenAI's 404."""
        name = request.path_params["model"]
        for entry in self._listing():
            if entry["id"] == name:
                return JSONResponse(entry)
        raise HttpError(
            404, f"no model named {name[:64]!r} in the mesh", param="model", code="model_not_found"
        )

    async def warm(self, request: Request) -> Response:
        """Warm a model where it lives in the mesh; 202 at once. JSON, text/plain (what
        navigator.sendBeacon sends) or a form."""
        raw = await self._body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind == "application/x-www-form-urlencoded" and not raw.lstrip().startswith(b"{"):
            form = parse_qs(raw.decode(errors="replace"))
            fields: dict[str, Any] = {k: v[0] for k, v in form.items()}
        else:  # JSON, whatever the label (sendBeacon's text/plain, curl -d's form type)
            fields = dict(parse_body(raw))
        model = fields.get("model")
        if not isinstance(model, str) or not model:
            raise HttpError(400, "model must be a non-empty string", param="model")
        noted(request)["model"] = model
        lease = fields.get("lease_seconds", DEFAULT_WARM_LEASE_S)
        try:
            lease = float(lease)
        except (TypeError, ValueError):
            raise HttpError(400, "lease_seconds must be a number", param="lease_seconds") from None
        if not math.isfinite(lease) or lease < 0:
            raise HttpError(400, "lease_seconds must be a number ≥ 0", param="lease_seconds")
        if "origin" in request.headers:  # a web page's warm: it holds the model briefly
            lease = min(lease, WEB_WARM_LEASE_CAP_S)
        prefix = parse_prefix(fields)
        result = await self.router.warm(
            WarmRequest(model, lease, prefix=prefix, from_owner=self.owner)
        )
        noted(request)["served_by"] = result.served_by
        body = {
            "model": result.model,
            "state": result.state.value,
            "ready_in_seconds": result.ready_in,
            "warm_until": result.warm_until if math.isfinite(result.warm_until) else None,
            "served_by": result.served_by,
        }
        return JSONResponse(body, status_code=202)

    async def metrics(self, request: Request) -> Response:
        return Response(self.telemetry.exposition(), media_type="text/plain; version=0.0.4")

    async def warm_script(self, request: Request) -> Response:
        return Response(
            self.script, media_type="text/javascript", headers={"cache-control": "max-age=300"}
        )

    async def page(self, request: Request) -> Response:
        return Response(self.index, media_type="text/html; charset=utf-8")


SERVED = (
    "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}, "
    "POST /v1/warm, GET /metrics, GET /meshd-warm.js and GET /"
)
NOTED = "meshd.noted"  # the scope key of what the access log says beyond method and path
MAX_ASKED_HEADERS = 2048  # bytes of Access-Control-Request-Headers a preflight may list
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
access_log = logging.getLogger("meshd.http.access")
log = logging.getLogger("meshd.http")


def noted(request: Request) -> dict[str, str]:
    """What the access log line of this request says beyond its method, path and status."""
    notes: dict[str, str] = request.scope.setdefault(NOTED, {})
    return notes


class Guarded:
    """ASGI middleware: the gate's checks before any route, CORS headers after, every error in
    OpenAI's shape (an unexpected one as a 500, its traceback logged once a minute), and one
    access-log line per request."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app, self.gate = app, gate
        self._throttle = Throttle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        cors = origin is not None and origin_allowed(origin, self.gate.origins)
        status = 0

        async def send_with_cors(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
                if cors and origin is not None:
                    extra = _cors_headers(origin)
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self._guarded(scope, receive, send_with_cors, headers, origin)
        except Exception as exc:  # a bug, or llama.cpp's: answered, never a dropped connection
            if self._throttle.allow(("500", scope["path"][:64], type(exc).__name__)):
                path = scope["path"][:200]
                log.error("HTTP %s %s failed unexpectedly", scope["method"], path, exc_info=exc)
            if not status:
                await error_response(
                    HttpError(500, f"internal error: {exc}"[:300], "server_error")
                )(scope, receive, send_with_cors)
        finally:
            notes = scope.get(NOTED, {})
            access_log.info(
                "%s %s %d model=%s served_by=%s %.0fms",
                scope["method"],
                scope["path"][:200],
                status or 499,
                notes.get("model", "-")[:64],
                notes.get("served_by", "-")[:64],
                (time.monotonic() - started) * 1000,
            )

    async def _guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        origin: str | None,
    ) -> None:
        client = scope.get("client") or ("", 0)
        try:
            self.gate.check_host(headers.get("host", ""))
            self.gate.check_origin(origin)
            if scope["method"] == "OPTIONS":
                asked = headers.get("access-control-request-headers", "")
                response = Response(status_code=204)
                response.raw_headers.extend(_preflight_headers(asked))
                await response(scope, receive, send)
                return
            self.gate.authenticate(scope["path"], headers.get("authorization"), client[0])
        except HttpError as error:
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def allowed_headers(asked: str) -> str:
    """The headers a preflight allows: authorization and content-type, and whatever well-formed
    names the page asked for (the openai SDK sends x-stainless-*, others their own): the origin
    is already on the allowlist, and no header name grants more than the key it carries."""
    names = ["authorization", "content-type"]
    for name in asked[:MAX_ASKED_HEADERS].split(","):
        name = name.strip().lower()
        if _HEADER_NAME.match(name) and name not in names:
            names.append(name)
    return ", ".join(names)


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    """The CORS headers of every answer to an allowed origin."""
    pairs = [
        ("access-control-allow-origin", origin),
        ("vary", "Origin"),
        ("access-control-expose-headers", MESHD_HEADERS),
    ]
    return [(k.encode(), v.encode("latin-1")) for k, v in pairs]


def _preflight_headers(asked: str) -> list[tuple[bytes, bytes]]:
    """What a preflight answer adds: methods, the headers the page asked for, how long."""
    pairs = [
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", allowed_headers(asked)),
        ("access-control-max-age", "600"),
    ]
    return [(k.encode(), v.encode("latin-1")) for k, v in pairs]


def create_app(router: Router, telemetry: Telemetry, gate: Gate, max_body: int) -> ASGIApp:
    """The whole HTTP door as one ASGI app."""
    door = Door(router, telemetry, max_body, owner=not gate.keys_required)
    handlers: dict[Any, Any] = {
        HttpError: _as_response,
        errors.MeshdError: _as_response,
        ClientDisconnect: _as_response,
        HTTPException: _as_response,
        Exception: _as_response,  # answered here; Guarded logs it
    }
    return Guarded(Starlette(routes=door.routes(), exception_handlers=handlers), gate)


async def _as_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HttpError):
        return error_response(exc)
    if isinstance(exc, errors.MeshdError):
        return error_response(http_error(exc))
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        where = f"{request.method} {request.url.path[:100]}"
        return error_response(
            HttpError(404, f"no such endpoint: {where}; meshd serves {SERVED}", code="not_found")
        )
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        where = f"{request.method} {request.url.path[:100]}"
        message = f"{where} is not served; meshd serves {SERVED}"
        return error_response(HttpError(405, message, code="method_not_allowed"))
    if isinstance(exc, HTTPException):
        return error_response(HttpError(exc.status_code, str(exc.detail)[:200]))
    if isinstance(exc, ClientDisconnect):
        return Response(status_code=499)  # the client went away: nobody reads this
    return error_response(HttpError(500, f"internal error: {exc}"[:300], "server_error"))
