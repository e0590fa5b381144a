"""Idle TCP connections without a certificate cannot starve a daemon: under an open-file limit of
256 (macOS's default for a LaunchAgent) 300 of them leave the CLI's Unix socket answering, a
model loading and an app getting in. The limit is set with prlimit in the daemon's own process."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import eventually

from meshd.client import MeshClient
from meshd.errors import MeshdError
from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring
from meshd.types import ModelState

FD_LIMIT = 256
pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")


@contextlib.contextmanager
def idle_connections(address: str, count: int) -> Iterator[list[socket.socket]]:
    """count TCP connections that never start a TLS handshake."""
    host, _, port = address.rpartition(":")
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def test_300_idle_connections_starve_nothing(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "a"
    keyring = Keyring(home)
    keyring.init_mesh("friends")
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_SPARE_RUNNER": "false"}
    prefix = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"]
    with DaemonProcess(home, [f"tiny={tiny_model}"], env=env, prefix=prefix) as daemon:
        assert daemon.proc is not None
        process = psutil.Process(daemon.proc.pid)
        assert process.rlimit(psutil.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)
        bundle = tmp_path / "app.json"
        bundle.write_bytes(keyring.client_bundle("app", [daemon.address]))
        with idle_connections(daemon.address, 300):
            # connections beyond the cap are closed
            eventually(lambda: process.num_fds() < FD_LIMIT - 32, timeout=30)
            with MeshClient(daemon.socket, timeout=5) as local:
                assert local.health()
                assert local.warm("tiny", wait=True).state is ModelState.WARM
                assert local.complete("tiny", "Hello", max_tokens=3).tokens == 3

            def app_gets_in() -> bool:
                with contextlib.suppress(MeshdError), MeshClient.from_bundle(bundle) as app:
                    return app.complete("tiny", "Hello", max_tokens=2).tokens == 2
                return False

            # Unfinished handshakes are closed after 5 s, freeing room for real callers.
            eventually(app_gets_in, timeout=20, poll=0.5)
        assert "Too many open files" not in daemon.log_path.read_text()
