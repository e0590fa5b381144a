"""Plain data shared by the engine, the RPC layer and the client: no gRPC, no llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MAX_HOPS = 1  # a request that was forwarded this many times is served where it lands
# Until a peer has measured how fast it reads model files, assume this many bytes per second.
ASSUMED_READ_BYTES_PER_S = 400 * 2**20
# A loaded model with less of its file than this in memory is warm but paged out.
PAGED_OUT_BELOW = 0.90


def resident_share(resident_bytes: int, size_bytes: int) -> float | None:
    """The share of a file in memory; None when unknown (resident_bytes < 0)."""
    if resident_bytes < 0:
        return None
    return min(resident_bytes / size_bytes, 1.0) if size_bytes else 1.0


def page_in_seconds(resident_bytes: int, size_bytes: int, read_rate: float) -> float:
    """Seconds to read back the part of a file not in memory at read_rate bytes/s (the assumed
    rate while unmeasured); 0 when its residency is unknown."""
    if resident_bytes < 0:
        return 0.0
    return max(size_bytes - resident_bytes, 0) / (read_rate or ASSUMED_READ_BYTES_PER_S)


class FinishReason(StrEnum):
    """Why a completion ended."""

    EOS = "eos"  # the model ended the text
    LENGTH = "length"  # max_tokens or the context was reached
    STOP = "stop"  # a stop sequence was met


class ModelState(StrEnum):
    """Where a model stands on one peer."""

    COLD = "cold"
    LOADING = "loading"
    WARM = "warm"
    FAILED = "failed"


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; temperature 0 is greedy."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a chat."""

    role: str
    content: str


@dataclass(frozen=True)
class Prefix:
    """A prompt's beginning to warm: text for completions, or the first messages of chats
    (rendered with the model's template as a later request with them will be)."""

    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.prompt or self.messages)


@dataclass(frozen=True)
class GenerateRequest:
    """A completion of `prompt`, or of `messages` through the model's chat template."""

    model: str
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    hops: int = 0
    # Only evaluate the prompt into a slot's cache (a warmed prefix): no token is generated.
    # For messages, the text is what the template renders before the next turn's content.
    prefill_only: bool = False
    # Asked by this machine's owner (the Unix socket, loopback HTTP): set by the door that took
    # the request, never carried on the wire. While paused, only such requests run here.
    from_owner: bool = False


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text; the last chunk has finish_reason and prompt_tokens set."""

    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    served_by: str = ""
    routing_reason: str = ""
    cached_tokens: int = 0  # on the last chunk: prompt tokens found in the slot's cache
    # The wire message a relayed chunk arrived in: the door that speaks that wire sends it on
    # as it is, instead of encoding the chunk again. Not part of what the chunk says.
    wire: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class WarmRequest:
    """Make a model warm somewhere in the mesh and hold it so for at least the lease."""

    model: str
    lease: float = 0.0  # seconds it stays warm at least
    wait: bool = False  # return once it is warm, not at once
    replicas: int = 1  # peers that should hold it warm (copies are pulled where too few)
    hops: int = 0  # how many routers forwarded it already
    pull_from: str = ""  # (between routers) the address of the peer to copy its file from
    prefix: Prefix | None = None  # a prompt's beginning to evaluate into a slot, too
    # Asked by this machine's owner: set by the door that took it, never carried on the wire.
    from_owner: bool = False


@dataclass(frozen=True)
class WarmResult:
    """Where a Warm left the model: its state, the expected wait, and the lease."""

    model: str
    state: ModelState
    ready_in: float
    warm_until: float
    served_by: str = ""
    prefix_tokens: int = 0  # with wait and a prefix: its tokens, now in a slot's cache
    copies: int = 1  # peers warming it (or pulling a copy) for this warm


@dataclass(frozen=True)
class ModelInfo:
    """One model on one peer."""

    name: str
    path: str
    size_bytes: int
    state: ModelState
    pinned: bool
    slots: int
    memory_bytes: int
    last_used: float
    warm_until: float
    architecture: str = ""
    quantization: str = ""
    context_length: int = 0
    error: str = ""
    digest: str = ""
    runner_pid: int = 0  # the runner process holding the model, 0 when none runs
    runner_rss: int = 0  # its resident bytes
    restarts: int = 0  # runners started again after the previous one failed
    chat_template: str = ""  # where its chat template comes from; "" when it takes prompts only
    gpu_layers: int = 0  # layers its runner put on the GPU (-1: all; 0: it runs on the CPU)
    resident_bytes: int = -1  # of mapped_bytes, in memory now (mincore); -1 unknown
    # Bytes of its file it reads through its mapping on every token (some weights are copied
    # into memory of the runner's own at load); the whole file while no runner holds it.
    mapped_bytes: int = 0
    load_seconds: float = 0.0  # its last load, measured; 0 before one
    load_resident_share: float = -1.0  # of its file in memory when that load began; -1 unknown
    lock_memory: bool = False  # its weights are locked in memory (mlock)

    @property
    def resident_share(self) -> float | None:
        """The share of what it reads that is in memory; None when unknown."""
        return resident_share(self.resident_bytes, self.mapped_bytes or self.size_bytes)


@dataclass(frozen=True)
class PeerStatus:
    """One peer's identity, load and memory."""

    peer_id: str
    version: str
    uptime: float
    load: tuple[PeerModel, ...]
    memory_total: int
    memory_available: int
    memory_budget: int
    memory_models: int
    clock: float = 0.0  # the peer's Unix time when it answered


