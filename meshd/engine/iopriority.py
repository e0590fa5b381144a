"""Disk reads that yield to everyone else's: the residency keeper reads at the lowest I/O
priority the OS has for a thread (Linux's idle class, macOS's throttled policy), so the owner's
own reads always go first."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import sys
from collections.abc import Iterator

log = logging.getLogger("meshd.engine")

# Linux: ioprio_set/ioprio_get syscall numbers by machine; the idle class.
_IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "arm64": (30, 31)}
_IOPRIO_WHO_PROCESS, _IOPRIO_CLASS_SHIFT, _IOPRIO_CLASS_IDLE = 1, 13, 3
# macOS: setiopolicy_np(IOPOL_TYPE_DISK, IOPOL_SCOPE_THREAD, IOPOL_THROTTLE).
_IOPOL_TYPE_DISK, _IOPOL_SCOPE_THREAD, _IOPOL_THROTTLE = 0, 1, 3


@contextlib.contextmanager
def background_io() -> Iterator[bool]:
    """Within the block, this thread's disk reads have the lowest priority; yields whether the
    OS took it (elsewhere reads simply run at the usual priority)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        yield False
        return
    if sys.platform == "darwin":
        with _throttled_darwin(libc) as taken:
            yield taken
    elif sys.platform == "linux" and platform.machine() in _IOPRIO_SYSCALLS:
        with _idle_linux(libc, *_IOPRIO_SYSCALLS[platform.machine()]) as taken:
            yield taken
    else:
        yield False


@contextlib.contextmanager
def _idle_linux(libc: ctypes.CDLL, set_nr: int, get_nr: int) -> Iterator[bool]:
    before = libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, 0)  # 0: this thread
    idle = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    taken = before >= 0 and libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, idle) == 0
    try:
        yield taken
    finally:
        if taken:
            libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, before)


@contextlib.contextmanager
def _throttled_darwin(libc: ctypes.CDLL) -> Iterator[bool]:
    before = libc.getiopolicy_np(_IOPOL_TYPE_DISK, _IOPOL_SCOPE_THREAD)
    taken = before >= 0 and (
        libc.setiopolicy_np(_IOPOL_TYPE_DISK, _IOPOL_SCOPE_THREAD, _IOPOL_THROTTLE) == 0
    )
    try:
        yield taken
    finally:
        if taken:
            libc.setiopolicy_np(_IOPOL_TYPE_DISK, _IOPOL_SCOPE_THREAD, before)
