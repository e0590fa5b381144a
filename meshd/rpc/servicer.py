"""The meshd.v1.Mesh servicer: wire messages in, calls to the peer's router (and, for
FetchModel, its store), wire messages out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from grpc import aio

from meshd.errors import AccessDenied, InvalidRequest, MeshdError
from meshd.links import Router
from meshd.rpc import convert
from meshd.rpc.guard import calls_from_here, certified_caller
from meshd.security.trust import Trust
from meshd.store import ModelStore
from meshd.telemetry import Telemetry
from meshd.v1 import mesh_pb2 as pb, mesh_pb2_grpc

Reply = TypeVar("Reply")
TRANSFER_CHUNK = 1024 * 1024  # bytes of a model file per FetchModel message
LEGACY_MANIFEST_PROBE = 2**62  # how earlier builds asked for the manifest alone


def is_owner(context: aio.ServicerContext[Any, Any]) -> bool:
    """A call from this machine's owner: the Unix socket, or plaintext from this machine
    (--insecure-dev); never a certificate's holder, a peer or an app, wherever it calls from."""
    return certified_caller(context) is None and calls_from_here(context)


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    """Serves one peer over gRPC: its Engine and store, and the mesh it routes into."""

    def __init__(self, mesh: Router, store: ModelStore, trust: Trust, telemetry: Telemetry) -> None:
        self.mesh, self.telemetry = mesh, telemetry
        self.trust = trust
        self.store = store
        self.peer_id = mesh.peer_id

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateChunk]:
        owner = is_owner(context)
        asked = dataclasses.replace(convert.request_from_pb(request), from_owner=owner)
        stream = self.mesh.generate(asked)
        tracked = self.telemetry.track(request.model, "peer" if request.hops else "grpc")
        try:
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    tracked.token()
                    if chunk.finish_reason is not None:
                        tracked.finished(chunk, self.peer_id)
                    if isinstance(chunk.wire, pb.GenerateChunk):  # relayed: sent on as it came
                        yield chunk.wire
                        continue
                    yield convert.chunk_to_pb(chunk)
        except MeshdError as error:
            tracked.failed(type(error).__name__)
            raise
        except (GeneratorExit, asyncio.CancelledError):  # the caller went away
            tracked.abandoned()
            raise

    async def Warm(
        self, request: pb.WarmRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.WarmReply:
        if request.pull_from:
            caller = certified_caller(context)
            if caller is None or caller.kind != "peer" or not request.hops:
                raise AccessDenied("only another peer's router may ask this peer to pull a model")
        result = await self.mesh.warm(
            convert.warm_request_from_pb(request, from_owner=is_owner(context))
        )
        return convert.warm_to_pb(result)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatReply:
        caller = certified_caller(context)
        if caller is not None and caller.name != request.sender.peer_id:
            raise AccessDenied(f"{caller.name} may only speak for itself")
        self.trust.adopt(request.revocations, request.revocations_number or None)
        teller = caller.name if caller is not None else request.sender.peer_id
        if not self.trust.refuses_peer(teller):  # heartbeat it back
            self.mesh.heard_from(
                request.sender.address,
                teller=teller,
                teller_local=calls_from_here(context),
                vouched=teller == request.sender.peer_id,  # its own address, from itself
            )
        return pb.HeartbeatReply(
            peer=convert.peer_info_to_pb(self.mesh.local_info()),
            revocations=(
                self.trust.revocations_wire
                if request.revocations_number < self.trust.revocations.number
                else b""
            ),
            revocations_number=self.trust.revocations.number,
        )

    async def RenewCertificate(
        self, request: pb.RenewCertificateRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RenewCertificateReply:
        presented = b"".join(context.auth_context().get("x509_pem_cert", []))
        if not presented:
            raise AccessDenied("renewal needs the mesh certificate to renew (mutual TLS)")
        pem = await asyncio.to_thread(self.trust.renew, presented)
        return pb.RenewCertificateReply(certificate_pem=pem)

    async def MeshStatus(
        self, request: pb.MeshStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.MeshStatusReply:
        return convert.mesh_status_to_pb(self.mesh.status())

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsReply:
        models = [convert.model_to_pb(m) for m in await self.mesh.models()]
        caller = certified_caller(context)
        if caller is not None and caller.kind == "client":
            for model in models:  # an app has no business with this machine's file system
                model.ClearField("path")
        return pb.ListModelsReply(peer_id=self.peer_id, models=models)

    async def PeerStatus(
        self, request: pb.PeerStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PeerStatusReply:
        return convert.status_to_pb(self.mesh.peer_status())

    async def FetchModel(
        self, request: pb.FetchModelRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchModelChunk]:
        wanted = request.digest if request.WhichOneof("model") == "digest" else request.name
        model = await asyncio.to_thread(self.store.find, wanted)
        manifest = pb.ModelManifest(name=model.name, digest=model.digest, size=model.size)
        if request.manifest_only or request.offset == LEGACY_MANIFEST_PROBE:
            yield pb.FetchModelChunk(manifest=manifest)
            return
        if request.offset > model.size:
            raise InvalidRequest(
                f"offset {request.offset} is past the end of {model.name} ({model.size} bytes)",
                field="offset",
            )
        path = await asyncio.to_thread(self.store.checked_path, model.name)
        yield pb.FetchModelChunk(manifest=manifest)
        async for block in read_blocks(path, request.offset):
            yield pb.FetchModelChunk(data=block)


async def read_blocks(path: Path, offset: int) -> AsyncIterator[bytes]:
    """The file from offset in TRANSFER_CHUNK blocks, read off the event loop."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := await asyncio.to_thread(os.pread, fd, TRANSFER_CHUNK, offset):
            offset += len(block)
            yield block
    finally:
        os.close(fd)


def add_to_server(servicer: MeshServicer, server: aio.Server) -> None:
    """Register the servicer on a server."""
    mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server)
