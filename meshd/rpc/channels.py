"""Every gRPC channel and server port is made here, so transport security is decided in one place.

Today the transport is plaintext on the address given (loopback by default); mutual TLS against
the mesh CA is switched on here and nowhere else.
"""

from __future__ import annotations

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2_grpc

from meshd.v1 import mesh_pb2_grpc

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


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options for a daemon's server: message-size limit and keep-alive policy."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, MAX_SEND_BYTES)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 0),
    ]


def bind(server: aio.Server, address: str) -> int:
    """Open the server's listening port; returns the port actually bound (for :0)."""
    try:
        port: int = server.add_insecure_port(address)
    except RuntimeError:  # gRPC's word for "address in use" or "no such address"
        port = 0
    if port == 0:
        raise OSError("the address is in use or not on this machine")
    return port


def open_channel(address: str, *, bulk: bool = False) -> grpc.Channel:
    """A blocking channel to a daemon; bulk=True for model file transfers."""
    return grpc.insecure_channel(address, options=_BULK if bulk else _INTERACTIVE)


def open_aio_channel(address: str) -> aio.Channel:
    """An asyncio channel to a daemon; create it inside the running loop."""
    return aio.insecure_channel(address, options=_INTERACTIVE)


def mesh_stub(channel: grpc.Channel) -> mesh_pb2_grpc.MeshStub:
    """The meshd.v1.Mesh stub on a blocking channel."""
    return mesh_pb2_grpc.MeshStub(channel)


def aio_mesh_stub(channel: aio.Channel) -> mesh_pb2_grpc.MeshAsyncStub:
    """The meshd.v1.Mesh stub on an asyncio channel."""
    return mesh_pb2_grpc.MeshStub(channel)


def health_stub(channel: grpc.Channel | aio.Channel) -> health_pb2_grpc.HealthStub:
    """The grpc.health.v1 stub on a channel."""
    return health_pb2_grpc.HealthStub(channel)


class ChannelPool:
    """One asyncio channel per peer address, reused by heartbeats and forwarded requests."""

    def __init__(self) -> None:
        self._channels: dict[str, aio.Channel] = {}

    def get(self, address: str) -> aio.Channel:
        """The channel to address, opened on first use (inside the running loop)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_aio_channel(address)
        return channel

    async def close(self) -> None:
        """Close every channel (idempotent)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
