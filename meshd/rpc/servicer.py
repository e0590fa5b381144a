"""The meshd.v1.Mesh servicer: wire messages in, Engine calls, wire messages out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psutil
from grpc import aio

from meshd import __version__
from meshd.engine import Engine
from meshd.errors import MeshdError
from meshd.rpc import convert
from meshd.rpc.status import status_of, trailers_of
from meshd.types import PeerStatus as PeerStatusInfo
from meshd.v1 import mesh_pb2 as pb
from meshd.v1 import mesh_pb2_grpc

Reply = TypeVar("Reply")


async def _abort(context: aio.ServicerContext[Any, Any], error: MeshdError) -> None:
    context.set_trailing_metadata(trailers_of(error))
    await context.abort(status_of(error), str(error))


async def _unary(
    context: aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[Reply]]
) -> Reply:
    try:
        return await call()
    except MeshdError as error:
        await _abort(context, error)
        raise AssertionError("abort returned") from error  # abort always raises


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    """Serves one peer's Engine over gRPC."""

    def __init__(self, engine: Engine, peer_id: str) -> None:
        self.engine = engine
        self.peer_id = peer_id
        self.started = time.monotonic()

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateChunk]:
        try:
            stream = self.engine.generate(convert.request_from_pb(request))
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    message = convert.chunk_to_pb(chunk)
                    message.served_by = self.peer_id
                    if chunk.finish_reason is not None:
                        message.routing_reason = "local"
                    yield message
        except MeshdError as error:
            await _abort(context, error)

    async def Warm(
        self, request: pb.WarmRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.WarmReply:
        result = await _unary(
            context, lambda: self.engine.warm(request.model, request.lease_seconds, request.wait)
        )
        reply = convert.warm_to_pb(result)
        reply.served_by = self.peer_id
        return reply

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsReply:
        models = [convert.model_to_pb(m) for m in self.engine.models()]
        return pb.ListModelsReply(peer_id=self.peer_id, models=models)

    async def PeerStatus(
        self, request: pb.PeerStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PeerStatusReply:
        return convert.status_to_pb(self.status())

    def status(self) -> PeerStatusInfo:
        """This peer's identity, load and memory, now."""
        memory = psutil.virtual_memory()
        return PeerStatusInfo(
            peer_id=self.peer_id,
            version=__version__,
            uptime=time.monotonic() - self.started,
            load=tuple(self.engine.loads()),
            memory_total=memory.total,
            memory_available=memory.available,
            memory_budget=self.engine.memory_budget,
            memory_models=self.engine.memory_in_models(),
        )


def add_to_server(servicer: MeshServicer, server: aio.Server) -> None:
    """Register the servicer on a server."""
    mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server)
