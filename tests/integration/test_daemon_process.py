"""`meshd serve` as a real process: SIGTERM drains in-flight streams; a second signal exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from meshd.client import MeshClient
from meshd.errors import MeshdError, PeerUnavailable
from meshd.process import DaemonProcess
from meshd.types import Chunk, FinishReason

SLOW_ARGS = ["--context", "4096", "--threads", "1"]


def _stream_in_background(address: str, max_tokens: int) -> tuple[threading.Thread, list]:
    received: list[Chunk | Exception] = []

    def run() -> None:
        try:
            with MeshClient(address) as mesh:
                received.extend(mesh.generate("tiny", "Once", max_tokens=max_tokens, temperature=0))
        except MeshdError as exc:
            received.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, received


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
        time.sleep(0.3)
        with MeshClient(daemon.address, timeout=2) as mesh, pytest.raises(MeshdError):
            mesh.complete("tiny", "Hi", max_tokens=2)
        thread.join(30)
    assert isinstance(received[-1], Chunk) and received[-1].tokens == 3000


def test_second_signal_exits_at_once(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "home", [f"tiny={tiny_model}"], extra_args=SLOW_ARGS) as daemon:
        thread, received = _stream_in_background(daemon.address, 4000)
        while not received:
            time.sleep(0.005)
        daemon.signal(signal.SIGTERM)
        time.sleep(0.2)
        started = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert daemon.proc is not None
        code = daemon.proc.wait(10)
        assert time.monotonic() - started < 2
        assert code == 128 + signal.SIGINT
        thread.join(10)
    assert isinstance(received[-1], PeerUnavailable | MeshdError)


def test_a_busy_port_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "a", [f"tiny={tiny_model}"]) as first:
        second = DaemonProcess(tmp_path / "b", [f"tiny={tiny_model}"], listen=first.address)
        with pytest.raises(PeerUnavailable, match="cannot serve on"):
            second.start(timeout=30)
