"""Every gRPC channel and server port is made here, so transport security is decided in one place.

Three transports:
- mutual TLS against the mesh CA, for every TCP connection of a peer in a mesh (peers and apps);
- the daemon's Unix socket ("unix:/path", mode 0600) for the CLI on the same machine;
- plaintext TCP, only with --insecure-dev (local experiments, tests and benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2_grpc

from meshd.errors import ConfigError
from meshd.security.credentials import (
    CA_SERVER_NAME,
    PEER_SERVER_NAME,
    TlsCredentials,
    peer_server_name,
)
from meshd.v1 import access_pb2_grpc, mesh_pb2_grpc

SOCKET_FILE = "meshd.sock"
_MAX_SOCKET_PATH = 100  # sun_path is 104 bytes on macOS, 108 on Linux

# Keep idle peer links alive through NATs and notice dead peers without a request.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A restarted peer is back within a heartbeat, not after gRPC's default 1 s+ backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]
# Requests and tokens: no bandwidth probing. Its PING frames wake both ends mid-generation,
# and on a small machine that time is taken from llama.cpp's threads.
_INTERACTIVE = [*_KEEPALIVE, ("grpc.http2.bdp_probe", 0)]
# Model files: a flow-control window that grows with the link, and room for 1 MiB chunks.
_BULK = [
    *_KEEPALIVE,
    ("grpc.http2.lookahead_bytes", 16 * 2**20),
    ("grpc.max_receive_message_length", 8 * 2**20),
]


# Model file chunks are 1 MiB; what a peer receives is limited separately.
MAX_SEND_BYTES = 4 * 2**20


# A TCP connection that has not finished its TLS handshake by then is closed.
HANDSHAKE_TIMEOUT_MS = 5_000
# A connection with no call for this long is closed (a client reconnects when it needs to).
IDLE_TIMEOUT_MS = 15 * 60_000


def server_options(max_message_bytes: int, max_connections: int = 0) -> list[tuple[str, int]]:
    """Options for a daemon's server: message-size limit and keep-alive policy; for a TCP
    server (max_connections > 0) also a connection cap and handshake and idle timeouts. The
    cap is per server: the CLI's Unix socket has a server of its own, so it always answers."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, MAX_SEND_BYTES)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 0),
    ]
    if max_connections:
        options += [
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            ("grpc.max_connection_idle_ms", IDLE_TIMEOUT_MS),
        ]
    return options


def bind(
    server: aio.Server,
    address: str,
    credentials: TlsCredentials | None,
    renewed: Callable[[], TlsCredentials] | None = None,
) -> int:
    """Open a TCP port: mutual TLS with credentials, else plaintext. Returns the bound port.
    renewed, when given, is asked at each new TLS handshake for the credentials to present
    (a renewed certificate is served without a restart)."""
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            tls = server_credentials(credentials, renewed or (lambda: credentials))
            port = server.add_secure_port(address, tls)
    except RuntimeError:  # gRPC's word for "address in use" or "no such address"
        port = 0
    if port == 0:
        raise OSError("the address is in use or not on this machine")
    return port


def server_credentials(
    credentials: TlsCredentials, current: Callable[[], TlsCredentials]
) -> grpc.ServerCredentials:
    """TLS that demands a client certificate signed by the mesh CA (BoringSSL checks the chain
    and the dates during the handshake; revocation and roles are checked per call). Each new
    handshake presents current(): a renewed certificate takes effect at once."""
    served = [credentials]

    def configuration(tls: TlsCredentials) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        latest = current()
        if latest == served[0]:
            return None  # unchanged
        served[0] = latest
        return configuration(latest)

    # The fetcher may return None for "unchanged" (gRPC's documentation; its stub says not).
    fetcher: Callable[[], grpc.ServerCertificateConfiguration] = fetch  # type: ignore[assignment]
    return grpc.dynamic_ssl_server_credentials(
        configuration(credentials), fetcher, require_client_authentication=True
    )


def socket_path(home: Path) -> Path:
    """Where the daemon of home listens for its CLI: in home, or (if that path is too long for
    a Unix socket) in a private folder under the temporary directory."""
    path = home / SOCKET_FILE
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    private = Path(tempfile.gettempdir()) / f"meshd-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        private.mkdir(mode=0o700)
        os.chmod(private, 0o700)  # whatever the umask
    check_private_folder(private)
    return private / (hashlib.sha256(str(home).encode()).hexdigest()[:16] + ".sock")


def check_private_folder(path: Path) -> None:
    """Refuse a folder (in a shared place like /tmp) that another user could have made first,
    or that is a link, or that others may enter: they could take or watch the socket."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} should be a folder of this user's, but it is not a folder")
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"{path} belongs to another user (uid {info.st_uid}); remove it, or use a home "
            "with a shorter path"
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"`chmod 700 {path}` or remove it"
        )


def bind_socket(server: aio.Server, path: Path) -> str:
    """Open the daemon's Unix socket, mode 0600; returns its "unix:" address."""
    path.unlink(missing_ok=True)  # left by a daemon that was killed
    address = f"unix:{path}"
    local = grpc.local_server_credentials(grpc.LocalConnectionType.UDS)
    if server.add_secure_port(address, local) == 0:
        raise OSError(f"cannot listen on {path}")
    return address


