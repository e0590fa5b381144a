"""Log a repeated complaint at most once a minute per source: a revoked peer, a bad key or a
broken client retries forever, and the log must stay readable (and the disk not fill)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable

EVERY_S = 60.0
MAX_SOURCES = 1024  # remembered at once; the oldest are forgotten first


class Throttle:
    """Says whether a message for a key may be logged now."""

    def __init__(self, every: float = EVERY_S, max_sources: int = MAX_SOURCES) -> None:
        self.every, self.max_sources = every, max_sources
        self._last: dict[Hashable, float] = {}
        self.suppressed = 0  # messages held back since start

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        """True at most once per `every` seconds for a key."""
        now = time.monotonic() if now is None else now
        last = self._last.pop(key, -math.inf)
        if now - last < self.every:
            self._last[key] = last
            self.suppressed += 1
            return False
        self._last[key] = now
        while len(self._last) > self.max_sources:
            del self._last[next(iter(self._last))]
        return True

    def log(
        self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object
    ) -> None:
        """logger.log(level, msg, *args), unless this key was logged within `every` seconds."""
        if self.allow(key):
            logger.log(level, msg, *args, stacklevel=2)


def source_of(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:10.0.0.2:5123" → "ipv4:10.0.0.2"): one source per
    machine, whatever port it calls from."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return kind
