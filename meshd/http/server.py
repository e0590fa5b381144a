"""uvicorn, created inside the daemon's running loop: the HTTP door beside the gRPC one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import h11
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from uvicorn.protocols.http.h11_impl import H11Protocol

from meshd.addresses import is_loopback
from meshd.config import Settings
from meshd.errors import ConfigError
from meshd.http.app import ASGIApp, create_app
from meshd.http.gate import DEFAULT_ORIGINS, Gate
from meshd.links import Router
from meshd.security import pki
from meshd.security.apikeys import KeyCheck
from meshd.security.trust import Trust
from meshd.telemetry import Telemetry

log = logging.getLogger("meshd.http")
KEEP_ALIVE_S = 5  # an idle HTTP/1.1 connection is closed after this
# A connection must send a request's whole head within this long of opening (or of its last
# answer): silent or dribbling connections cannot hold the door's places.
HEADER_TIMEOUT_S = 5.0
# Connections one address may hold at once; a new one beyond it closes that address's oldest
# connection still waiting for a request (or, when all of them are busy, is closed itself).
MAX_CONNECTIONS_PER_SOURCE = 64
ACCEPT_BATCH = 16


def guarded_protocol(total: int, per_source: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head, and caps on the
    connections of one address and of the whole door (shared by one server's connections): a
    connection past a cap takes the place of the oldest one still waiting for a request, or,
    when every one is busy, is dropped at once (its file descriptor freed with it)."""
    by_source: dict[str, list[H11Protocol]] = {}
    held: list[H11Protocol] = []

    def waiting(connections: list[H11Protocol]) -> H11Protocol | None:
        return next(
            (c for c in connections if c.conn.their_state is h11.IDLE and c.cycle is None), None
        )

    def evict(connection: H11Protocol) -> None:
        connection.transport.abort()  # silent: nothing to say goodbye to
        held.remove(connection)
        by_source[connection._source].remove(connection)  # type: ignore[attr-defined]

    class Guarded(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._source = self.client[0] if self.client else ""
            mine = by_source.setdefault(self._source, [])
            for connections, cap in ((mine, per_source), (held, total)):
                if len(connections) >= cap:
                    oldest = waiting(connections)
                    if oldest is None:
                        transport.abort()
                        return
                    evict(oldest)
            mine.append(self)
            held.append(self)
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._header_deadline = self.loop.call_later(header_timeout, self._head_overdue)

        def _head_overdue(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no whole request head in time

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._header_deadline.cancel()
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            deadline = getattr(self, "_header_deadline", None)
            if deadline is not None:
                deadline.cancel()
            mine = by_source.get(getattr(self, "_source", ""), [])
            if self in mine:
                mine.remove(self)
                if not mine:
                    by_source.pop(self._source, None)
            if self in held:
                held.remove(self)
            super().connection_lost(exc)

    return Guarded


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGTERM and SIGINT, and stops this server itself


def listening_socket(listen: str) -> socket.socket:
    """A bound, listening TCP socket for host:port (port 0: any free one)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpServer:
    """One HTTP listener; start() binds and serves, close() stops (both idempotent)."""

    def __init__(self, app: ASGIApp, listen: str, max_connections: int) -> None:
        self.app, self.listen, self.max_connections = app, listen, max_connections
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port as bound."""
        return f"{self.listen.rpartition(':')[0]}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> int:
        """Bind and serve; returns the port."""
        if self._task is not None:
            return self.port
        try:
            sock = listening_socket(self.listen)
        except OSError as exc:
            raise OSError(f"HTTP on {self.listen}: {exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            limit_concurrency=2 * self.max_connections,  # a backstop: the protocol caps first
            http=guarded_protocol(
                self.max_connections,
                min(MAX_CONNECTIONS_PER_SOURCE, self.max_connections),
                HEADER_TIMEOUT_S,
            ),
            timeout_keep_alive=KEEP_ALIVE_S,
            # asyncio accepts up to `backlog` connections per turn of the loop before any of
            # them reaches the caps above: a small batch keeps a reconnect flood from taking
            # every file descriptor between two turns.
            backlog=ACCEPT_BATCH,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="meshd-http")
        # uvicorn says it started only through this flag
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # raises why it could not start
        return self.port

    async def close(self) -> None:
        """Stop serving; open streams get a few seconds to end."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


def http_door(
    settings: Settings, router: Router, trust: Trust, telemetry: Telemetry, max_connections: int
) -> HttpServer:
    """The HTTP door of a daemon (not started): keyless on a loopback listener, API keys
    signed by the mesh CA on any other."""
    listen = settings.http_listen
    keys_required = not is_loopback(listen.rpartition(":")[0])
    keys = None
    if trust.ca is not None:
        public_key = trust.ca.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        keys = KeyCheck(public_key, pki.mesh_id_of(trust.ca), lambda: trust.revocations)
    if keys_required and keys is None:
        raise ConfigError(
            f"http_listen {listen} is not loopback, so it needs API keys, which a mesh signs: "
            "run `meshd init` (or `meshd join`) first, or keep http_listen on 127.0.0.1"
        )
    gate = Gate(
        keys_required=keys_required,
        keys=keys,
        hosts=settings.http_hosts,
        origins=settings.http_origins or DEFAULT_ORIGINS,
    )
    app = create_app(router, telemetry, gate, settings.max_message_bytes)
    return HttpServer(app, listen, max_connections)
