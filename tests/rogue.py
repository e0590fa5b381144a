"""A hostile mesh peer for tests and benchmarks: a real gRPC server with a real peer
certificate (from a real join) whose heartbeat replies gossip whatever addresses it is given."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpc import aio

from meshd.rpc import channels
from meshd.security.keyring import Keyring
from meshd.v1 import mesh_pb2 as pb, mesh_pb2_grpc


class _GossipingMesh(mesh_pb2_grpc.MeshServicer):
    def __init__(self, rogue: RoguePeer) -> None:
        self.rogue = rogue

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatReply:
        self.rogue.heartbeats += 1
        return pb.HeartbeatReply(peer=self.rogue.info())


class RoguePeer:
    """Serves Heartbeat from home's mesh certificate on 127.0.0.1, in its own thread."""

    def __init__(self, home: Path, gossip: Sequence[str]) -> None:
        keyring = Keyring(home)
        credentials = keyring.credentials()
        ca = keyring.ca()
        assert credentials is not None and ca is not None, "join a mesh first"
        from meshd.security import pki

        self.credentials, self.peer_id = credentials, keyring.peer_id()
        self.mesh_id = pki.mesh_id_of(ca)
        self.gossip = list(gossip)
        self.heartbeats = 0
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    def info(self) -> pb.PeerInfo:
        return pb.PeerInfo(
            peer_id=self.peer_id,
            mesh_id=self.mesh_id,
            version="0",
            address=self.address,
            known_addresses=self.gossip,
        )

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = aio.server()
        mesh_pb2_grpc.add_MeshServicer_to_server(_GossipingMesh(self), server)
        port = channels.bind(server, "127.0.0.1:0", self.credentials)
        self.address = f"127.0.0.1:{port}"
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> RoguePeer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def announce_to(self, target: str, claimed_address: str = "") -> None:
        """Heartbeat target as a peer does, so that it heartbeats back the address this rogue
        claims (its own unless told otherwise)."""
        channel = channels.open_channel(target, self.credentials)
        try:
            sender = self.info()
            sender.address = claimed_address or self.address
            request = pb.HeartbeatRequest(sender=sender)
            channels.mesh_stub(channel).Heartbeat(request, timeout=5)
        finally:
            channel.close()
