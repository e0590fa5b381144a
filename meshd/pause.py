"""The owner decides: `meshd pause [--for 2h]`, `meshd resume`, and quiet hours.

A paused peer finishes what it is doing, takes no new requests from the mesh (routing sends
them elsewhere; one forwarded to it anyway is refused, so the sender retries elsewhere), and
still serves its owner when nobody else can, and unloads the models nobody used for
`paused_unload_after`. The pause is a file in the home, so it holds across daemon restarts
until it ends; quiet hours come from `meshd.toml`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from meshd.errors import ConfigError
from meshd.fsutil import atomic_write_bytes
from meshd.tasks import Periodic

log = logging.getLogger("meshd.pause")
UNLOAD_CHECK_S = 10.0

PAUSE_FILE = "paused.json"
MAX_PAUSE_FILE_BYTES = 4096
# A pause longer than this is a pause until resumed: no date that far can be shown or compared.
LONGEST_PAUSE_S = 100 * 365 * 86400.0
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*\Z")


@dataclass(frozen=True)
class QuietHours:
    """A daily window in local time, minutes after midnight; it may cross midnight."""

    start: int
    end: int

    def __contains__(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def parse_quiet_hours(text: str) -> QuietHours | None:
    """ "23:00-07:00" → QuietHours; "" → None; ConfigError for anything else."""
    if not text:
        return None
    match = _HOURS.match(text)
    if match is None:
        raise ConfigError(f"quiet_hours is HH:MM-HH:MM, e.g. 23:00-07:00, got {text!r}")
    h1, m1, h2, m2 = map(int, match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ConfigError(f"quiet_hours has an impossible time: {text!r}")
    return QuietHours(h1 * 60 + m1, h2 * 60 + m2)


def paused_why(
    until: float | None, paused: bool, quiet: QuietHours | None, now: float, local: dt.datetime
) -> str:
    """Why this peer takes no mesh requests now ("" when it does): the owner's pause (until a
    Unix time, or None for until resumed) or the quiet hours."""
    if paused and (until is None or now < until):
        if until is None:
            return "paused by its owner"
        return f"paused by its owner until {dt.datetime.fromtimestamp(until):%H:%M}"
    if quiet is not None and local.hour * 60 + local.minute in quiet:
        return "quiet hours"
    return ""


def pause_end(now: float, seconds: float | None) -> float | None:
    """When a pause of `seconds` from now ends; None (until resumed) for no duration, or one
    too long (or not finite) to be a date."""
    if seconds is None or not math.isfinite(seconds) or seconds > LONGEST_PAUSE_S:
        return None
    return now + seconds


def pause(home: Path, seconds: float | None) -> float | None:
    """Pause the peer of home (for seconds, or until resumed); returns the end as Unix time."""
    until = pause_end(time.time(), seconds)
    atomic_write_bytes(home / PAUSE_FILE, json.dumps({"until": until}).encode(), 0o600)
    return until


def resume(home: Path) -> bool:
    """End a pause; False if there was none."""
    path = home / PAUSE_FILE
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def read_pause(home: Path) -> tuple[bool, float | None]:
    """Whether a pause file is there, and when it ends (None: until resumed). A damaged file
    counts as a pause until resumed: the owner asked for one. Only a small regular file is
    read (never a symlink, FIFO or device, which could block or be endless), so a read cannot
    hold up the event loop that asks."""
    path = home / PAUSE_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False, None
    except OSError:
        return True, None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PAUSE_FILE_BYTES:
        log.warning("%s is not a small regular file: paused until `meshd resume`", path)
        return True, None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            record = json.loads(handle.read(MAX_PAUSE_FILE_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return True, None
    until = record.get("until") if isinstance(record, dict) else None
    if not isinstance(until, int | float) or isinstance(until, bool):
        return True, None
    ends = float(until)
    long = not math.isfinite(ends) or ends - time.time() > LONGEST_PAUSE_S
    return True, None if long else ends


class PauseState:
    """What the router asks each time: is this peer paused, and why."""

    def __init__(self, home: Path, quiet_hours: str) -> None:
        self.home = home
        self.quiet = parse_quiet_hours(quiet_hours)
        self._seen: tuple[int, ...] | None = None  # the pause file's stat when read
        self._read: tuple[bool, float | None] = (False, None)

    def why(self) -> str:
        """Asked on every routing decision and heartbeat: the file is read again only when a
        stat says it changed."""
        try:
            st = os.stat(self.home / PAUSE_FILE)
            seen: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if seen != self._seen:
            self._seen, self._read = seen, read_pause(self.home)
        paused, until = self._read
        return paused_why(until, paused, self.quiet, time.time(), dt.datetime.now())


class UnloadWhilePaused:
    """While this peer is paused, unloads the models nobody used for `after` seconds (pins
    excepted): the owner's machine gets its memory back."""

    def __init__(
        self,
        why: Callable[[], str],
        unload_idle: Callable[[float], Awaitable[list[str]]],
        after: float,
        every: float = UNLOAD_CHECK_S,
    ) -> None:
        self.why, self.unload_idle, self.after, self.every = why, unload_idle, after, every
        self._loop = Periodic("meshd-paused-unload", self._step, every, log)

    def start(self) -> None:
        """Check now and then in the background (nothing to do when after is 0)."""
        if self.after > 0:
            self._loop.start()

    async def _step(self) -> None:
        await self.check()

    async def check(self) -> list[str]:
        """Unload now if paused; returns what was unloaded."""
        why = self.why()
        if not why or self.after <= 0:
            return []
        names = await self.unload_idle(self.after)
        if names:
            log.info("%s: unloaded %s, unused for a while", why, ", ".join(names))
        return names

    async def close(self) -> None:
        """Stop checking."""
        await self._loop.close()
