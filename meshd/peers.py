"""The peer table and the heartbeat that keeps it true.

Addresses come from static config, from mDNS, from other peers' heartbeats (gossip) and from
peers that heartbeat us. Only a successful gRPC heartbeat makes a peer live; one that has not
answered for `dead_after` seconds leaves routing, and one good heartbeat brings it back.
mDNS TTLs play no part in liveness.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshd.types import MeshPeer, PeerInfo

log = logging.getLogger("meshd.peers")
RTT_SMOOTHING = 0.3  # weight of the newest sample in the RTT average


def is_alive(last_ok: float, now: float, dead_after: float) -> bool:
    """A peer is live while its last good heartbeat is younger than dead_after."""
    return now - last_ok <= dead_after


@dataclass
class PeerEntry:
    """What this peer knows of another one."""

    address: str
    info: PeerInfo | None = None
    last_ok: float = -math.inf  # monotonic time of the last good heartbeat
    last_seen_unix: float = 0.0
    rtt: float = 0.0


class PeerTable:
    """Known peers by address; ignores itself and peers of other meshes."""

    def __init__(self, self_id: str, mesh_id: str, dead_after: float) -> None:
        self.self_id, self.mesh_id, self.dead_after = self_id, mesh_id, dead_after
        self.entries: dict[str, PeerEntry] = {}
        self.ignored: set[str] = set()  # addresses that turned out to be us or another mesh
        self.on_new: Callable[[str], None] | None = None  # told of each new address
        self.refused: Callable[[str], bool] = lambda peer_id: False  # revoked peer ids

    def add(self, address: str, peer_id: str = "") -> None:
        """Remember an address to heartbeat; a new one, or one that now announces another
        peer id (a restarted daemon), is heartbeaten at once."""
        if not address or address in self.ignored:
            return
        entry = self.entries.get(address)
        if entry is None:
            self.entries[address] = PeerEntry(address)
        elif not (peer_id and entry.info and entry.info.peer_id != peer_id):
            return
        if self.on_new is not None:
            self.on_new(address)

    def record_ok(self, address: str, info: PeerInfo, rtt: float, now: float) -> None:
        """A heartbeat answered: the peer is live, with this state."""
        if self.refused(info.peer_id):
            self.entries.pop(address, None)
            return
        if info.peer_id == self.self_id or info.mesh_id != self.mesh_id:
            self.entries.pop(address, None)
            self.ignored.add(address)
            if info.mesh_id != self.mesh_id:
                log.info("ignoring %s: it belongs to mesh %r", address, info.mesh_id)
            return
        entry = self.entries.setdefault(address, PeerEntry(address))
        for other in list(self.entries.values()):  # one entry per peer id
            if other is not entry and other.info and other.info.peer_id == info.peer_id:
                del self.entries[other.address]
        entry.rtt = (
            rtt if entry.info is None else (1 - RTT_SMOOTHING) * entry.rtt + RTT_SMOOTHING * rtt
        )
        entry.info, entry.last_ok, entry.last_seen_unix = info, now, time.time()

    def forget_refused(self) -> None:
        """Drop every peer whose certificate is now revoked."""
        for entry in list(self.entries.values()):
            if entry.info is not None and self.refused(entry.info.peer_id):
                log.info(
                    "dropping %s (%s): its certificate is revoked",
                    entry.address,
                    entry.info.peer_id,
                )
                del self.entries[entry.address]

    def live(self, now: float) -> list[PeerEntry]:
        """Peers whose last heartbeat is recent enough to route to."""
        return [
            e
            for e in self.entries.values()
            if e.info is not None and is_alive(e.last_ok, now, self.dead_after)
        ]

    def known(self, now: float) -> list[MeshPeer]:
        """Every peer that ever answered, live or not, for status."""
        return [
            MeshPeer(e.info, is_alive(e.last_ok, now, self.dead_after), e.rtt, e.last_seen_unix)
            for e in self.entries.values()
            if e.info is not None
        ]