def restrict_socket(path: Path) -> None:
    """Only this user may connect (gRPC creates the socket when the server starts)."""
    os.chmod(path, 0o600)


def _channel_args(
    address: str,
    credentials: TlsCredentials | None,
    options: list[tuple[str, int]],
    peer_id: str = "",
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, int | str]]]:
    if address.startswith("unix:"):
        return grpc.local_channel_credentials(grpc.LocalConnectionType.UDS), [*options]
    if credentials is None:
        return None, [*options]
    tls = grpc.ssl_channel_credentials(
        credentials.ca_pem, credentials.key_pem, credentials.cert_pem
    )
    # A certificate the mesh CA issued to this peer id (or, with no id, to any peer), whatever
    # the address it is reached at.
    name = peer_server_name(peer_id) if peer_id else PEER_SERVER_NAME
    return tls, [*options, ("grpc.ssl_target_name_override", name)]


def open_channel(
    address: str,
    credentials: TlsCredentials | None = None,
    *,
    bulk: bool = False,
    peer_id: str = "",
) -> grpc.Channel:
    """A blocking channel to a daemon; bulk=True for model file transfers; with peer_id, only
    a certificate naming that peer is accepted."""
    tls, options = _channel_args(address, credentials, _BULK if bulk else _INTERACTIVE, peer_id)
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls, options=options)


def open_aio_channel(
    address: str, credentials: TlsCredentials | None = None, peer_id: str = ""
) -> aio.Channel:
    """An asyncio channel to a daemon; create it inside the running loop. With peer_id, only a
    certificate naming that peer is accepted."""
    tls, options = _channel_args(address, credentials, _INTERACTIVE, peer_id)
    if tls is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, tls, options=options)


def fetch_unverified_certificate(address: str, timeout: float = 5.0) -> bytes:
    """The certificate a TLS server presents, unchecked: only for joining, where the caller
    compares it with the fingerprint in the invite code before trusting it."""
    host, _, port = address.rpartition(":")
    return ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=timeout).encode()


def open_join_channel(address: str, ca_pem: bytes) -> grpc.Channel:
    """A channel to the founder's join listener, which presents the mesh CA certificate."""
    tls = grpc.ssl_channel_credentials(ca_pem)
    options = [*_INTERACTIVE, ("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    return grpc.secure_channel(address, tls, options=options)


def join_stub(channel: grpc.Channel) -> access_pb2_grpc.JoinStub:
    """The meshd.v1.Join stub."""
    return access_pb2_grpc.JoinStub(channel)


def mesh_stub(channel: grpc.Channel) -> mesh_pb2_grpc.MeshStub:
    """The meshd.v1.Mesh stub on a blocking channel."""
    return mesh_pb2_grpc.MeshStub(channel)


def aio_mesh_stub(channel: aio.Channel) -> mesh_pb2_grpc.MeshAsyncStub:
    """The meshd.v1.Mesh stub on an asyncio channel."""
    return mesh_pb2_grpc.MeshStub(channel)


def admin_stub(channel: grpc.Channel) -> access_pb2_grpc.AdminStub:
    """The meshd.v1.Admin stub (Unix socket only)."""
    return access_pb2_grpc.AdminStub(channel)


def health_stub(channel: grpc.Channel | aio.Channel) -> health_pb2_grpc.HealthStub:
    """The grpc.health.v1 stub on a channel."""
    return health_pb2_grpc.HealthStub(channel)


class ChannelPool:
    """One asyncio channel per peer address (and the peer id its certificate must name),
    reused by heartbeats and forwarded requests."""

    def __init__(self, credentials: TlsCredentials | None = None) -> None:
        self.credentials = credentials
        self._channels: dict[tuple[str, str], aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: str, peer_id: str = "") -> aio.Channel:
        """The channel to address, opened on first use (inside the running loop); with peer_id
        its TLS handshake fails unless the certificate there names that peer."""
        channel = self._channels.get((address, peer_id))
        if channel is None:
            channel = open_aio_channel(address, self.credentials, peer_id)
            self._channels[address, peer_id] = channel
        return channel

    def discard(self, address: str) -> None:
        """Close the channels to an address no longer dialled (in the background)."""
        for key in [k for k in self._channels if k[0] == address]:
            self._close_later(self._channels.pop(key))

    def renew(self, credentials: TlsCredentials | None) -> None:
        """Use new credentials (a renewed certificate) from now on: every channel reopens."""
        self.credentials = credentials
        for key in list(self._channels):
            self._close_later(self._channels.pop(key))

    def _close_later(self, channel: aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel (idempotent)."""
        await asyncio.gather(*self._closing, return_exceptions=True)
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
