"""One daemon: wires the engine, the gRPC server and health, and owns start and stop order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshd.config import Settings
from meshd.daemonfile import remove_daemon_file, write_daemon_file
from meshd.discovery import Discovery, txt_record
from meshd.engine import Engine
from meshd.identity import load_or_create_peer_id
from meshd.mesh import Mesh
from meshd.peers import Membership, PeerTable
from meshd.rpc.channels import ChannelPool, bind, server_options
from meshd.rpc.servicer import MeshServicer, add_to_server
from meshd.store import ModelStore
from meshd.types import ModelState

log = logging.getLogger("meshd")
SERVICE_NAME = "meshd.v1.Mesh"


class Node:
    """A peer: start() serves, stop() drains and frees everything. Both are idempotent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.peer_id = load_or_create_peer_id(settings.home)
        self.store = ModelStore(settings.home)
        self.engine = Engine(settings, self.store)
        self.pool = ChannelPool()
        self.table = PeerTable(self.peer_id, settings.mesh_id, settings.dead_after)
        self.mesh = Mesh(self.engine, self.table, self.pool, self.peer_id, settings.mesh_id, "")
        self.membership = Membership(
            self.table, self.pool, self.mesh.local_info, settings.heartbeat_interval
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.discovery: Discovery | None = None
        self.server: aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """host:port as bound (the real port when the setting was :0)."""
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Validate models, open the port, report SERVING, and write the daemon file."""
        if self.server is not None:
            return
        await self.engine.start()
        server = aio.server(options=server_options(self.settings.max_message_bytes))
        add_to_server(MeshServicer(self.mesh, self.store), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.port = bind(server, self.settings.listen)
            await server.start()
        except BaseException:
            await self.engine.close()
            raise
        self.server = server
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(SERVICE_NAME, serving)
        self.mesh.address = self.settings.advertise or self.address
        for peer in self.settings.peers:
            self.table.add(peer, "static")
        self.membership.start()
        if self.settings.discovery:
            await self._start_discovery()
        write_daemon_file(self.settings.home, self.address, self.peer_id)  # last: fully up
        log.info("serving on %s as %s (mesh %s)", self.address, self.peer_id, self.mesh.mesh_id)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight streams finish within grace, then free the models."""
        server, self.server = self.server, None
        if server is not None:
            await self.health.enter_graceful_shutdown()
            if self.discovery is not None:
                await self.discovery.close()  # the mDNS goodbye
            await server.stop(self.settings.drain_seconds if grace is None else grace)
            remove_daemon_file(self.settings.home)
        await self.membership.close()
        await self.pool.close()
        await self.engine.close()

    async def _start_discovery(self) -> None:
        """Announce on the LAN and hand found addresses to the peer table."""

        def describe() -> dict[str, str]:
            info = self.mesh.local_info()
            warm = [m.name for m in info.models if m.state is ModelState.WARM]
            load = sum(m.active + m.queued for m in info.models)
            return txt_record(self.peer_id, info.mesh_id, info.version, self.port, warm, load)

        host = self.settings.listen.rpartition(":")[0].strip("[]")
        if host in ("localhost", "::1") or host.startswith("127."):
            log.info("listening on loopback only: not announcing on the network")
            return
        self.discovery = Discovery(
            self.peer_id,
            self.settings.mesh_id,
            host,
            self.port,
            describe,
            lambda address, peer_id: self.table.add(address, "mdns", peer_id),
        )
        try:
            await self.discovery.start()
        except OSError as exc:  # no multicast here: static peers still work
            log.warning("mDNS discovery is off: %s", exc)
            self.discovery = None

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop_requested.is_set():
                os._exit(128 + signum)
            log.info("signal %s: draining (signal again to exit at once)", signum)
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await self.start()
        await stop_requested.wait()
        await self.stop()
