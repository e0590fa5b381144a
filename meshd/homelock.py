"""One daemon per home: an OS lock (flock) on <home>/meshd.lock, taken before anything else in
the home is touched and held for the daemon's life. The kernel drops it when the process ends,
however it ends, so a killed daemon never leaves its home locked."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from meshd.errors import ConfigError
from meshd.fsutil import private_dir

LOCK_FILE = "meshd.lock"


class HomeLock:
    """The lock on one home; acquire() and release() are idempotent."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        if self.fd is not None:
            return
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another meshd daemon (pid {holder}) already serves {self.path.parent}: "
                "stop it first (`meshd service uninstall`, or end that process)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Let the next daemon have the home."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the flock
