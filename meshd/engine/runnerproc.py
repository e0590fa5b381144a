"""The daemon's handle on one runner process: start and load, stream requests, stop, and why it
ended. Everything the runner sends is checked: it hosts llama.cpp, which parses model files.

A runner that exits, is killed by a signal, or sends nothing for `stall_timeout` while a
request is active (then it is killed) fails only its own streams, with RunnerFailed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from meshd.engine.failures import describe_exit
from meshd.errors import Cancelled, InvalidRequest, MeshdError, ModelUnavailable, RunnerFailed
from meshd.runner import protocol
from meshd.types import Chunk, GenerateRequest

log = logging.getLogger("meshd.runner")
# Errors a runner may end a request with; anything else it names becomes a plain MeshdError.
RUNNER_ERRORS: dict[str, type[MeshdError]] = {
    cls.__name__: cls for cls in (InvalidRequest, Cancelled, ModelUnavailable, MeshdError)
}
STDERR_LINES_KEPT = 8
STDERR_LINE_CHARS = 400
EXIT_WAIT_S = 2.0  # after the socket closes, how long the process may take to be reaped
COUNT_TIMEOUT_S = 30.0  # a count renders a chat (bounded to 5 s) and tokenizes
POPULATE_TIMEOUT_S = 120.0  # mapping a model's pages again: page-cache work, no disk read


@dataclass
class _Request:
    """One request in flight on the runner."""

    chunks: asyncio.Queue[Chunk | BaseException]
    released: Callable[[], None]
    last_frame: float
    max_tokens: int
    tokens: int = 0
    finished: bool = False


@dataclass
class _Load:
    """The load in progress: slots loaded so far, and how it ended."""

    done: asyncio.Future[float]
    last_frame: float
    slots_loaded: int = 0


@dataclass
class RunnerOptions:
    """How to start runners; `python` is the interpreter that runs them."""

    stall_timeout: float = 60.0
    load_timeout: float = 600.0
    python: str = sys.executable
    # ggml answers an abort by running gdb for a backtrace: slow, and noise in the reason.
    extra_env: dict[str, str] = field(default_factory=lambda: {"GGML_NO_BACKTRACE": "1"})


def _merge_backlog(
    first: Chunk | BaseException, backlog: asyncio.Queue[Chunk | BaseException]
) -> Chunk | BaseException:
    """Fold chunks that piled up while the consumer was busy into one message.

    A fast model outruns the network: sending one message per token then costs more than the
    tokens. Nothing waits here, so a consumer that keeps up still gets every token at once.
    """
    merged = first
    while isinstance(merged, Chunk) and merged.finish_reason is None and not backlog.empty():
        following = backlog.get_nowait()
        if isinstance(following, BaseException):
            return following
        merged = dataclasses.replace(following, text=merged.text + following.text)
    return merged


class RunnerProcess:
    """One runner child; all methods run on the daemon's event loop."""

    def __init__(self, options: RunnerOptions, label: str = "spare runner") -> None:
        self.label, self.options = label, options
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests: dict[int, _Request] = {}
        self.ids = itertools.count(1)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.killed_for = ""
        self.closing = False
        # Resident bytes past which the runner is killed (0: no limit); its ModelHost sets it.
        self.memory_limit = 0
        self.gpu_layers = 0  # layers its model runs on the GPU (-1: all), as it said when ready
        self.locked = False  # its weights are locked in memory, as it said when ready
        # (offset, length) parts of its file a token reads through the mapping, as it said
        # when ready; None: all of the file, as far as it could tell.
        self.pages_used: tuple[tuple[int, int], ...] | None = None
        self.lock_note = ""  # why they are not, when that was asked
        self._load: _Load | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Questions asked of the runner (a token count, a populate), by id: the op of the
        # answer expected, and where it goes.
        self._asks: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.ended.done()

    def rss(self) -> int:
        """Resident bytes of the runner, 0 when it is gone."""
        try:
            return int(psutil.Process(self.pid).memory_info().rss) if self.alive else 0
        except psutil.Error:
            return 0

    # -- start and stop --------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the runner process; it imports llama.cpp and waits for a model to load.

        Raises ModelUnavailable when no process can be started.
        """
        ours, theirs = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.options.python, "-m", "meshd.runner",
                "--fd", str(theirs.fileno()),
                "--parent", str(os.getpid()),
                "--log-level", logging.getLevelName(log.getEffectiveLevel()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, **self.options.extra_env},
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise ModelUnavailable(f"cannot start a runner: {exc}") from None
        finally:
            theirs.close()
        reader, self.writer = await asyncio.open_connection(sock=ours, limit=2**16)
        self._tasks = [
            asyncio.create_task(self._read_frames(reader), name="runner-frames"),
            asyncio.create_task(self._read_stderr(), name="runner-stderr"),
            asyncio.create_task(self._watch(), name="runner-watchdog"),
        ]

    async def load(self, load: protocol.LoadOptions) -> float:
        """Load the model into the spawned runner; returns the load time in seconds.

        Raises ModelUnavailable with the reason when the runner fails or dies while loading.
        """
        if not self.alive:
            raise ModelUnavailable(self.ended.result() if self.ended.done() else "no runner")
        loop = asyncio.get_running_loop()
        self._load = _Load(loop.create_future(), time.monotonic())
        self._send({"op": "load", "options": dataclasses.asdict(load)})
        try:
            return await asyncio.shield(self._load.done)
        finally:
            self._load = None

    async def close(self, grace: float = 1.0) -> None:
        """Ask the runner to exit; kill it if it has not within grace. Idempotent."""
        self.closing = True
        if self.process is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self._send({"op": "exit"})
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except TimeoutError:
            self._kill()
        await self.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._end("runner stopped")

    def kill(self, reason: str) -> None:
        """Kill the runner now; its streams fail with the reason."""
        self.killed_for = self.killed_for or reason
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    # -- requests --------------------------------------------------------------------------

    async def stream(
        self,
        slot: int,
        request: GenerateRequest,
        released: Callable[[], None],
        saved: dict[str, str] | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Run request on slot and yield its chunks; released() runs once the slot is free.
        saved ({"path", "key"}) names a pinned prefix's state on disk."""
        if not self.alive:
            released()
            raise RunnerFailed(self.ended.result() if self.ended.done() else "runner not started")
        request_id = next(self.ids)
        entry = _Request(asyncio.Queue(), released, time.monotonic(), request.max_tokens)
        self.requests[request_id] = entry
        self._send({"op": "generate", "id": request_id, "slot": slot, "saved": saved,
                    "request": protocol.request_to_wire(request)})  # fmt: skip
        try:
            while True:
                item = _merge_backlog(await entry.chunks.get(), entry.chunks)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not entry.finished and self.alive:
                with contextlib.suppress(OSError, RuntimeError):
                    self._send({"op": "cancel", "id": request_id})

    def _finish(self, request_id: int) -> None:
        entry = self.requests.pop(request_id, None)
        if entry is not None and not entry.finished:
            entry.finished = True
            entry.released()

    async def count(self, request: GenerateRequest, timeout: float = COUNT_TIMEOUT_S) -> int:
        """How many tokens the runner makes of the request's prompt (a chat: rendered)."""
        answer = await self._ask(
            {"op": "count", "request": protocol.request_to_wire(request)}, "counted", timeout
        )
        tokens = answer.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise protocol.ProtocolError("a count without a token count")
        return tokens

    async def populate(self, timeout: float = POPULATE_TIMEOUT_S) -> None:
        """Have the runner map what a token reads into its page table again (after the daemon
        read it back into the page cache)."""
        await self._ask({"op": "populate"}, "populated", timeout)

    async def _ask(self, message: dict[str, Any], answer: str, timeout: float) -> dict[str, Any]:
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[request_id] = (answer, future)
        try:
            self._send({**message, "id": request_id})
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            self._asks.pop(request_id, None)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(protocol.encode(message))

    # -- what the runner sends -------------------------------------------------------------

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                body = await reader.readexactly(protocol.frame_length(header))
                self._on_frame(protocol.decode(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the runner is gone: the process status says why
        except protocol.ProtocolError as exc:
            self.kill(f"sent a malformed frame ({exc})")
        except Exception as exc:  # a frame of the right shape with nonsense in it
            self.kill(f"sent a frame that makes no sense ({type(exc).__name__})")
        await self._reap()

    def _on_frame(self, message: dict[str, Any]) -> None:
        op, now = message["op"], time.monotonic()
        if op in ("loaded", "ready", "failed"):
            self._on_load_frame(op, message, now)
            return
        asked = self._asks.pop(message.get("id", -1), None)
        if asked is not None:
            expected, future = asked
            if op == expected:
                future.set_result(message)
            elif op == "error":
                future.set_exception(protocol.error_from_wire(message, RUNNER_ERRORS))
            else:
                raise protocol.ProtocolError(f"{op[:32]!r} frame for a {expected[:32]!r}")
            return
        entry = self.requests.get(message.get("id", -1))
        if entry is None:
            return  # a request that ended already (cancelled): its last frames are late
        entry.last_frame = now
        if op == "chunk":
            chunk = protocol.chunk_from_wire(message)
            if chunk.tokens > entry.max_tokens:  # bounds what a runner can make us hold
                raise protocol.ProtocolError(f"{chunk.tokens} tokens for a request of fewer")
            entry.tokens = chunk.tokens
            entry.chunks.put_nowait(chunk)
            if chunk.finish_reason is not None:
                self._finish(message["id"])
        elif op == "error":
            entry.chunks.put_nowait(protocol.error_from_wire(message, RUNNER_ERRORS))
            self._finish(message["id"])
        elif op != "progress":
            raise protocol.ProtocolError(f"unknown op {op[:32]!r}")

    def _on_load_frame(self, op: str, message: dict[str, Any], now: float) -> None:
        load = self._load
        if load is None or load.done.done():
            raise protocol.ProtocolError(f"{op} frame outside a load")
        load.last_frame = now
        if op == "loaded":
            load.slots_loaded += 1
        elif op == "ready":
            layers = message.get("gpu_layers", 0)
            self.gpu_layers = layers if isinstance(layers, int) and -1 <= layers < 2**16 else 0
            self.locked = message.get("locked") is True
            self.lock_note = str(message.get("lock_note", ""))[:STDERR_LINE_CHARS]
            self.pages_used = _ranges(message.get("pages_used"))
            load.done.set_result(float(message.get("load_seconds", 0.0)))
        else:
            reason = str(message.get("reason", "load failed"))[:STDERR_LINE_CHARS]
            load.done.set_exception(ModelUnavailable(reason))
            self.closing = True  # a refused load is not a crash

    async def _read_stderr(self) -> None:
        """Log what the runner (and llama.cpp itself) writes; keep the last lines for reasons."""
        assert self.process is not None and self.process.stderr is not None
        stream = self.process.stderr
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the stream's limit: take what is buffered
                raw = await stream.read(2**16)
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip()[:STDERR_LINE_CHARS]
            if not line:
                continue
            level, _, text = line.partition(" ")
            known = level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            # llama.cpp writes notes of its own straight to stderr: debug lines, unless the
            # runner dies, when the last of them says why.
            log.log(logging.getLevelName(level) if known else logging.DEBUG, "%s: %s",
                    self.label, text if known else line)  # fmt: skip
            if not known or level in ("WARNING", "ERROR", "CRITICAL"):
                self.stderr_tail.append(text if known else line)

    async def _watch(self) -> None:
        """Kill a runner that sends nothing for too long while it loads or serves."""
        period = max(min(self.options.stall_timeout / 4, 1.0), 0.05)
        while self.alive:
            await asyncio.sleep(period)
            now = time.monotonic()
            load = self._load
            if load is not None and now - load.last_frame > self.options.load_timeout:
                self.kill(f"did not finish loading within {self.options.load_timeout:.0f} s")
            stalled = [r for r in self.requests.values() if not r.finished]
            if any(now - r.last_frame > self.options.stall_timeout for r in stalled):
                self.kill(
                    f"sent nothing for {self.options.stall_timeout:g} s while serving a request"
                )
            resident = self.rss() if self.memory_limit else 0
            if resident > self.memory_limit:
                mib = 2**20
                self.kill(
                    f"held {resident // mib} MiB, over its memory limit of "
                    f"{self.memory_limit // mib} MiB (runner_memory_limit)"
                )

    async def _reap(self) -> None:
        """The connection closed: wait for the process, then fail what was in flight."""
        assert self.process is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), EXIT_WAIT_S)
        except TimeoutError:  # closed its socket but lives on: it is of no use any more
            self.kill(self.killed_for or "closed its connection but did not exit")
            await self.process.wait()
        await asyncio.sleep(0.05)  # let the stderr reader take the last lines of a crash
        last = self.stderr_tail[-1] if self.stderr_tail else ""
        self._end(describe_exit(self.process.returncode, last, self.killed_for))

    def _end(self, reason: str) -> None:
        """Record why the runner ended, once; fail the load and every request in flight."""
        if self.ended.done():
            return
        self.ended.set_result(reason)
        if self.writer is not None:
            self.writer.close()
        if self._load is not None and not self._load.done.done():
            self._load.done.set_exception(ModelUnavailable(f"{reason}"))
        for request_id, entry in list(self.requests.items()):
            note = f"; the text so far ({entry.tokens} tokens) is partial" if entry.tokens else ""
            entry.chunks.put_nowait(RunnerFailed(f"{self.label}: {reason}{note}"))
            self._finish(request_id)
        for _, future in self._asks.values():
            if not future.done():
                future.set_exception(RunnerFailed(f"{self.label}: {reason}"))
        if not self.closing:
            log.error("%s: %s", self.label, reason)


MAX_USED_RANGES = 4096


def _ranges(value: Any) -> tuple[tuple[int, int], ...] | None:
    """A runner's pages_used: (offset, length) pairs of non-negative ints, at most
    MAX_USED_RANGES; None for anything else (then the whole file counts)."""
    if not isinstance(value, list) or len(value) > MAX_USED_RANGES:
        return None
    pairs = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            return None
        offset, length = item
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62 for x in item):
            return None
        pairs.append((offset, length))
    return tuple(pairs)
