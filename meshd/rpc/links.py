"""PeerLink over gRPC: how the router reaches another peer through this peer's channel pool."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc
from grpc import aio

from meshd.rpc import channels, convert
from meshd.rpc.status import error_from_rpc
from meshd.types import Chunk, GenerateRequest, Prefix, WarmResult
from meshd.v1 import mesh_pb2 as pb


class GrpcLink:
    """The gRPC PeerLink."""

    def __init__(self, pool: channels.ChannelPool) -> None:
        self.pool = pool

    async def generate(
        self, address: str, peer_id: str, request: GenerateRequest
    ) -> AsyncGenerator[Chunk, None]:
        stub = channels.aio_mesh_stub(self.pool.get(address, peer_id))
        call: Any = stub.Generate(convert.request_to_pb(request))
        try:
            async for message in call:
                yield convert.chunk_from_pb(message, relayed=True)
        except (grpc.RpcError, aio.AioRpcError) as exc:
            raise error_from_rpc(exc, address) from None
        finally:
            call.cancel()

    async def warm(
        self,
        address: str,
        peer_id: str,
        model: str,
        lease: float,
        wait: bool,
        hops: int,
        pull_from: str = "",
        prefix: Prefix | None = None,
    ) -> WarmResult:
        request = pb.WarmRequest(
            model=model, lease_seconds=lease, wait=wait, hops=hops, pull_from=pull_from
        )
        if prefix:
            convert.prefix_to_pb(prefix, request)
        stub = channels.aio_mesh_stub(self.pool.get(address, peer_id))
        try:
            reply = await stub.Warm(request, timeout=None if wait else 10.0)
        except (grpc.RpcError, aio.AioRpcError) as exc:
            raise error_from_rpc(exc, address) from None
        return convert.warm_from_pb(reply)

    async def renew_certificate(self, address: str, peer_id: str) -> bytes:
        stub = channels.aio_mesh_stub(self.pool.get(address, peer_id))
        try:
            reply = await stub.RenewCertificate(pb.RenewCertificateRequest(), timeout=10.0)
        except (grpc.RpcError, aio.AioRpcError) as exc:
            raise error_from_rpc(exc, address) from None
        return reply.certificate_pem
