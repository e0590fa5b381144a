"""The small file in the meshd home where a running daemon says how to reach it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from meshd.errors import ConfigError
from meshd.fsutil import atomic_write_bytes

DAEMON_FILE = "daemon.json"


def write_daemon_file(
    home: Path, address: str, peer_id: str, socket: str, http: str = "", open_files: int = 0
) -> None:
    """Record this process as the daemon of home: its TCP address ("" when it has none), its
    Unix socket address, its HTTP address ("" when it has none) and its open-file limit (which
    only Linux lets another process read)."""
    record = {
        "pid": os.getpid(),
        "address": address,
        "peer_id": peer_id,
        "socket": socket,
        "http": http,
        "open_files": open_files,
    }
    atomic_write_bytes(home / DAEMON_FILE, json.dumps(record).encode())


def remove_daemon_file(home: Path) -> None:
    """Forget the record (on shutdown)."""
    (home / DAEMON_FILE).unlink(missing_ok=True)


def running_daemon(home: Path) -> dict[str, str] | None:
    """What the daemon using this home wrote when it started, if it is still running."""
    try:
        record = json.loads((home / DAEMON_FILE).read_text())
        os.kill(int(record["pid"]), 0)
        return {key: str(value) for key, value in record.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def stop_daemon(home: Path, timeout: float) -> bool:
    """SIGTERM the daemon of home and wait for it to drain; False if none was running."""
    record = running_daemon(home)
    if record is None:
        return False
    pid = int(record["pid"])
    deadline = time.monotonic() + timeout
    import psutil  # here: every CLI command reads the daemon file, few stop the daemon

    try:
        process = psutil.Process(pid)
        process.terminate()
        # A zombie has exited; only its parent (launchd, a shell, a test) has yet to reap it.
        while process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise ConfigError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    return True


def running_daemon_address(home: Path) -> str | None:
    """The TCP address of the daemon of home, if it runs and listens on TCP."""
    record = running_daemon(home)
    return (record.get("address") or None) if record else None


def running_daemon_http(home: Path) -> str | None:
    """The HTTP base URL of the daemon of home, if it runs and serves HTTP."""
    record = running_daemon(home)
    address = record.get("http") if record else None
    return f"http://{address}" if address else None


def running_daemon_socket(home: Path) -> str | None:
    """The Unix socket address ("unix:...") of the daemon of home, if it runs."""
    record = running_daemon(home)
    return (record.get("socket") or None) if record else None
