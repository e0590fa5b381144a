"""A deterministic simulation of load balancing across unequal peers: meshd's router vs
round-robin vs random, on the same bursty arrivals. Used by bench/mesh.py; runs alone too.

Each peer has slots and a service time per request; a request's time to first token is its
queueing delay plus a fixed share of its service time. The meshd policy sees what a peer
sees through heartbeats: active and queued counts, slots and recent service time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshd.routing import PeerView, choose
from meshd.types import ModelState, PeerModel

FIRST_TOKEN_SHARE = 0.1  # of a request's service time, spent before its first token


@dataclass
class SimPeer:
    """A peer in the simulation: slots busy until given times, and a FIFO queue."""

    name: str
    slots: int
    service_s: float
    busy_until: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)  # arrival times waiting

    def load(self, now: float) -> tuple[int, int]:
        self.busy_until = [t for t in self.busy_until if t > now]
        return len(self.busy_until), len(self.queue)


def bursty_arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrivals whose rate swings between 0.4x and 1.6x in 5-second bursts."""
    rng, t, out = random.Random(seed), 0.0, []
    while t < seconds:
        phase = 1.6 if int(t // 5) % 2 else 0.4
        t += rng.expovariate(rate * phase)
        out.append(t)
    return out


def simulate(
    peers: list[SimPeer], arrivals: list[float], pick: Callable[[list[SimPeer], float], SimPeer]
) -> list[float]:
    """Times to first token for every arrival under a policy."""
    events: list[tuple[float, int, str]] = []  # (time, kind 0=finish 1=arrive, peer)
    for t in arrivals:
        heapq.heappush(events, (t, 1, ""))
    by_name = {p.name: p for p in peers}
    ttfts: list[float] = []

    def start(peer: SimPeer, arrived: float, now: float) -> None:
        peer.busy_until.append(now + peer.service_s)
        ttfts.append(now - arrived + FIRST_TOKEN_SHARE * peer.service_s)
        heapq.heappush(events, (now + peer.service_s, 0, peer.name))

    while events:
        now, kind, name = heapq.heappop(events)
        if kind == 1:
            peer = pick(peers, now)
            active, _ = peer.load(now)
            if active < peer.slots:
                start(peer, now, now)
            else:
                peer.queue.append(now)
        else:
            peer = by_name[name]
            peer.load(now)
            if peer.queue:
                start(peer, peer.queue.pop(0), now)
    return ttfts


def meshd_policy(rng: random.Random) -> Callable[[list[SimPeer], float], SimPeer]:
    def pick(peers: list[SimPeer], now: float) -> SimPeer:
        views = []
        for p in peers:
            active, queued = p.load(now)
            model = PeerModel("m", ModelState.WARM, active, queued, p.slots, p.service_s)
            views.append(PeerView(p.name, p.name, False, 0.001, 0, {"m": model}))
        decision = choose(views, "m", rng=rng)
        assert decision is not None
        return next(p for p in peers if p.name == decision.peer.peer_id)

    return pick


def round_robin() -> Callable[[list[SimPeer], float], SimPeer]:
    counter = [0]

    def pick(peers: list[SimPeer], now: float) -> SimPeer:
        counter[0] += 1
        return peers[counter[0] % len(peers)]

    return pick


def uniform(rng: random.Random) -> Callable[[list[SimPeer], float], SimPeer]:
    return lambda peers, now: rng.choice(peers)


def make_peers() -> list[SimPeer]:
    """Three unequal peers: a fast one, a slow one, and a two-slot middle one."""
    return [SimPeer("fast", 1, 0.20), SimPeer("slow", 1, 0.80), SimPeer("wide", 2, 0.50)]


def capacity(peers: list[SimPeer]) -> float:
    """Requests per second the peers can serve together."""
    return sum(p.slots / p.service_s for p in peers)


def run(load: float = 0.85, seconds: float = 600.0, seed: int = 7) -> dict[str, list[float]]:
    """TTFTs per policy at `load` of total capacity, same arrivals for each."""
    arrivals = bursty_arrivals(load * capacity(make_peers()), seconds, seed)
    policies = {
        "meshd": meshd_policy(random.Random(seed)),
        "round-robin": round_robin(),
        "random": uniform(random.Random(seed)),
    }
    return {name: simulate(make_peers(), arrivals, pick) for name, pick in policies.items()}


if __name__ == "__main__":
    for name, ttfts in run().items():
        ttfts.sort()
        p50, p99 = ttfts[len(ttfts) // 2], ttfts[int(len(ttfts) * 0.99)]
        print(f"{name:12s} p50 {p50:.3f}s  p99 {p99:.3f}s")
