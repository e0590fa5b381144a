"""Slots, the bounded queue, cancellation and deadlines, on a real daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from helpers import eventually

from meshd.client import MeshClient
from meshd.errors import DeadlineExceeded, Overloaded
from meshd.types import FinishReason

LONG = 3000  # tokens: long enough that a request is still running while the test acts
PROMPT = "Once upon a time"


def _load(mesh: MeshClient) -> tuple[int, int]:
    (load,) = mesh.status().load
    return load.active, load.queued


class Background:
    """A completion running on its own thread."""

    def __init__(self, address: str, max_tokens: int = LONG) -> None:
        self.result: object = None
        self.first_chunk = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(address, max_tokens))
        self.thread.start()

    def _run(self, address: str, max_tokens: int) -> None:
        try:
            with MeshClient(address) as mesh:
                last = None
                for chunk in mesh.generate("tiny", PROMPT, max_tokens=max_tokens, temperature=0):
                    self.first_chunk.set()
                    last = chunk
                self.result = last
        except Exception as exc:
            self.result = exc
            self.first_chunk.set()

    def join(self) -> object:
        self.thread.join(60)
        return self.result


def test_requests_beyond_slots_queue_then_are_refused_at_once(start_node: Callable) -> None:
    node = start_node(slots=1, max_queue=1, context=4096)
    with MeshClient(node.address) as mesh:
        running = Background(node.address)
        assert running.first_chunk.wait(30)
        queued = Background(node.address)
        eventually(lambda: _load(mesh) == (1, 1))
        with pytest.raises(Overloaded, match="busy"):
            list(mesh.generate("tiny", PROMPT, max_tokens=4))
        # Refused at once: not after waiting its turn, for the two before it still hold the
        # slot and the queue.
        assert _load(mesh) == (1, 1) and running.thread.is_alive()
    for request in (running, queued):
        result = request.join()
        assert getattr(result, "finish_reason", None) is FinishReason.LENGTH, result


def test_two_slots_run_two_requests_at_once(start_node: Callable) -> None:
    node = start_node(slots=2, max_queue=0, context=4096)
    with MeshClient(node.address) as mesh:
        first, second = Background(node.address), Background(node.address)
        eventually(lambda: _load(mesh) == (2, 0))
        with pytest.raises(Overloaded):
            mesh.complete("tiny", PROMPT, max_tokens=4)
    assert first.join().tokens == second.join().tokens == LONG  # type: ignore[union-attr]


def test_leaving_the_stream_cancels_generation_and_frees_the_slot(start_node: Callable) -> None:
    node = start_node(slots=1, max_queue=0, context=4096)
    with MeshClient(node.address) as mesh:
        started = time.monotonic()
        mesh.complete("tiny", PROMPT, max_tokens=LONG, temperature=0)
        full_run = time.monotonic() - started

        stream = mesh.generate("tiny", PROMPT, max_tokens=LONG, temperature=0)
        next(stream)
        stream.close()  # the app stops reading: the call is cancelled
        freed_after = eventually(lambda: _load(mesh) == (0, 0))
        requests = node.engine.telemetry.requests
        eventually(lambda: requests.labels("tiny", "grpc", "abandoned")._value.get() == 1)
        assert freed_after < full_run / 4, (freed_after, full_run)
        assert mesh.complete("tiny", PROMPT, max_tokens=4).tokens == 4
    (service,) = list(node.engine.hosts["tiny"].service_times)[-2:-1]
    assert service < full_run / 4, "the cancelled job must stop within a token or so"


def test_deadline_stops_generation_and_frees_the_slot(start_node: Callable) -> None:
    node = start_node(slots=1, max_queue=0, context=4096)
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        with pytest.raises(DeadlineExceeded):
            list(mesh.generate("tiny", PROMPT, max_tokens=LONG, timeout=0.3))
        eventually(lambda: _load(mesh) == (0, 0), timeout=30)
        assert mesh.complete("tiny", PROMPT, max_tokens=4).tokens == 4
