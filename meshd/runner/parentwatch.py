"""A runner dies with the daemon that started it, even in the middle of a decode.

The socket to the daemon closing already ends a runner whose main thread is reading; this is
the guarantee under it, for a daemon killed with SIGKILL while the runner computes:
- Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG);
- macOS and the BSDs: a thread waits on a kqueue for the parent's NOTE_EXIT;
- elsewhere: a thread notices the parent has changed (getppid) within a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def watch_kind(platform: str = sys.platform, kqueue: bool = hasattr(select, "kqueue")) -> str:
    """How this platform learns of the parent's death: "prctl", "kqueue" or "poll"."""
    if platform.startswith("linux"):
        return "prctl"
    return "kqueue" if kqueue else "poll"


def die_with_parent(parent: int, kind: str | None = None) -> None:
    """Exit this process when `parent` exits (at once if it already has)."""
    kind = kind or watch_kind()
    if kind == "prctl":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    elif kind == "kqueue":
        _start(_wait_kqueue, parent)
    else:
        _start(_wait_poll, parent)
    if parent and os.getppid() != parent:  # the parent died before the watch took effect
        os._exit(0)


def _start(wait: Callable[[int], None], parent: int) -> None:
    threading.Thread(target=wait, args=(parent,), name="parent-watch", daemon=True).start()


def _wait_kqueue(parent: int) -> None:
    queue = select.kqueue()  # type: ignore[attr-defined,unused-ignore]
    event = select.kevent(  # type: ignore[attr-defined,unused-ignore]
        parent,
        filter=select.KQ_FILTER_PROC,  # type: ignore[attr-defined,unused-ignore]
        flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,  # type: ignore[attr-defined,unused-ignore]
        fflags=select.KQ_NOTE_EXIT,  # type: ignore[attr-defined,unused-ignore]
    )
    with contextlib.suppress(ProcessLookupError):  # it had already gone
        queue.control([event], 1, None)  # blocks until the parent exits
    os._exit(0)


def _wait_poll(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(0)
