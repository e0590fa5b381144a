"""Pure routing decisions over a snapshot of the peer table: which peer serves, which peers warm.

Inputs are plain data, so every rule here is unit-tested without a socket:
- among live peers with the model warm: the least expected cost, where
  cost = (active + queued) / slots x recent service time + RTT + the prefill of the part of
  the prompt that peer does not hold warm (from the prefix fingerprints it announces and its
  measured prefill rate), so a request goes where its prefix is warm unless that peer is
  busier by more than the prefill it saves;
- a warm peer whose model the OS paged out (mincore says how much of its file is in memory)
  also pays the page-in: the bytes not in memory / that peer's measured read rate, so the mesh
  prefers a peer where the model is really warm;
- near-equals (within NEAR_EQUAL of the best) are sampled by two random choices; the local
  peer wins ties;
- no warm peer: the live peer that has the file and the most free memory (it warms, then serves;
  the reason says whether the load reads the file from the page cache or from disk);
- a paused peer is left out, unless it is this peer and no other can serve; a yielding peer
  (its host busy with its owner's work) serves only when no other peer can;
- replicas, one rule (`copies`): a copy is a peer open to mesh work (not paused, not yielding)
  that holds the model's file or is pulling it now; when a warm asks for more copies than
  there are, the open peers with the most free memory that fits it pull one, and auto_replicas
  tops up while fewer copies are warm (or loading, or being pulled) than it asks for.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshd.prefixes import tokens_of, warm_chars
from meshd.types import PAGED_OUT_BELOW, ModelState, PeerModel

NEAR_EQUAL_S = 0.002  # waits this close are treated as equal
NEAR_EQUAL_FRACTION = 0.10
# A peer that never served the model yet: assume this much per request.
DEFAULT_SERVICE_S = 0.25
# A peer that has not measured its prefill yet: assume this many prompt tokens per second.
DEFAULT_PREFILL_RATE = 400.0


@dataclass(frozen=True)
class PromptShape:
    """What the router knows of a request's prompt: its canonical length and fingerprints."""

    chars: int
    prints: tuple[int, ...] = ()


