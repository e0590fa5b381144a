"""Conversions between the wire messages (meshd.v1) and meshd's plain types."""

from __future__ import annotations

import dataclasses
import math

from meshd.errors import InvalidRequest
from meshd.prefixes import MAX_FINGERPRINTS
from meshd.types import (
    ChatMessage,
    Chunk,
    FinishReason,
    GenerateRequest,
    KnownAddress,
    MeshPeer,
    MeshStatus,
    ModelInfo,
    ModelState,
    PeerInfo,
    PeerModel,
    PeerStatus,
    Prefix,
    ReplicaPull,
    ReplicaUse,
    RoutingRecord,
    Sampling,
    WarmRequest,
    WarmResult,
)
from meshd.v1 import mesh_pb2 as pb

_FINISH_TO_PB = {
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}
_STATE_TO_PB = {
    ModelState.COLD: pb.MODEL_STATE_COLD,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.WARM: pb.MODEL_STATE_WARM,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_DEFAULT = Sampling()
MAX_REASON_CHARS = 200  # what a peer says of its pause, as others show it
MAX_NAME_CHARS = 80  # a model name or peer id another peer reports
MAX_PULLS = 16  # replica pulls a heartbeat reports
MAX_DIGEST_CHARS = 71  # "sha256:" and 64 hex digits
MAX_COPIES = 64  # copies a warm reply may claim


_INT32 = (-(2**31), 2**31 - 1)


def _fits(value: int, field: str, low: int, high: int, what: str) -> int:
    """value, or InvalidRequest before it reaches the wire (whose types would raise)."""
    if not low <= value <= high:
        raise InvalidRequest(f"{field} must {what}, got {value}", field=field)
    return value


def request_to_pb(request: GenerateRequest) -> pb.GenerateRequest:
    """Wire form of a GenerateRequest; InvalidRequest for a number the wire cannot carry."""
    s = request.sampling
    sampling = pb.Sampling(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=_fits(s.top_k, "top_k", *_INT32, "fit in 32 bits"),
        stop=list(s.stop),
    )
    if s.seed is not None:
        sampling.seed = _fits(s.seed, "seed", 0, 2**32 - 1, "be between 0 and 2^32 - 1")
    max_tokens = _fits(request.max_tokens, "max_tokens", *_INT32, "fit in 32 bits")
    message = pb.GenerateRequest(
        model=request.model, max_tokens=max_tokens, sampling=sampling, hops=request.hops
    )
    if request.messages:
        message.chat.messages.extend(
            pb.ChatMessage(role=m.role, content=m.content) for m in request.messages
        )
    else:
        message.prompt = request.prompt or ""
    return message


def request_from_pb(message: pb.GenerateRequest) -> GenerateRequest:
    """A GenerateRequest from the wire; absent sampling fields take their defaults."""
    s = message.sampling
    sampling = Sampling(
        temperature=s.temperature if s.HasField("temperature") else _DEFAULT.temperature,
        top_p=s.top_p if s.HasField("top_p") else _DEFAULT.top_p,
        top_k=s.top_k if s.HasField("top_k") else _DEFAULT.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )
    is_chat = message.WhichOneof("input") == "chat"
    return GenerateRequest(
        model=message.model,
        prompt=None if is_chat else message.prompt,
        messages=tuple(ChatMessage(m.role, m.content) for m in message.chat.messages),
        max_tokens=message.max_tokens,
        sampling=sampling,
        hops=message.hops,
    )


def chunk_to_pb(chunk: Chunk) -> pb.GenerateChunk:
    """Wire form of a Chunk."""
    return pb.GenerateChunk(
        text=chunk.text,
        tokens=chunk.tokens,
        finish_reason=_FINISH_TO_PB[chunk.finish_reason]
        if chunk.finish_reason
        else pb.FINISH_REASON_UNSPECIFIED,
        prompt_tokens=chunk.prompt_tokens,
        cached_tokens=chunk.cached_tokens,
        served_by=chunk.served_by,
        routing_reason=chunk.routing_reason,
    )


def chunk_from_pb(message: pb.GenerateChunk, *, relayed: bool = False) -> Chunk:
    """A Chunk from the wire; a relayed one keeps its message, to be sent on as it is."""
    return Chunk(
        text=message.text,
        tokens=message.tokens,
        finish_reason=_FINISH_FROM_PB.get(message.finish_reason),
        prompt_tokens=message.prompt_tokens,
        served_by=message.served_by,
        routing_reason=message.routing_reason,
        cached_tokens=min(message.cached_tokens, message.prompt_tokens),
        wire=message if relayed else None,
    )


def warm_request_to_pb(request: WarmRequest) -> pb.WarmRequest:
    """Wire form of a WarmRequest (from_owner never travels)."""
    message = pb.WarmRequest(
        model=request.model,
        lease_seconds=request.lease,
        wait=request.wait,
        replicas=request.replicas,
        hops=request.hops,
        pull_from=request.pull_from,
    )
    if request.prefix:
        prefix_to_pb(request.prefix, message)
    return message


def warm_request_from_pb(message: pb.WarmRequest, from_owner: bool = False) -> WarmRequest:
    """A WarmRequest from the wire; from_owner is the door's to say."""
    return WarmRequest(
        message.model,
        message.lease_seconds,
        message.wait,
        message.replicas,
        message.hops,
        message.pull_from,
        prefix_from_pb(message),
        from_owner=from_owner,
    )


def warm_to_pb(result: WarmResult) -> pb.WarmReply:
    """Wire form of a WarmResult."""
    return pb.WarmReply(
        model=result.model,
        state=_STATE_TO_PB[result.state],
        ready_in_seconds=result.ready_in,
        warm_until_unix=result.warm_until,
        prefix_tokens=result.prefix_tokens,
        served_by=result.served_by,
        copies=result.copies,
    )


def warm_from_pb(message: pb.WarmReply) -> WarmResult:
    """A WarmResult from the wire."""
    return WarmResult(
        message.model,
        _STATE_FROM_PB.get(message.state, ModelState.COLD),
        message.ready_in_seconds,
        message.warm_until_unix,
        message.served_by,
        message.prefix_tokens,
        min(max(message.copies, 1), MAX_COPIES),
    )


def model_to_pb(info: ModelInfo) -> pb.ModelInfo:
    """Wire form of a ModelInfo."""
    return pb.ModelInfo(
        name=info.name,
        path=info.path,
        size_bytes=info.size_bytes,
        state=_STATE_TO_PB[info.state],
        pinned=info.pinned,
        slots=info.slots,
        memory_bytes=info.memory_bytes,
        last_used_unix=info.last_used,
        warm_until_unix=info.warm_until,
        architecture=info.architecture,
        quantization=info.quantization,
        context_length=info.context_length,
        error=info.error,
        digest=info.digest,
        runner_pid=info.runner_pid,
        runner_rss_bytes=info.runner_rss,
        restarts=info.restarts,
        chat_template=info.chat_template,
        gpu_layers=info.gpu_layers,
        resident_bytes=info.resident_bytes if info.resident_bytes >= 0 else None,
        load_seconds=info.load_seconds,
        load_resident_share=info.load_resident_share if info.load_resident_share >= 0 else None,
        lock_memory=info.lock_memory,
        mapped_bytes=info.mapped_bytes,
    )


def model_from_pb(m: pb.ModelInfo) -> ModelInfo:
    """A ModelInfo from the wire."""
    return ModelInfo(
        name=m.name,
        path=m.path,
        size_bytes=m.size_bytes,
        state=_STATE_FROM_PB.get(m.state, ModelState.COLD),
        pinned=m.pinned,
        slots=m.slots,
        memory_bytes=m.memory_bytes,
        last_used=m.last_used_unix,
        warm_until=m.warm_until_unix,
        architecture=m.architecture,
        quantization=m.quantization,
        context_length=m.context_length,
        error=m.error,
        digest=m.digest,
        runner_pid=m.runner_pid,
        runner_rss=m.runner_rss_bytes,
        restarts=m.restarts,
        chat_template=m.chat_template[:MAX_TEMPLATE_SOURCE],
        gpu_layers=max(min(m.gpu_layers, 2**16), -1),
        resident_bytes=_resident_from_pb(m),
        load_seconds=_finite(m.load_seconds),
        load_resident_share=(
            _share(m.load_resident_share) if m.HasField("load_resident_share") else -1.0
        ),
        lock_memory=m.lock_memory,
        mapped_bytes=min(m.mapped_bytes, m.size_bytes),
    )


def _resident_from_pb(m: pb.ModelInfo | pb.PeerModel) -> int:
    """Resident bytes as sent (at most what was measured); -1 when unknown."""
    if not m.HasField("resident_bytes"):
        return -1
    return min(m.resident_bytes, min(m.mapped_bytes, m.size_bytes) or m.size_bytes)


def _finite(value: float) -> float:
    """A non-negative finite number from a peer; 0 for anything else."""
    return value if math.isfinite(value) and value > 0 else 0.0


def _share(value: float) -> float:
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else -1.0


def status_to_pb(status: PeerStatus) -> pb.PeerStatusReply:
    """Wire form of a PeerStatus."""
    return pb.PeerStatusReply(
        peer_id=status.peer_id,
        version=status.version,
        uptime_seconds=status.uptime,
        load=[
            pb.ModelLoad(
                model=m.name,
                active=m.active,
                queued=m.queued,
                slots=m.slots,
                service_seconds=m.service_seconds,
                state=_STATE_TO_PB[m.state],
                memory_bytes=m.memory_bytes,
                size_bytes=m.size_bytes,
            )
            for m in status.load
        ],
        memory_total_bytes=status.memory_total,
        memory_available_bytes=status.memory_available,
        memory_budget_bytes=status.memory_budget,
        memory_models_bytes=status.memory_models,
        clock_unix=status.clock,
    )


def status_from_pb(m: pb.PeerStatusReply) -> PeerStatus:
    """A PeerStatus from the wire."""
    return PeerStatus(
        peer_id=m.peer_id,
        version=m.version,
        uptime=m.uptime_seconds,
        load=tuple(_peer_model_from_pb(x, x.model) for x in m.load),
        memory_total=m.memory_total_bytes,
        memory_available=m.memory_available_bytes,
        memory_budget=m.memory_budget_bytes,
        memory_models=m.memory_models_bytes,
        clock=m.clock_unix,
    )


def peer_info_to_pb(info: PeerInfo) -> pb.PeerInfo:
    """Wire form of a PeerInfo."""
    return pb.PeerInfo(
        peer_id=info.peer_id,
        mesh_id=info.mesh_id,
        version=info.version,
        address=info.address,
        models=[
            pb.PeerModel(
                name=m.name,
                state=_STATE_TO_PB[m.state],
                active=m.active,
                queued=m.queued,
                slots=m.slots,
                service_seconds=m.service_seconds,
                memory_bytes=m.memory_bytes,
                size_bytes=m.size_bytes,
                prefix_prints=m.prefix_prints,
                prefill_tokens_per_second=m.prefill_rate,
                chat_template=m.chat_template,
                resident_bytes=m.resident_bytes if m.resident_bytes >= 0 else None,
                read_bytes_per_second=m.read_rate,
                mapped_bytes=m.mapped_bytes,
                digest=m.digest,
            )
            for m in info.models
        ],
        memory_free_bytes=info.memory_free,
        known_addresses=list(info.known_addresses),
        certificate_expires_unix=info.certificate_expires,
        paused=info.paused,
        yielding=info.yielding,
        ca_holder=info.ca_holder,
        pulls=[
            pb.ReplicaPull(
                model=p.model, source=p.source, done_bytes=p.done_bytes, total_bytes=p.total_bytes
            )
            for p in info.pulls
        ],
    )


def peer_info_from_pb(m: pb.PeerInfo) -> PeerInfo:
    """A PeerInfo from the wire."""
    return PeerInfo(
        peer_id=m.peer_id,
        mesh_id=m.mesh_id,
        version=m.version,
        address=m.address,
        models=tuple(_peer_model_from_pb(x, x.name) for x in m.models),
        memory_free=m.memory_free_bytes,
        known_addresses=tuple(m.known_addresses),
        certificate_expires=m.certificate_expires_unix,
        paused=m.paused[:MAX_REASON_CHARS],
        yielding=m.yielding[:MAX_REASON_CHARS],
        ca_holder=m.ca_holder,
        pulls=tuple(_pull_from_pb(p) for p in m.pulls[:MAX_PULLS]),
    )


def mesh_status_to_pb(status: MeshStatus) -> pb.MeshStatusReply:
    """Wire form of a MeshStatus."""
    return pb.MeshStatusReply(
        peer_id=status.peer_id,
        mesh_id=status.mesh_id,
        peers=[
            pb.MeshPeer(
                info=peer_info_to_pb(p.info),
                alive=p.alive,
                rtt_seconds=p.rtt,
                last_seen_unix=p.last_seen,
                local=p.local,
            )
            for p in status.peers
        ],
        recent=[
            pb.RoutingDecision(at_unix=r.at, model=r.model, peer_id=r.peer_id, reason=r.reason)
            for r in status.recent
        ],
        addresses=[
            pb.KnownAddress(
                address=a.address,
                teller=a.teller,
                dials=a.dials,
                failures=a.failures,
                next_dial_seconds=a.next_dial_in,
                answered=a.answered,
            )
            for a in status.addresses
        ],
        dials=status.dials,
        replicas=pb.ReplicaUse(
            held=status.replicas.held,
            bytes=status.replicas.bytes,
            max_models=status.replicas.max_models,
            max_bytes=status.replicas.max_bytes,
            lease_cap_seconds=status.replicas.lease_cap,
        ),
    )


def mesh_status_from_pb(m: pb.MeshStatusReply) -> MeshStatus:
    """A MeshStatus from the wire."""
    return MeshStatus(
        peer_id=m.peer_id,
        mesh_id=m.mesh_id,
        peers=tuple(
            MeshPeer(peer_info_from_pb(p.info), p.alive, p.rtt_seconds, p.last_seen_unix, p.local)
            for p in m.peers
        ),
        recent=tuple(RoutingRecord(r.at_unix, r.model, r.peer_id, r.reason) for r in m.recent),
        addresses=tuple(
            KnownAddress(a.address, a.teller, a.dials, a.failures, a.next_dial_seconds, a.answered)
            for a in m.addresses
        ),
        dials=m.dials,
        replicas=ReplicaUse(
            m.replicas.held,
            m.replicas.bytes,
            m.replicas.max_models,
            m.replicas.max_bytes,
            m.replicas.lease_cap_seconds,
        ),
    )


MAX_TEMPLATE_SOURCE = 256  # characters of "where its chat template comes from" kept from a peer


def _peer_model_from_pb(x: pb.PeerModel | pb.ModelLoad, name: str) -> PeerModel:
    """A model's state and load, from a heartbeat's PeerModel or a status reply's ModelLoad."""
    state = _STATE_FROM_PB.get(x.state, ModelState.COLD)
    model = PeerModel(
        name, state, x.active, x.queued, x.slots, x.service_seconds, x.memory_bytes, x.size_bytes
    )
    if isinstance(x, pb.PeerModel):  # what a peer says it holds: bounded, a finite rate
        model = dataclasses.replace(
            model,
            prefix_prints=tuple(x.prefix_prints[:MAX_FINGERPRINTS]),
            prefill_rate=_finite(x.prefill_tokens_per_second),
            chat_template=x.chat_template[:MAX_TEMPLATE_SOURCE],
            resident_bytes=_resident_from_pb(x),
            mapped_bytes=min(x.mapped_bytes, x.size_bytes),
            read_rate=_finite(x.read_bytes_per_second),
            digest=x.digest[:MAX_DIGEST_CHARS],
        )
    return model


def _pull_from_pb(p: pb.ReplicaPull) -> ReplicaPull:
    return ReplicaPull(
        p.model[:MAX_NAME_CHARS], p.source[:MAX_NAME_CHARS], p.done_bytes, p.total_bytes
    )


def prefix_to_pb(prefix: Prefix, request: pb.WarmRequest) -> None:
    """Set a WarmRequest's prefix fields."""
    request.prefix = prefix.prompt
    request.prefix_messages.extend(
        pb.ChatMessage(role=m.role, content=m.content) for m in prefix.messages
    )


def prefix_from_pb(request: pb.WarmRequest) -> Prefix | None:
    """The prefix a WarmRequest asks for, or None."""
    if request.prefix and request.prefix_messages:
        raise InvalidRequest("send a prefix or prefix messages, not both", field="prefix")
    messages = tuple(ChatMessage(m.role, m.content) for m in request.prefix_messages)
    prefix = Prefix(request.prefix, messages)
    return prefix or None
