"""Run `meshd serve` as a child process and wait until it answers: for the demo, bench and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from meshd.daemonfile import DAEMON_FILE, running_daemon
from meshd.errors import PeerUnavailable


class DaemonProcess:
    """A `meshd serve` child with its own home; the address is known once it is ready."""

    def __init__(
        self,
        home: Path,
        models: Sequence[str] = (),
        *,
        listen: str = "127.0.0.1:0",
        http_listen: str = "127.0.0.1:0",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.home = home
        self.args = [
            *prefix,
            sys.executable,
            "-m",
            "meshd.cli",
            "serve",
            "--home",
            str(home),
            "--listen",
            listen,
            "--http-listen",
            http_listen,
            *(a for m in models for a in ("--model", m)),
            *extra_args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.socket = ""
        self.http = ""  # the HTTP base URL, once ready ("" without HTTP)
        self.log_path = home / "daemon.log"

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        """Spawn the daemon and return once it is serving."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / DAEMON_FILE).unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.address = self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> str:
        """The daemon's TCP address (else its socket), once it is up; raises if it dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PeerUnavailable(
                    f"meshd serve exited with {self.proc.returncode}: {self.log_tail()}"
                )
            record = running_daemon(self.home)
            if record:
                self.socket = record["socket"]
                self.http = f"http://{record['http']}" if record.get("http") else ""
                return record["address"] or record["socket"]
            time.sleep(0.01)
        raise PeerUnavailable(f"meshd serve did not start within {timeout:.0f}s")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the daemon printed."""
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain, SIGKILL if it hangs; returns the exit code."""
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
