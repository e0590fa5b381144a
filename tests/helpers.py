"""What many tests share: waiting with a deadline, running the CLI, checking the store."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.store import ModelStore


def eventually(predicate: Callable[[], bool], timeout: float = 10.0, poll: float = 0.01) -> float:
    """Seconds until predicate() held; fails the test after timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(poll)
    return time.monotonic() - started


def meshd(
    *args: str, home: Path | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """Run the meshd command as a person would, with a clean MESHD_* environment, in a terminal
    `columns` wide (200: one line per message)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    env["COLUMNS"] = str(columns)
    if home is not None:
        env["MESHD_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "meshd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def digest_of(data: bytes) -> str:
    """A digest in the store's format."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_store_consistent(store: ModelStore) -> None:
    """Every file under a final name is whole and matches its digest; manifest points at them."""
    for blob in store.blobs.glob("*") if store.blobs.exists() else []:
        assert digest_of(blob.read_bytes()) == blob.name.replace("-", ":"), blob
    for model in store.models():
        assert store.blob_path(model.digest).stat().st_size == model.size


class RawListener:
    """A listener that records every byte it receives and answers nothing: a forged peer on
    127.0.0.1, or (given a bound socket) a Unix socket someone wants dialled."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_server(("127.0.0.1", 0))
        if sock is None:
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen()
        self.received = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while block := conn.recv(65536):
                    self.received += block

    def close(self) -> None:
        self.sock.close()
