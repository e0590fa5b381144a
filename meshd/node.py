"""One daemon: wires the engine, the gRPC server and health, and owns start and stop order."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import time

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.core import Metric

from meshd import __version__, gossip
from meshd.addresses import announce_addresses, is_loopback, is_wildcard, lan_ipv4, reachable_hosts
from meshd.awake import KeepAwake
from meshd.config import Settings
from meshd.daemonfile import remove_daemon_file, write_daemon_file
from meshd.discovery import Discovery, txt_record
from meshd.engine import Engine
from meshd.fdlimit import connection_cap, raise_open_file_limit
from meshd.fsutil import private_dir
from meshd.homelock import HomeLock
from meshd.hostload import NORMAL, HostWatch, YieldRules, memory_pressure
from meshd.http.server import HttpServer, http_door
from meshd.mesh import Mesh
from meshd.netwatch import AddressWatch
from meshd.pause import PauseState, UnloadWhilePaused
from meshd.peers import PeerTable
from meshd.renewal import Renewer
from meshd.replicas import PeerFetcher, ReplicaKeeper, ReplicaQuota
from meshd.rpc.access import AdminServicer, JoinDesk
from meshd.rpc.channels import (
    ChannelPool,
    bind,
    bind_socket,
    restrict_socket,
    server_options,
    socket_path,
)
from meshd.rpc.guard import Guard
from meshd.rpc.links import GrpcLink
from meshd.rpc.membership import Membership
from meshd.rpc.servicer import MeshServicer, add_to_server
from meshd.rpc.status import ErrorsAsStatus
from meshd.security import pki
from meshd.security.credentials import TlsCredentials
from meshd.security.keyring import Keyring
from meshd.security.trust import Trust
from meshd.store import ModelStore
from meshd.telemetry import Telemetry, gauge
from meshd.types import ModelState
from meshd.v1 import access_pb2_grpc

log = logging.getLogger("meshd")
SERVICE_NAME = "meshd.v1.Mesh"


class Node:
    """A peer: start() serves, stop() drains and frees everything. Both are idempotent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = HomeLock(settings.home)
        self.lock.acquire()  # one daemon per home, before anything in it is touched
        self.keyring = Keyring(settings.home)
        self.peer_id = self.keyring.peer_id()
        self.trust = Trust(self.keyring)
        self.credentials = self.keyring.credentials()
        mesh_id = pki.mesh_id_of(self.trust.ca) if self.trust.ca else settings.mesh_id
        self.store = ModelStore(settings.home)
        self.telemetry = Telemetry()
        self.engine = Engine(settings, self.store, self.telemetry)
        self.pool = ChannelPool(self.credentials)
        self.table = PeerTable(self.peer_id, mesh_id, settings.dead_after)
        self.table.refused = self.trust.refuses_peer
        self.trust.on_revoked = lambda _: self.table.forget_refused()
        link = GrpcLink(self.pool)
        self.fetcher = PeerFetcher(
            self.store,
            self.engine,
            lambda: self.credentials,
            settings.max_pull_bytes,
            replica_quota(settings),
        )
        paused = PauseState(settings.home, settings.quiet_hours).why
        self.mesh = Mesh(
            self.engine,
            self.table,
            link,
            self.peer_id,
            mesh_id,
            "",
            paused=paused,
            ca_holder=self.keyring.is_founder,
            fetcher=self.fetcher,
            route_by_prefix=settings.route_by_prefix,
            remote_lease_cap=settings.remote_lease_cap,
        )
        self.paused_unload = UnloadWhilePaused(
            paused, self.engine.unload_idle, settings.paused_unload_after
        )
        self.keeper = ReplicaKeeper(
            self.mesh, dict(settings.auto_replicas), in_use_for=settings.keep_alive
        )
        self._read_certificate_end()
        self.renewer = Renewer(
            self.keyring, self.trust, self.table, link, settings.renew_before, self._renewed
        )
        self.membership = Membership(
            self.table, self.pool, self.mesh.local_info, settings.heartbeat_interval, self.trust
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.desk = JoinDesk(self.trust, self.host, self.reachable_at)
        self.guard = Guard(lambda: self.trust.revocations, allow_plaintext=settings.insecure_dev)
        self.servicer = MeshServicer(self.mesh, self.store, self.trust, self.telemetry)
        self.admin = AdminServicer(self.trust, self.desk)
        self.discovery: Discovery | None = None
        self.address_watch = AddressWatch(lan_ipv4, self._addresses_changed)
        self.servers: list[aio.Server] = []  # TCP (when served) and the Unix socket
        self.http: HttpServer | None = None
        self.awake = KeepAwake(settings.keep_awake)
        self.engine.keeper.owner_needs_memory = lambda: memory_pressure() != NORMAL
        self.host_watch = HostWatch(
            YieldRules(settings.yield_busy_cpu, settings.yield_on_battery),
            self._report_yield,
            self.engine.unload_idle,
        )
        self.telemetry.watch(self._gauges)
        self.socket = socket_path(settings.home)
        self.port = 0

    @property
    def host(self) -> str:
        """The host part of the listen setting."""
        return self.settings.listen.rpartition(":")[0]

    @property
    def serves_tcp(self) -> bool:
        """TCP is served with a mesh certificate (mutual TLS), or plaintext with --insecure-dev."""
        return self.credentials is not None or self.settings.insecure_dev

    def reachable_at(self) -> list[str]:
        """Addresses a joining peer should heartbeat first: this peer and the live ones it knows."""
        mine = (
            [self.settings.advertise]
            if self.settings.advertise
            else [f"{host}:{self.port}" for host in reachable_hosts(self.host)]
        )
        return mine + [entry.address for entry in self.table.live(time.monotonic())]

    @property
    def address(self) -> str:
        """host:port as bound (the real port when the setting was :0)."""
        return f"{self.host}:{self.port}" if self.port else ""

    async def start(self) -> None:
        """Validate models, open the port, report SERVING, and write the daemon file."""
        if self.servers:
            return
        self.lock.acquire()  # again after a stop
        try:
            await self._start()
        except BaseException:
            self.lock.release()
            raise

    async def _start(self) -> None:
        self._prepare_home()
        open_files = raise_open_file_limit()
        await self.engine.start()
        local = self._grpc_server(max_connections=0)
        tcp = None
        if self.serves_tcp:
            cap = connection_cap(self.settings.max_connections, open_files)
            log.info("open files: up to %d; TCP connections: up to %d", open_files, cap)
            tcp = self._grpc_server(max_connections=cap)
        servers = [s for s in (tcp, local) if s is not None]
        try:
            socket = bind_socket(local, self.socket)
            if tcp is not None:
                self.port = bind(
                    tcp, self.settings.listen, self.credentials, self._served_credentials
                )
            for server in servers:
                await server.start()
            restrict_socket(self.socket)
        except BaseException:
            await asyncio.gather(*(server.stop(0) for server in servers))
            await self.engine.close()
            raise
        self.servers = servers
        try:
            await self._start_http(open_files)
        except BaseException:
            await self.stop(0)
            raise
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(SERVICE_NAME, serving)
        self.mesh.address = self.settings.advertise or self._advertised_address()
        self.table.set_own(self._own_addresses())
        for peer in (*self.settings.peers, *self.keyring.mesh_addresses()):
            self.table.add(peer)
        self.membership.start()
        self.keeper.start()
        self.fetcher.start_expiry()
        self.renewer.start()
        self.paused_unload.start()
        await self._reopen_invites()
        self.awake.start(self.engine.holds_warm)
        if self.settings.yield_to_host:
            self.host_watch.start(os.getpid())
        if self.settings.discovery and self.port:
            await self._start_discovery()
        if self.port and is_wildcard(self.host):  # a bound host does not move; the LAN may
            self.address_watch.start(lan_ipv4())
        http = (
            f"{self.settings.http_listen.rpartition(':')[0]}:{self.http.port}" if self.http else ""
        )
        write_daemon_file(  # last: the daemon is ready
            self.settings.home, self.address, self.peer_id, socket, http, open_files
        )
        self._say_how_reachable()

    def _gauges(self) -> list[Metric]:
        """What /metrics reads at each scrape: models by state, live peers, runner restarts."""
        models = self.engine.models()
        states = collections.Counter(m.state.value for m in models)
        return [
            gauge(
                "meshd:models",
                "Models on this peer by state.",
                ["state"],
                [([s.value], states[s.value]) for s in ModelState],
            ),
            gauge(
                "meshd:live_peers",
                "Other peers answering heartbeats.",
                [],
                [([], len(self.table.live(time.monotonic())))],
            ),
            gauge(
                "meshd:runner_restarts",
                "Runners started again after a failure.",
                ["model"],
                [([m.name], m.restarts) for m in models],
            ),
            gauge(
                "meshd:model_resident_ratio",
                "Share of what each model reads from its file that is in memory (mincore); absent "
                "where unknown.",
                ["model"],
                [([m.name], share) for m in models if (share := m.resident_share) is not None],
            ),
            gauge(
                "meshd:disk_read_bytes_per_second",
                "How fast this peer reads model files from disk, as measured (0 until then).",
                [],
                [([], self.engine.read_rate.bytes_per_second)],
            ),
        ]

    async def _start_http(self, open_files: int) -> None:
        """The HTTP door, through the same router as gRPC."""
        if not self.settings.http:
            return
        # The HTTP door takes half of what gRPC may: the two together leave a quarter of the
        # open files to the Unix socket, the store and the logs, whatever floods the doors.
        cap = max(connection_cap(self.settings.max_connections, open_files) // 2, 8)
        self.http = http_door(self.settings, self.mesh, self.trust, self.telemetry, cap)
        await self.http.start()
        log.info("HTTP (OpenAI-compatible) on %s/v1", self.http.url)

    async def _reopen_invites(self) -> None:
        """Codes made before a restart work on: their listener opens on the port they name."""
        self.trust.invites.expire()
        if not self.trust.invites.pending:
            return
        port = await self.desk.open(self.trust.invite_port)
        if port != self.trust.invite_port:
            log.warning(
                "port %d of the open invites is taken: they no longer work (make new ones)",
                self.trust.invite_port,
            )

    def _read_certificate_end(self) -> None:
        certificate = self.keyring.certificate()
        if certificate is not None:
            self.mesh.certificate_expires = certificate.not_valid_after_utc.timestamp()

    def _renewed(self) -> None:
        """A renewed certificate: new TLS handshakes present it, new channels use it."""
        self.credentials = self.keyring.credentials()
        self.pool.renew(self.credentials)
        self._read_certificate_end()

    def _served_credentials(self) -> TlsCredentials:
        assert self.credentials is not None
        return self.credentials

    def _report_yield(self, reason: str) -> None:
        self.mesh.yielding = reason

    def _grpc_server(self, max_connections: int) -> aio.Server:
        """A server with every service; the TCP one (max_connections > 0) has a connection
        cap of its own, so that nothing on TCP can keep the Unix socket from answering."""
        server = aio.server(
            options=server_options(self.settings.max_message_bytes, max_connections),
            interceptors=[self.guard, ErrorsAsStatus()],
        )
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        access_pb2_grpc.add_AdminServicer_to_server(self.admin, server)
        return server

    def _advertised_address(self) -> str:
        """What other peers should call this one: a wildcard listener names a LAN address."""
        if not self.port:
            return ""
        return f"{reachable_hosts(self.host)[0]}:{self.port}"

    def _own_addresses(self) -> list[str]:
        """Every address that reaches this daemon, so that nobody can make it dial itself."""
        if not self.port:
            return [self.mesh.address] if self.mesh.address else []
        hosts = reachable_hosts(self.host, limit=64)
        if is_loopback(self.host) or is_wildcard(self.host):
            hosts += ["127.0.0.1", "localhost", "[::1]"]
        return [self.mesh.address, *(f"{host}:{self.port}" for host in hosts)]

    def _prepare_home(self) -> None:
        """The home holds keys and the CLI socket: only this user may enter it."""
        private_dir(self.settings.home)

    def _say_how_reachable(self) -> None:
        mesh = self.mesh.mesh_id
        if self.credentials is not None:
            log.info(
                "serving on %s (mutual TLS) as %s in mesh %s", self.address, self.peer_id, mesh
            )
        elif self.settings.insecure_dev:
            log.warning(
                "INSECURE: serving plaintext on %s with no authentication (--insecure-dev); "
                "anyone who can reach this address can use this peer",
                self.address,
            )
        else:
            log.warning(
                "this peer belongs to no mesh, so it serves only its local socket %s; "
                "run `meshd init --name NAME` (first peer) or `meshd join CODE`",
                self.socket,
            )

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight streams finish within grace, then free the models."""
        servers, self.servers = self.servers, []
        if servers:
            await self.health.enter_graceful_shutdown()
            await self.address_watch.close()
            if self.discovery is not None:
                await self.discovery.close()  # the mDNS goodbye
            drain = self.settings.drain_seconds if grace is None else grace
            http, self.http = self.http, None
            closing = [server.stop(drain) for server in servers]
            await asyncio.gather(*closing, *([http.close()] if http else []))
            remove_daemon_file(self.settings.home)
            self.socket.unlink(missing_ok=True)
        await self.keeper.close()
        await self.renewer.close()
        await self.paused_unload.close()
        await self.fetcher.close()
        await self.awake.close()
        await self.host_watch.close()
        await self.desk.close()
        await self.membership.close()
        await self.pool.close()
        await self.engine.close()
        self.lock.release()

    async def _start_discovery(self) -> None:
        """Announce on the LAN and hand found addresses to the peer table."""
        host = self.settings.listen.rpartition(":")[0].strip("[]")
        if is_loopback(host):
            log.info("listening on loopback only: not announcing on the network")
            return
        addresses = announce_addresses(host)
        if not addresses:
            log.info("no LAN address yet: mDNS starts when the network comes up")
            return
        self.discovery = Discovery(
            self.peer_id,
            self.mesh.mesh_id,
            addresses,
            self.port,
            txt_record(self.peer_id, self.mesh.mesh_id, __version__, self.port),
            self._found_by_mdns,
        )
        try:
            await self.discovery.start()
        except OSError as exc:  # no multicast here: static peers still work
            log.warning("mDNS discovery is off: %s", exc)
            self.discovery = None

    async def _addresses_changed(self, addresses: list[str]) -> None:
        """The LAN addresses changed (network up, new DHCP lease): advertise the new ones, and
        announce on the interfaces there are now."""
        if not self.settings.advertise:
            self.mesh.address = self._advertised_address()
        self.table.set_own(self._own_addresses())
        if not self.settings.discovery or not self.servers:
            return
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            await discovery.close()
        await self._start_discovery()

    def _found_by_mdns(self, address: str, peer_id: str) -> None:
        self.table.add(address, peer_id, teller=gossip.MDNS)

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


def replica_quota(settings: Settings) -> ReplicaQuota:
    """The replica quota of settings; replica_max_bytes 0 is a quarter of the home's disk."""
    max_bytes = settings.replica_max_bytes
    if not max_bytes:
        try:
            max_bytes = shutil.disk_usage(settings.home).total // 4
        except OSError:
            max_bytes = 16 * 2**30
    return ReplicaQuota(settings.replica_max_models, max_bytes, settings.replica_expire_after)
