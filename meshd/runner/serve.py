"""The runner process: hosts one model and serves the daemon over an inherited socket.

The main thread reads frames; the batch scheduler (meshd.runner.batching) runs every request
in one llama.cpp context on its own thread, and frames are written under one lock. The runner
exits when the daemon says so or when the socket closes (the daemon is gone), and dies with the
daemon even mid-decode (meshd.runner.parentwatch).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp

from meshd.errors import MeshdError
from meshd.memlock import lock_refusal
from meshd.runner import mapping, protocol
from meshd.runner.batching import Scheduler
from meshd.runner.context import LoadedModel
from meshd.runner.generation import Job
from meshd.runner.gpu import offload_layers
from meshd.runner.parentwatch import die_with_parent
from meshd.runner.savedstate import SavedState

log = logging.getLogger("meshd.runner")
RUNNER_NICE = 5


class Runner:
    """One model's context and batch scheduler behind one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.scheduler: Scheduler | None = None
        self.jobs: dict[int, Job] = {}
        self.jobs_lock = threading.Lock()
        self.counter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="count")
        self.populator = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="populate")

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        with self.send_lock:
            self.sock.sendall(frame)

    def serve(self) -> None:
        """Read frames until exit or until the daemon goes away."""
        try:
            while True:
                message = self.receive()
                if message is None or message["op"] == "exit":
                    return
                handler = getattr(self, "on_" + message["op"], None)
                if handler is None:
                    log.error("unknown frame %r from the daemon", message["op"][:32])
                    return
                handler(message)
        finally:
            if self.scheduler is not None:
                self.scheduler.close()

    def receive(self) -> dict[str, Any] | None:
        header = self._read_exactly(protocol.HEADER.size)
        if header is None:
            return None
        body = self._read_exactly(protocol.frame_length(header))
        return None if body is None else protocol.decode(body)

    def _read_exactly(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            piece = self.sock.recv(n - len(data))
            if not piece:
                return None
            data += piece
        return bytes(data)

    def on_load(self, message: dict[str, Any]) -> None:
        """Map the weights, make the one context for every sequence, and evaluate one token
        (the graph built, the pages faulted) before saying ready."""
        opts = protocol.LoadOptions(**message["options"])
        started = time.monotonic()
        gpu_layers = offload_layers(opts.gpu_layers, bool(llama_cpp.llama_supports_gpu_offload()))
        try:
            self.scheduler = Scheduler.load(
                lambda: LoadedModel(
                    Path(opts.path),
                    context=opts.context,
                    sequences=opts.slots,
                    threads=opts.threads,
                    batch=opts.batch,
                    use_mmap=opts.use_mmap,
                    gpu_layers=gpu_layers,
                    chat_template=opts.chat_template,
                )
            )
        except Exception as exc:
            self.send({"op": "failed", "reason": f"llama.cpp could not load it: {exc}"})
            return
        for i in range(opts.slots):
            self.send({"op": "loaded", "slot": i})
        used = self.scheduler.model.pages_used
        lock_note = self._lock(opts, used) if opts.lock_memory else ""
        self.send(
            {
                "op": "ready",
                "load_seconds": time.monotonic() - started,
                "gpu_layers": gpu_layers,
                "locked": opts.lock_memory and not lock_note,
                "lock_note": lock_note,
                "pages_used": used,
            }
        )

    @staticmethod
    def _lock(opts: protocol.LoadOptions, used: list[tuple[int, int]] | None) -> str:
        """Lock what a token reads in memory; "" when locked, else why not (one line)."""
        need = sum(n for _, n in used) if used is not None else os.path.getsize(opts.path)
        return lock_refusal(need) or mapping.lock(Path(opts.path), used)

    def on_populate(self, message: dict[str, Any]) -> None:
        """Map what a token reads into the page table again (the daemon read it back into the
        page cache), on a thread of its own, then say so."""
        request_id = int(message["id"])
        assert self.scheduler is not None, "populate before load"
        model = self.scheduler.model

        def run() -> None:
            mapping.populate(model.path, model.pages_used)
            self.send({"op": "populated", "id": request_id})

        self.populator.submit(run)

    def on_generate(self, message: dict[str, Any]) -> None:
        request_id, index = int(message["id"]), int(message["slot"])
        job = Job(protocol.request_from_wire(message["request"]))
        job.saved = SavedState.from_wire(message.get("saved"))
        job.progress = lambda: self.send({"op": "progress", "id": request_id})
        assert self.scheduler is not None, "generate before load"
        if not 0 <= index < len(self.scheduler.seqs):
            raise protocol.ProtocolError(f"no sequence {index}")
        with self.jobs_lock:
            self.jobs[request_id] = job
        self.scheduler.submit(
            index,
            job,
            lambda chunk: self.send(protocol.chunk_to_wire(request_id, chunk)),
            lambda error: self._ended(request_id, error),
        )

    def _ended(self, request_id: int, error: BaseException | None) -> None:
        with self.jobs_lock:
            self.jobs.pop(request_id, None)
        if error is None:
            return
        if not isinstance(error, MeshdError):  # llama.cpp or a template raised the unexpected
            log.error("request %d failed: %r", request_id, error)
            error = MeshdError(f"runner error: {error}")
        with contextlib.suppress(OSError):  # the daemon is gone: the main thread sees it, exits
            self.send(protocol.error_to_wire(request_id, error))

    def on_count(self, message: dict[str, Any]) -> None:
        """How many tokens a request's prompt is (a prefix to warm is refused at once when it
        cannot fit the context); counted on a thread of its own, beside the batch."""
        request_id = int(message["id"])
        request = protocol.request_from_wire(message["request"])
        self.counter.submit(self._count, request_id, request)

    def _count(self, request_id: int, request: Any) -> None:
        try:
            assert self.scheduler is not None, "count before load"
            tokens = self.scheduler.count(Job(request))
            self.send({"op": "counted", "id": request_id, "tokens": tokens})
        except MeshdError as exc:
            self.send(protocol.error_to_wire(request_id, exc))
        except Exception as exc:
            log.exception("counting request %d failed", request_id)
            self.send(protocol.error_to_wire(request_id, MeshdError(f"runner error: {exc}")))

    def on_cancel(self, message: dict[str, Any]) -> None:
        with self.jobs_lock:
            job = self.jobs.get(int(message["id"]))
        if job is not None:
            job.cancel.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meshd-runner", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from meshd")
    parser.add_argument("--parent", type=int, default=0, help="the daemon's pid")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    # Inference yields the CPU to the daemon's network work and to the owner's own programs.
    os.nice(RUNNER_NICE)
    # A crash must not leave a core file the size of the mapped model on the owner's disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # A Ctrl-C in the terminal, or a service manager's SIGTERM to the whole group, is for the
    # daemon: it drains its streams, then stops its runners itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(levelname)s %(name)s: %(message)s"
    )
    sock = socket.socket(fileno=args.fd)
    try:
        Runner(sock).serve()
    except (OSError, MeshdError) as exc:
        log.error("runner stopping: %s", exc)
    finally:
        sys.stderr.flush()
        # os._exit: llama.cpp contexts and their threads need no orderly teardown, and an exit
        # that waits on a wedged slot thread would hang.
        os._exit(0)
