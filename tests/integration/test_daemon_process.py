"""`meshd serve` as a real process: SIGTERM drains in-flight streams; a second signal exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import eventually

from meshd.client import MeshClient
from meshd.errors import MeshdError, PeerUnavailable
from meshd.process import DaemonProcess
from meshd.types import Chunk, FinishReason

SLOW_ARGS = ["--context", "4096", "--threads", "1"]


def _stream_in_background(
    address: str, max_tokens: int, model: str = "tiny"
) -> tuple[threading.Thread, list]:
    received: list[Chunk | Exception] = []

    def run() -> None:
        try:
            with MeshClient(address) as mesh:
                received.extend(mesh.generate(model, "Once", max_tokens=max_tokens, temperature=0))
        except MeshdError as exc:
            received.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, received


def _wait_until_draining(address: str) -> None:
    """Until the daemon that got SIGTERM says it is draining: its health is NOT_SERVING, or
    its server already refuses new calls."""

    def draining(mesh: MeshClient) -> bool:
        try:
            return not mesh.health()
        except MeshdError:
            return True

    with MeshClient(address, timeout=30) as mesh:
        eventually(lambda: draining(mesh), timeout=30)


def test_sigterm_lets_the_stream_finish_then_exits_zero(tmp_path: Path, tiny_model: Path) -> None:
    daemon = DaemonProcess(tmp_path / "home", [f"tiny={tiny_model}"], extra_args=SLOW_ARGS)
    with daemon:
        with MeshClient(daemon.address) as mesh:
            mesh.warm("tiny", wait=True)
        thread, received = _stream_in_background(daemon.address, 2500)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.005)
        daemon.signal(signal.SIGTERM)
        thread.join(30)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 0
    last = received[-1]
    assert isinstance(last, Chunk), last
    assert last.finish_reason is FinishReason.LENGTH and last.tokens == 2500
    assert not (tmp_path / "home" / "daemon.json").exists()


def test_new_requests_are_refused_while_draining(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "home", [f"tiny={tiny_model}"], extra_args=SLOW_ARGS) as daemon:
        thread, received = _stream_in_background(daemon.address, 3000)
        while not received:
            time.sleep(0.005)
        daemon.signal(signal.SIGTERM)
        _wait_until_draining(daemon.address)
        with MeshClient(daemon.address, timeout=30) as mesh, pytest.raises(MeshdError):
            mesh.complete("tiny", "Hi", max_tokens=2)
        thread.join(30)
    assert isinstance(received[-1], Chunk) and received[-1].tokens == 3000


def test_second_signal_exits_at_once(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "home", [f"tiny={tiny_model}"], extra_args=SLOW_ARGS) as daemon:
        thread, received = _stream_in_background(daemon.address, 4000)
        while not received:
            time.sleep(0.005)
        daemon.signal(signal.SIGTERM)
        _wait_until_draining(daemon.address)
        daemon.signal(signal.SIGINT)
        assert daemon.proc is not None
        # A drain ends with 0 once its streams finish; the second signal ends it at once, with
        # the signal's code, while the 4,000-token stream is still going.
        code = daemon.proc.wait(60)
        assert code == 128 + signal.SIGINT
        thread.join(10)
    assert isinstance(received[-1], PeerUnavailable | MeshdError)


def test_a_busy_port_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "a", [f"tiny={tiny_model}"]) as first:
        second = DaemonProcess(tmp_path / "b", [f"tiny={tiny_model}"], listen=first.address)
        with pytest.raises(PeerUnavailable, match="cannot serve on"):
            second.start(timeout=30)


def _runner_pids(address: str) -> list[int]:
    with MeshClient(address) as mesh:
        mesh.warm("a", wait=True)
        mesh.warm("b", wait=True)
        return [m.runner_pid for m in mesh.models()]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_no_runner_outlives_a_daemon_that_exits(tmp_path: Path, tiny_model: Path) -> None:
    models = [f"a={tiny_model}", f"b={tiny_model}"]
    with DaemonProcess(tmp_path / "home", models) as daemon:
        pids = _runner_pids(daemon.address)
        assert len(set(pids)) == 2 and all(pids)
        assert daemon.proc is not None
        children = {c.pid for c in psutil.Process(daemon.proc.pid).children()}
        assert set(pids) <= children  # and the spare runner, started ahead of need
    assert daemon.proc.returncode == 0
    assert all(_gone(pid) for pid in children), "every runner ended with its daemon"


def test_a_daemon_killed_with_sigkill_takes_its_runners_along(
    tmp_path: Path, tiny_model: Path
) -> None:
    models = [f"a={tiny_model}", f"b={tiny_model}"]
    with DaemonProcess(tmp_path / "home", models) as daemon:
        _runner_pids(daemon.address)
        assert daemon.proc is not None
        pids = [c.pid for c in psutil.Process(daemon.proc.pid).children()]
        daemon.signal(signal.SIGKILL)
        assert daemon.proc is not None and daemon.proc.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in pids), "no orphaned runner keeps the model mapped"
    with DaemonProcess(tmp_path / "home", models) as again, MeshClient(again.socket) as mesh:
        assert mesh.health(), "a killed daemon leaves its home unlocked"


def test_sigterm_with_a_hung_runner_exits_within_the_drain(
    tmp_path: Path, tiny_model: Path
) -> None:
    drain = 2.0
    with DaemonProcess(
        tmp_path / "home",
        [f"a={tiny_model}", f"b={tiny_model}"],
        extra_args=SLOW_ARGS,
        env={"MESHD_DRAIN_SECONDS": str(drain)},
    ) as daemon:
        pids = _runner_pids(daemon.address)
        thread, received = _stream_in_background(daemon.address, 4000, model="a")
        while not received:
            time.sleep(0.005)
        os.kill(pids[0], signal.SIGSTOP)  # the runner hangs mid-stream
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        # Without the drain's end it would wait for the hung runner forever.
        assert daemon.proc.wait(drain + 30) == 0
        thread.join(10)
    assert isinstance(received[-1], MeshdError)
    assert all(_gone(pid) for pid in pids)


def test_a_second_daemon_on_the_same_home_is_refused_and_removes_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = tmp_path / "home"
    with DaemonProcess(home, [f"tiny={tiny_model}"]) as first:
        assert first.proc is not None
        second = subprocess.run(
            [sys.executable, "-m", "meshd.cli", "serve", "--home", str(home),
             "--listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"another meshd daemon (pid {first.proc.pid}) already serves {home}" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        with MeshClient(first.socket) as mesh:  # the first daemon's socket is untouched
            assert mesh.health()
        assert (home / "daemon.json").exists()
    # Once the first has stopped (or died), the home is free again.
    with DaemonProcess(home, [f"tiny={tiny_model}"]) as again, MeshClient(again.socket) as mesh:
        assert mesh.health()
