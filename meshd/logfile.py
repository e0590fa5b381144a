"""The daemon's own log: a size-capped, rotating file in the home (`logs/meshd.log` and a few
older generations), so that a service running for months never fills the disk; `meshd logs`
reads it."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from meshd.fsutil import private_dir

LOG_DIR = "logs"
LOG_FILE = "meshd.log"
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
DESTINATIONS = ("both", "file", "stderr")


def log_path(home: Path) -> Path:
    """Where the daemon of home writes its log."""
    return home / LOG_DIR / LOG_FILE


def setup_logging(
    home: Path, level: str, to: str = "both", max_bytes: int = 10 * 2**20, backups: int = 4
) -> None:
    """Log to the rotating file (unless to="stderr") and to stderr (unless to="file")."""
    handlers: list[logging.Handler] = []
    if to in ("both", "file"):
        private_dir(home / LOG_DIR)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_path(home), maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
        )
    if to in ("both", "stderr"):
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level.upper(), format=FORMAT, handlers=handlers, force=True)


def log_files(home: Path) -> list[Path]:
    """The log and its older generations, oldest first."""
    current = log_path(home)
    older = sorted(
        (p for p in current.parent.glob(f"{LOG_FILE}.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*older, *([current] if current.exists() else [])]


def log_size(home: Path) -> int:
    """Bytes in every generation of the log."""
    return sum(p.stat().st_size for p in log_files(home))


def last_lines(home: Path, count: int) -> list[str]:
    """The last `count` lines across the generations."""
    lines: deque[str] = deque(maxlen=count)
    for path in log_files(home):
        with path.open(encoding="utf-8", errors="replace") as handle:
            lines.extend(line.rstrip("\n") for line in handle)
    return list(lines)


def follow(home: Path, poll: float = 0.25) -> Iterator[str]:
    """Lines as they are written from now on, across rotations (until the caller stops)."""
    path = log_path(home)
    handle: TextIO | None = None
    inode, first = 0, True
    while True:
        if handle is None:
            if not path.exists():
                time.sleep(poll)
                continue
            handle = path.open(encoding="utf-8", errors="replace")
            if first:  # what is already there is `meshd logs -n`'s to show
                handle.seek(0, os.SEEK_END)
            first, inode = False, os.fstat(handle.fileno()).st_ino
        line = handle.readline()
        if line:
            yield line.rstrip("\n")
            continue
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            rotated = True
        if rotated:  # the file now under the name is a new one: read it from its start
            handle.close()
            handle = None
            continue
        time.sleep(poll)
