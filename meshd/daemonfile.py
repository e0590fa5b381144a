"""The small file in the meshd home where a running daemon says how to reach it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from meshd.fsutil import atomic_write_bytes

DAEMON_FILE = "daemon.json"


def write_daemon_file(home: Path, address: str, peer_id: str) -> None:
    """Record this process as the daemon of home."""
    record = {"pid": os.getpid(), "address": address, "peer_id": peer_id}
    atomic_write_bytes(home / DAEMON_FILE, json.dumps(record).encode())


def remove_daemon_file(home: Path) -> None:
    """Forget the record (on shutdown)."""
    (home / DAEMON_FILE).unlink(missing_ok=True)


def running_daemon_address(home: Path) -> str | None:
    """The address a daemon using this home wrote when it started, if it is still running."""
    try:
        record = json.loads((home / DAEMON_FILE).read_text())
        os.kill(int(record["pid"]), 0)
        return str(record["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
