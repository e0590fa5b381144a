"""Files that are either whole under their final name or not there at all, and small files
read without trusting what they are."""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import tempfile
from pathlib import Path

from meshd.errors import ConfigError


def fsync_file(fd: int, platform: str = sys.platform) -> None:
    """Flush a file to stable storage: F_FULLFSYNC on macOS, where plain fsync leaves the data
    in the drive's cache, and fsync where the file system refuses it (SMB, FAT, some external
    drives answer ENOTSUP or EINVAL)."""
    full = getattr(fcntl, "F_FULLFSYNC", None) if platform == "darwin" else None
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside path durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Make path (and its parents) if needed, and let only this user enter it (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write data to path through a synced temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            fsync_file(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_small_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a small regular file, or ConfigError naming `what`: a FIFO, device or
    folder is never read (it could block or never end), nor a file over `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is over {limit:,} bytes")
    return data
