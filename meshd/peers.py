"""The peer table: every address this peer dials, what answered there, and when to dial again.

Addresses come from settings and joins (permanent), from mDNS, and from other peers (the
addresses their heartbeats list, and their own address when they heartbeat us): meshd.gossip
decides which of those are taken, how often a failing one is dialled, and when it is forgotten.
Only a successful gRPC heartbeat makes a peer live; one that has not answered for `dead_after`
seconds leaves routing, and one good heartbeat brings it back. mDNS TTLs play no part in liveness.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshd import gossip
from meshd.types import KnownAddress, MeshPeer, PeerInfo

log = logging.getLogger("meshd.peers")
RTT_SMOOTHING = 0.3  # weight of the newest sample in the RTT average


def is_alive(last_ok: float, now: float, dead_after: float) -> bool:
    """A peer is live while its last good heartbeat is younger than dead_after."""
    return now - last_ok <= dead_after


@dataclass
class PeerEntry:
    """What this peer knows of an address, and of the peer that answered there."""

    address: str
    teller: str = gossip.PERMANENT  # a peer id, gossip.MDNS or gossip.PERMANENT
    info: PeerInfo | None = None  # set by the first good heartbeat
    last_ok: float = -math.inf  # monotonic time of the last good heartbeat
    last_seen_unix: float = 0.0
    rtt: float = 0.0
    dials: int = 0
    failures: int = 0  # failed dials in a row
    failing_since: float = 0.0  # monotonic time of the first of them
    next_dial: float = -math.inf  # monotonic time
    # The peer itself said this is its address (it heartbeat us with a valid certificate):
    # dialled like a peer that answered, not like a rumour.
    vouched: bool = False
    # The peer id the last answer here claimed: heartbeats then demand a certificate naming it,
    # and only those answers are believed. A failed dial clears it (another peer may be there).
    claimed: str = ""
    # The number of the revocation list the peer said it has, at its last reply (-1: unknown):
    # the list is sent to it only when that is older than this peer's.
    revocations_number: int = -1

    @property
    def answered(self) -> bool:
        """A peer of this mesh answered here, or vouched for the address itself."""
        return self.info is not None or self.vouched


class PeerTable:
    """Known peers by address; ignores itself and peers of other meshes."""

    def __init__(self, self_id: str, mesh_id: str, dead_after: float) -> None:
        self.self_id, self.mesh_id, self.dead_after = self_id, mesh_id, dead_after
        self.entries: dict[str, PeerEntry] = {}
        self.ignored: dict[str, None] = {}  # this peer or another mesh; oldest first
        self.forgotten: dict[str, float] = {}  # learned addresses given up on, until when
        self.own: frozenset[str] = frozenset()  # this peer's own addresses
        self.dials = 0  # every dial since start, forgotten addresses included
        self.on_new: Callable[[str], None] | None = None  # told of each new address
        self.on_forget: Callable[[str], None] | None = None  # told of each forgotten one
        self.refused: Callable[[str], bool] = lambda peer_id: False  # revoked peer ids
        # The address each peer last vouched for as its own, and when: one per peer.
        self.vouched_by: dict[str, tuple[str, float]] = {}

    def set_own(self, addresses: Iterable[str]) -> None:
        """The addresses this peer answers at: never dialled, whoever names them."""
        self.own = frozenset(a for a in map(gossip.peer_address, addresses) if a)

    def add(
        self,
        address: str,
        peer_id: str = "",
        teller: str = gossip.PERMANENT,
        teller_local: bool = False,
        now: float | None = None,
        vouched: bool = False,
    ) -> bool:
        """Take an address to heartbeat, if meshd.gossip accepts it from this teller; a new one,
        or one that now announces another peer id (a restarted daemon), is dialled at once."""
        normal = gossip.peer_address(address)
        if normal is None or normal in self.ignored:
            return False
        entry = self.entries.get(normal)
        now = time.monotonic() if now is None else now
        if vouched and teller != gossip.PERMANENT and not self._take_sender(teller, normal, now):
            return False
        rumour = teller != gossip.PERMANENT and not vouched
        if entry is None and rumour and self._still_forgotten(normal, now):
            return False
        if entry is None:
            told = gossip.Told(normal, teller, teller_local)
            why = gossip.refusal(told, self.own, *self._unanswered_counts(teller))
            if why is not None:
                log.debug("not dialling %s (from %s): %s", normal, teller, why)
                return False
            self.entries[normal] = PeerEntry(normal, teller, vouched=vouched)
        else:
            entry.vouched = entry.vouched or vouched
            if teller == gossip.PERMANENT:
                entry.teller = teller  # settings outrank gossip
            if not (peer_id and entry.info and entry.info.peer_id != peer_id):
                return True
        if self.on_new is not None:
            self.on_new(normal)
        return True

    def _take_sender(self, teller: str, address: str, now: float) -> bool:
        """Whether to take `address` as the one `teller` vouches for as its own: one per
        peer, so a new one replaces the last, unless that one never answered and was taken
        less than SENDER_CHANGE_EVERY ago (a peer naming a new address in every heartbeat
        makes this peer dial at most one of them at a time)."""
        before = self.vouched_by.get(teller)
        if before is None or before[0] == address:
            self.vouched_by[teller] = (address, now if before is None else before[1])
            return True
        old = self.entries.get(before[0])
        old_answered = old is not None and old.info is not None
        if not old_answered and now - before[1] < gossip.SENDER_CHANGE_EVERY:
            return False
        if old is not None and old.teller == teller and not old_answered:
            self._drop(before[0])
        self.vouched_by[teller] = (address, now)
        while len(self.vouched_by) > gossip.MAX_LEARNED:
            del self.vouched_by[next(iter(self.vouched_by))]
        return True

    def _unanswered_counts(self, teller: str) -> tuple[int, int]:
        # Vouched for or not, an address that never answered counts against the caps.
        unanswered = [e for e in self.entries.values() if e.info is None]
        learned = [e for e in unanswered if e.teller != gossip.PERMANENT]
        return sum(e.teller == teller for e in learned), len(learned)

    def _still_forgotten(self, address: str, now: float) -> bool:
        """Whether a learned address was given up on less than FORGET_AFTER ago: told again
        and again, it is not dialled again and again."""
        until = self.forgotten.get(address)
        if until is not None and until <= now:
            del self.forgotten[address]
            return False
        return until is not None

    def due(self, now: float) -> list[str]:
        """Addresses whose next dial is due."""
        return [e.address for e in self.entries.values() if e.next_dial <= now]

    def dialling(self, address: str) -> None:
        """Count a dial (status shows the counts)."""
        self.dials += 1
        entry = self.entries.get(address)
        if entry is not None:
            entry.dials += 1

    def record_failure(self, address: str, now: float, interval: float) -> None:
        """A dial failed: back off, or forget the address when meshd.gossip says so."""
        entry = self.entries.get(address)
        if entry is None:
            return
        if entry.failures == 0:
            entry.failing_since = now
        entry.failures += 1
        answered = entry.answered
        if gossip.forgotten(entry.teller, entry.failures, now - entry.failing_since, answered):
            log.info("forgetting %s: no answer in %d dials", address, entry.failures)
            self._drop(address)
            if answered:
                return  # a peer that was real may come back: it is taken again when told
            self.forgotten[address] = now + gossip.FORGET_AFTER
            while len(self.forgotten) > gossip.MAX_IGNORED:
                del self.forgotten[next(iter(self.forgotten))]
            return
        entry.next_dial = now + gossip.retry_delay(entry.failures, interval, answered)

    def record_ok(self, address: str, info: PeerInfo, rtt: float, now: float) -> None:
        """A heartbeat answered: the peer is live, with this state."""
        if self.refused(info.peer_id):
            self._drop(address)
            return
        if info.peer_id == self.self_id or info.mesh_id != self.mesh_id:
            self._drop(address)
            self._ignore(address)
            if info.mesh_id != self.mesh_id:
                log.info("ignoring %s: it belongs to mesh %r", address, info.mesh_id)
            return
        entry = self.entries.setdefault(address, PeerEntry(address))
        for other in list(self.entries.values()):  # one entry per peer id
            if other is not entry and other.info and other.info.peer_id == info.peer_id:
                self._drop(other.address)
        entry.rtt = (
            rtt if entry.info is None else (1 - RTT_SMOOTHING) * entry.rtt + RTT_SMOOTHING * rtt
        )
        entry.info, entry.last_ok, entry.last_seen_unix = info, now, time.time()
        entry.failures, entry.next_dial = 0, -math.inf

    def _ignore(self, address: str) -> None:
        self.ignored[address] = None
        while len(self.ignored) > gossip.MAX_IGNORED:
            del self.ignored[next(iter(self.ignored))]

    def _drop(self, address: str) -> None:
        if self.entries.pop(address, None) is not None and self.on_forget is not None:
            self.on_forget(address)

    def forget_refused(self) -> None:
        """Drop every peer whose certificate is now revoked, and every address only a revoked
        peer vouched for (one that answered has vouched for itself)."""
        for entry in list(self.entries.values()):
            if entry.info is not None and self.refused(entry.info.peer_id):
                log.info(
                    "dropping %s (%s): its certificate is revoked",
                    entry.address,
                    entry.info.peer_id,
                )
                self._drop(entry.address)
            elif entry.info is None and self.refused(entry.teller):
                self._drop(entry.address)

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

    def addresses(self, now: float) -> list[KnownAddress]:
        """Every address dialled, with who told it and how dialling it goes, for status."""
        return [
            KnownAddress(
                e.address,
                e.teller,
                e.dials,
                e.failures,
                max(e.next_dial - now, 0.0),
                e.info is not None,
            )
            for e in self.entries.values()
        ]