@dataclass(frozen=True)
class PeerView:
    """One live peer, as the router sees it."""

    peer_id: str
    address: str
    local: bool
    rtt_s: float
    memory_free: int
    models: dict[str, PeerModel] = field(default_factory=dict)  # by name
    paused: str = ""  # why it takes no mesh requests ("" when it does)
    yielding: str = ""  # why it is the last resort: its owner's work needs the host
    pulling: frozenset[str] = frozenset()  # models whose file it is copying from a peer now


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why, in a few words."""

    peer: PeerView
    reason: str
    warm: bool


def expected_wait(peer: PeerView, model: str) -> float:
    """Seconds a new request for model would wait on peer, network included."""
    view = peer.models[model]
    service = view.service_seconds or DEFAULT_SERVICE_S
    return (view.active + view.queued) / max(view.slots, 1) * service + peer.rtt_s


@dataclass(frozen=True)
class Prefill:
    """The prompt on one peer: tokens it holds warm, tokens in all, seconds to prefill the rest."""

    cached: int
    total: int
    seconds: float


def prefill(
    peer: PeerView, model: str, prompt: PromptShape | None, rate: float = DEFAULT_PREFILL_RATE
) -> Prefill:
    """How much of the prompt peer holds warm, and what the rest costs at `rate` tokens/s."""
    if prompt is None:
        return Prefill(0, 0, 0.0)
    cached = tokens_of(warm_chars(prompt.prints, peer.models[model].prefix_prints))
    total = max(tokens_of(prompt.chars), cached)
    return Prefill(cached, total, (total - cached) / rate)


def shared_rate(peers: Sequence[PeerView], model: str) -> float:
    """One prefill rate for a decision: the median the peers measured (the default when none
    did), so that what sets peers apart is the part of the prompt each holds warm, and a peer
    that has not measured yet is not penalised for it (service times tell machines apart)."""
    rates = sorted(r for p in peers if (r := p.models[model].prefill_rate) > 0)
    return rates[len(rates) // 2] if rates else DEFAULT_PREFILL_RATE


def choose(
    peers: Sequence[PeerView],
    model: str,
    exclude: Iterable[str] = (),
    rng: random.Random | None = None,
    prompt: PromptShape | None = None,
) -> Decision | None:
    """The peer to serve model, or None when no live peer has it."""
    skip = set(exclude)
    having = [p for p in peers if p.peer_id not in skip and model in p.models]
    # A paused peer takes no mesh requests (its owner's own are served there when no one else
    # can); a yielding one is the last resort.
    open_ = [p for p in having if not p.paused]
    candidates = [p for p in open_ if not p.yielding] or open_ or [p for p in having if p.local]
    warm = [p for p in candidates if _warm(p, model)]
    if warm:
        return _least_cost(warm, model, rng or random.Random(), prompt)
    if not candidates:
        return None
    best = max(candidates, key=lambda p: (p.memory_free, p.local))
    reason = f"no peer had it warm; {_who(best)} has the most free memory"
    return Decision(best, reason + load_source(best.models[model]), False)


def load_source(view: PeerModel) -> str:
    """Where a load of this model reads its file from, and about how long that takes ("" when
    its residency is unknown)."""
    share = view.resident_share
    if share is None:
        return ""
    if share >= PAGED_OUT_BELOW:
        return f"; loads from the page cache ({share:.0%} of its file in memory)"
    return f"; loads from disk (~{1000 * view.page_in_seconds():,.0f} ms to read {1 - share:.0%})"


def _least_cost(
    warm: list[PeerView], model: str, rng: random.Random, prompt: PromptShape | None
) -> Decision:
    rate = shared_rate(warm, model)
    fills = {p.peer_id: prefill(p, model, prompt, rate) for p in warm}
    pages = {p.peer_id: p.models[model].page_in_seconds() for p in warm}
    costs = {
        p.peer_id: expected_wait(p, model) + fills[p.peer_id].seconds + pages[p.peer_id]
        for p in warm
    }
    best = min(costs.values())
    margin = max(NEAR_EQUAL_S, best * NEAR_EQUAL_FRACTION)
    near = [p for p in warm if costs[p.peer_id] <= best + margin]
    local = [p for p in near if p.local]
    if local:
        chosen = local[0]
    elif len(near) > 1:
        a, b = rng.sample(near, 2)
        chosen = a if costs[a.peer_id] <= costs[b.peer_id] else b
    else:
        chosen = near[0]
    wait_ms = 1000 * expected_wait(chosen, model)
    fill = fills[chosen.peer_id]
    if fill.cached:
        reason = (
            f"prefix warm on {_who(chosen)}, ~{fill.cached:,} of ~{fill.total:,} tokens cached; "
            f"expected wait {wait_ms:.0f} ms"
        )
    else:
        reason = f"warm on {_who(chosen)}, least expected wait {wait_ms:.0f} ms"
    return Decision(chosen, reason + _residency_note(warm, model, chosen, pages), True)


def _residency_note(
    warm: list[PeerView], model: str, chosen: PeerView, pages: dict[str, float]
) -> str:
    """What paging cost the choice: the chosen peer's page-in, or the paged-out peers it
    passed over."""
    view = chosen.models[model]
    if view.paged_out:
        share = view.resident_share or 0.0
        ms = 1000 * pages[chosen.peer_id]
        return f"; paged out ({share:.0%} resident), ~{ms:,.0f} ms to page in"
    passed = [p for p in warm if p is not chosen and p.models[model].paged_out]
    if not passed:
        return ""
    worst = max(passed, key=lambda p: pages[p.peer_id])
    worst_share = worst.models[model].resident_share or 0.0
    return (
        f"; resident there, paged out on {_who(worst)} ({worst_share:.0%} resident, "
        f"~{1000 * pages[worst.peer_id]:,.0f} ms to page in)"
    )


def _warm(peer: PeerView, model: str) -> bool:
    return peer.models[model].state is ModelState.WARM


def _who(peer: PeerView) -> str:
    return "this peer" if peer.local else peer.peer_id


def warm_targets(peers: Sequence[PeerView], model: str, replicas: int) -> list[PeerView]:
    """Peers that should hold model warm: those already warm first, then most free memory;
    paused peers only when nobody else has it."""
    having = [p for p in peers if model in p.models and not (p.paused or p.yielding)] or [
        p for p in peers if model in p.models
    ]
    ranked = sorted(having, key=lambda p: (not _warm(p, model), -p.memory_free, not p.local))
    return ranked[: max(replicas, 1)]


def open_to_mesh(peer: PeerView) -> bool:
    """Takes mesh work now: neither paused by its owner nor yielding to them."""
    return not (peer.paused or peer.yielding)


def copies(peers: Sequence[PeerView], model: str) -> list[PeerView]:
    """The copies of model the mesh counts: peers open to mesh work that hold its file or are
    pulling it now (a paused or yielding holder serves nobody else, so it is no copy)."""
    return [p for p in peers if open_to_mesh(p) and (model in p.models or model in p.pulling)]


def warm_copies(peers: Sequence[PeerView], model: str) -> int:
    """Copies that are warm, loading, or being pulled (they warm once copied)."""
    held = (ModelState.WARM, ModelState.LOADING)
    return sum(model not in p.models or p.models[model].state in held for p in copies(peers, model))


def replica_targets(peers: Sequence[PeerView], model: str, replicas: int) -> list[PeerView]:
    """Peers without model's file that should pull one so that there are `replicas` copies:
    open to mesh work, with the most free memory, enough for the model. Nothing when no peer
    holds the file to copy from."""
    holders = [p for p in peers if model in p.models]
    if not holders:
        return []
    wanted = replicas - len(copies(peers, model))
    need = max(h.models[model].memory_bytes for h in holders)
    room = [
        p
        for p in peers
        if model not in p.models
        and model not in p.pulling
        and open_to_mesh(p)
        and p.memory_free >= need
    ]
    return sorted(room, key=lambda p: (-p.memory_free, p.peer_id))[: max(wanted, 0)]


def replica_source(peers: Sequence[PeerView], model: str, target: PeerView) -> PeerView | None:
    """The holder a new replica pulls from: not the target, one that has the file in its store
    (a peer copies a file by its digest; a model served from a path has none), open to mesh
    work before paused or yielding ones, then the one already warm (its file is in the page
    cache), then any."""
    holders = [
        p
        for p in peers
        if model in p.models and p.models[model].digest and p.peer_id != target.peer_id
    ]
    if not holders:
        return None
    return min(holders, key=lambda p: (bool(p.paused), bool(p.yielding), not _warm(p, model)))
