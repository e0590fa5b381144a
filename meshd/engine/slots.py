"""A model's free slots, handed out by what their KV caches hold.

A request takes the free slot whose cached text shares the longest prefix with its own, so a
warmed prefix is reused and only the rest is prefilled; a slot holding a warmed prefix (within
its lease) that the request does not extend is taken only when no other slot is free; among
equals, the least recently used slot goes. `pick_slot`
is the pure rule; `SlotPool` is the asyncio queue around it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshd.prefixes import MAX_FINGERPRINTS, fingerprints, shared_chars


@dataclass
class SlotCache:
    """What one slot's KV cache holds, as canonical text."""

    text: str = ""
    held_until: float = 0.0  # a warmed prefix is kept until then (Unix time)
    last_used: float = 0.0  # monotonic


def pick_slot(free: Iterable[int], caches: Sequence[SlotCache], text: str, now: float) -> int:
    """The free slot for a request whose canonical text is `text`."""

    def rank(index: int) -> tuple[bool, int, float]:
        cache = caches[index]
        shared = shared_chars(cache.text, text)
        spoils = cache.held_until > now and shared < len(cache.text)  # would evict a prefix
        return (spoils, -shared, cache.last_used)

    return min(free, key=rank)


class SlotPool:
    """The free slots of one runner: `get(text)` waits for one and picks by prefix."""

    def __init__(self, count: int = 0) -> None:
        self.caches = [SlotCache() for _ in range(count)]
        self._free = set(range(count))
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._prints: tuple[int, ...] | None = None  # fingerprints, until a slot's text changes

    def qsize(self) -> int:
        """Free slots now."""
        return len(self._free)

    async def get(self, text: str = "") -> int:
        """A free slot for a request with this canonical text, waiting in turn for one."""
        while not self._free:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif self._free:  # woken, then cancelled: wake the next one instead
                    self._wake()
                raise
        slot = pick_slot(self._free, self.caches, text, time.time())
        self._free.remove(slot)
        return slot

    def put_nowait(self, slot: int) -> None:
        """A slot is free again."""
        self._free.add(slot)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def used(self, slot: int, text: str, hold_until: float = 0.0) -> None:
        """Slot now holds text; a warmed prefix is held until hold_until, and one that a
        request only extended stays held."""
        cache = self.caches[slot]
        kept = cache.held_until if text.startswith(cache.text) else 0.0
        cache.text, cache.held_until = text, max(hold_until, kept)
        cache.last_used = time.monotonic()
        self._prints = None

    def fingerprints(self) -> tuple[int, ...]:
        """Fingerprints of what every slot holds, at most MAX_FINGERPRINTS: asked by every
        heartbeat and routing decision, computed again only after a slot's text changed."""
        if self._prints is None:
            prints: list[int] = []
            for cache in sorted(self.caches, key=lambda c: -c.held_until):  # held ones first
                prints += fingerprints(cache.text, MAX_FINGERPRINTS - len(prints))
            self._prints = tuple(prints[:MAX_FINGERPRINTS])
        return self._prints
