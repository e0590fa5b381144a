"""PeerLink over gRPC: how the router reaches another peer through this peer's channel pool."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc
from grpc import aio

from meshd.rpc import channels, convert
from meshd.rpc.status import error_from_rpc
from meshd.types import Chunk, GenerateRequest, WarmRequest, WarmResult
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

    async def warm(self, address: str, peer_id: str, request: WarmRequest) -> WarmResult:
        stub = channels.aio_mesh_stub(self.pool.get(address, peer_id))
        try:
            message = convert.warm_request_to_pb(request)
            reply = await stub.Warm(message, timeout=None if request.wait else 10.0)
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
