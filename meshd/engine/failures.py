"""Pure decisions about runners that fail: how to say why, and when to try the model again.

A model whose runner died is retried on the next request or warm: at once after one failure,
then after a delay that doubles with every failure in a row. A model whose runner failed at
load MAX_LOAD_FAILURES times in a row is given up until its file changes or someone warms it
explicitly; until then requests are refused with the reason, without starting a runner.
A file that changed since the last failure is tried at once.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass, replace
from enum import StrEnum

MAX_LOAD_FAILURES = 3
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0

SIGNAL_WORDS = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGKILL: "killed: out of memory, or by hand",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "arithmetic error",
    signal.SIGTERM: "terminated",
}

_BUILD_PATH = re.compile(r"(?<!\S)/\S*/([^/\s]+:\d+:)")

FileStamp = tuple[int, int, int]  # size, mtime in ns, inode: "the file changed" when it differs


def describe_exit(returncode: int | None, last_line: str = "", killed_for: str = "") -> str:
    """One line saying why a runner ended, for `meshd models` and for the failed streams."""
    if killed_for:
        text = f"runner {killed_for}; killed"
    elif returncode is None:
        text = "runner closed its connection"
    elif returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            text = f"runner killed by signal {-returncode}"
        else:
            words = SIGNAL_WORDS.get(sig)
            text = f"runner killed by {sig.name}" + (f" ({words})" if words else "")
    else:
        text = f"runner exited with status {returncode}"
    return f"{text}: {_without_build_paths(last_line)}" if last_line else text


def _without_build_paths(line: str) -> str:
    """llama.cpp names the source file of an assert by its build path: keep the file name."""
    return _BUILD_PATH.sub(r"\1", line)


def retry_delay(failures: int) -> float:
    """Seconds to wait before trying again after `failures` failures in a row."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_FIRST_S * 2.0 ** (failures - 2), BACKOFF_MAX_S)


@dataclass(frozen=True)
class FailureRecord:
    """A model's failures in a row: any (load or serving), and at load only."""

    failures: int = 0
    load_failures: int = 0
    last_at: float = -math.inf  # monotonic time of the last failure
    stamp: FileStamp | None = None  # the file as it was at the last failure


def after_failure(
    record: FailureRecord, now: float, stamp: FileStamp | None, at_load: bool
) -> FailureRecord:
    """The record after one more failure; a changed file starts the load count again."""
    loads = record.load_failures if stamp == record.stamp else 0
    return FailureRecord(record.failures + 1, loads + 1 if at_load else loads, now, stamp)


def after_load(record: FailureRecord) -> FailureRecord:
    """A runner loaded the model: load failures no longer run in a row."""
    return replace(record, load_failures=0)


class Verdict(StrEnum):
    """What to do with a request for a failed model."""

    TRY = "try"
    WAIT = "wait"
    GIVEN_UP = "given up"


def next_attempt(
    record: FailureRecord, now: float, stamp: FileStamp | None
) -> tuple[Verdict, float]:
    """Whether to start a runner now, or how long until it may be tried, or never."""
    if stamp != record.stamp:
        return Verdict.TRY, 0.0  # another file: what failed before says nothing about it
    if record.load_failures >= MAX_LOAD_FAILURES:
        return Verdict.GIVEN_UP, math.inf
    wait = record.last_at + retry_delay(record.failures) - now
    return (Verdict.WAIT, wait) if wait > 0 else (Verdict.TRY, 0.0)