@dataclass(frozen=True)
class PeerModel:
    """A model on a peer, as its heartbeat reports it."""

    name: str
    state: ModelState
    active: int = 0
    queued: int = 0
    slots: int = 1
    service_seconds: float = 0.0
    memory_bytes: int = 0
    size_bytes: int = 0  # the file, as a peer pulling a replica needs it on disk
    prefix_prints: tuple[int, ...] = ()  # fingerprints of what its slots hold (meshd.prefixes)
    prefill_rate: float = 0.0  # prompt tokens per second it prefills; 0 while unmeasured
    chat_template: str = ""  # where its chat template comes from; "" when it takes prompts only
    resident_bytes: int = -1  # of mapped_bytes, in memory now (mincore); -1 unknown
    mapped_bytes: int = 0  # what it reads through its mapping (see ModelInfo); 0: size_bytes
    read_rate: float = 0.0  # bytes per second the peer reads model files from disk; 0 unmeasured
    digest: str = ""  # its file's, when in the store (another peer can copy it); "": a path

    @property
    def measured_bytes(self) -> int:
        """The bytes resident_bytes is a part of."""
        return self.mapped_bytes or self.size_bytes

    def page_in_seconds(self) -> float:
        """Seconds its evicted pages take to read back (0 when all are in memory)."""
        return page_in_seconds(self.resident_bytes, self.measured_bytes, self.read_rate)

    @property
    def resident_share(self) -> float | None:
        """The share of what it reads that is in memory; None when unknown."""
        return resident_share(self.resident_bytes, self.measured_bytes)

    @property
    def paged_out(self) -> bool:
        """Loaded, but with too little of what it reads in memory to answer at warm speed."""
        share = self.resident_share
        return self.state is ModelState.WARM and share is not None and share < PAGED_OUT_BELOW


@dataclass(frozen=True)
class PeerInfo:
    """What a peer says of itself in a heartbeat."""

    peer_id: str
    mesh_id: str
    version: str
    address: str
    models: tuple[PeerModel, ...] = ()
    memory_free: int = 0
    known_addresses: tuple[str, ...] = ()
    certificate_expires: float = 0.0  # Unix time; 0 outside a mesh
    paused: str = ""  # why it takes no mesh requests now ("" when it does)
    yielding: str = ""  # why it is the last resort now: its host is busy ("" when it is not)
    ca_holder: bool = False  # it holds the mesh CA key: it invites, revokes and renews
    pulls: tuple[ReplicaPull, ...] = ()  # model files it is copying from other peers now


@dataclass(frozen=True)
class ReplicaPull:
    """A model file a peer is copying from another peer, to serve a replica of it."""

    model: str
    source: str  # the peer id it pulls from
    done_bytes: int = 0
    total_bytes: int = 0  # 0 while unknown


@dataclass(frozen=True)
class MeshPeer:
    """A peer in this peer's table."""

    info: PeerInfo
    alive: bool
    rtt: float
    last_seen: float
    local: bool = False


@dataclass(frozen=True)
class KnownAddress:
    """An address this peer dials: who told it, and how dialling it goes."""

    address: str
    teller: str  # a peer id, "mdns" or "settings"
    dials: int
    failures: int  # in a row
    next_dial_in: float  # seconds
    answered: bool  # a peer of this mesh answered there at least once


@dataclass(frozen=True)
class RoutingRecord:
    """One routing decision: when, which model, which peer, why."""

    at: float
    model: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class ReplicaUse:
    """What a peer holds for others: replica files against its quota, and the lease cap."""

    held: int = 0
    bytes: int = 0
    max_models: int = 0
    max_bytes: int = 0
    lease_cap: float = 0.0  # seconds an app or another peer may lease a model here


@dataclass(frozen=True)
class MeshStatus:
    """The mesh as one peer sees it."""

    peer_id: str
    mesh_id: str
    peers: tuple[MeshPeer, ...]
    recent: tuple[RoutingRecord, ...] = ()
    addresses: tuple[KnownAddress, ...] = ()
    dials: int = 0  # heartbeat dials since the daemon started
    replicas: ReplicaUse = field(default_factory=ReplicaUse)  # this peer's, for the mesh
