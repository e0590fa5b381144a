"""One model on this peer: its file facts, its slots, its admission queue and its lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.chattemplates import ChatTemplate, choose_template
from meshd.engine import failures
from meshd.engine.eviction import Resident, warm_until
from meshd.engine.failures import FailureRecord, FileStamp, Verdict
from meshd.engine.residency import ReadRate, Residency, ResidencyProbe
from meshd.engine.runnerproc import RunnerProcess
from meshd.engine.runnersupply import RunnerSupply
from meshd.engine.slots import SlotPool
from meshd.errors import InvalidModelFile, ModelUnavailable, Overloaded, RunnerFailed
from meshd.ggufcheck import GGUFFacts, inspect_gguf
from meshd.prefixes import canonical_of
from meshd.runner.protocol import LoadOptions
from meshd.types import (
    PAGED_OUT_BELOW,
    Chunk,
    GenerateRequest,
    ModelInfo,
    ModelState,
    PeerModel,
)

log = logging.getLogger("meshd.engine")

# Scratch a llama.cpp context needs beyond weights and KV cache, before it is measured.
CONTEXT_OVERHEAD_BYTES = 16 * 2**20
MIN_RATE_TOKENS = 64  # a prompt this long (beyond its cached part) measures the prefill rate


@dataclass(frozen=True)
class SlotOptions:
    """How each slot of a model is built."""

    count: int
    context: int
    threads: int
    batch: int
    use_mmap: bool
    memory_limit: int = 0  # a runner's resident bytes (0: from the model's needs)
    gpu_layers: int = -1  # layers on the GPU (-1: all where the build can offload)
    lock_memory: bool = False  # lock the weights in memory (mlock)


@dataclass(frozen=True)
class PinnedReport:
    """How a pinned prefix came into its slot at the last load."""

    restored: bool  # from its saved state, not evaluated
    seconds: float


class ModelHost:
    """Owns one model's runner and the daemon's view of its slots; the Engine decides when it
    loads and unloads. Slot numbers go out to requests through `free`."""

    def __init__(
        self,
        name: str,
        path: Path,
        options: SlotOptions,
        supply: RunnerSupply,
        *,
        pinned: bool,
        max_queue: int,
        digest: str = "",
        chat_template: ChatTemplate | None = None,
        read_rate: ReadRate | None = None,
    ) -> None:
        self.name, self.path, self.options = name, path, options
        self.configured_template = chat_template  # meshd.toml's, if it names one
        self.supply = supply
        self.digest = digest  # set for models that live in the store
        self.pinned, self.max_queue = pinned, max_queue
        self.state = ModelState.COLD
        self.error = ""
        self.facts: GGUFFacts | None = None
        self.file_refused = False  # the validator refused the file as it is now
        self.inspected: FileStamp | None = None  # the file as it was when it passed
        self.runner: RunnerProcess | None = None
        self.free = SlotPool()
        self.prefill_rates: deque[float] = deque(maxlen=16)  # prompt tokens per second
        self.pinned_prefixes: dict[str, PinnedReport] = {}  # by name, since the last load
        self.inflight = 0
        self.last_used = 0.0
        self.last_request = 0.0  # when a request (not a warm) last asked for it
        self.lease_until = 0.0
        self.memory_bytes = 0
        self.load_seconds: float | None = None
        self.service_times: deque[float] = deque(maxlen=32)
        self.loading: asyncio.Task[None] | None = None
        self.failures = FailureRecord()
        self.restarts = 0  # runners started after the previous one failed
        self.probe = ResidencyProbe(path)
        self.residency: Residency | None = None  # its file in memory, as last measured
        self.read_rate = read_rate or ReadRate()  # this peer's disk, shared by its models
        self.load_resident_share = -1.0  # of its file in memory when the last load began

    # -- facts and memory ------------------------------------------------------------------

    def inspect(self) -> GGUFFacts:
        """Validate the file, again if it changed since; a bad file marks the model FAILED
        and raises. (A whole check reads every token string: ~0.2 s for a 262k vocabulary.)"""
        stamp = self.file_stamp()
        if stamp is None:  # missing or unreadable for now: tried again, like a failed load
            self._failed(f"cannot read {self.path}", at_load=True)
            raise InvalidModelFile(self.error)
        if self.facts is not None and stamp == self.inspected:
            return self.facts
        try:
            self.facts, self.inspected = inspect_gguf(self.path), stamp
        except InvalidModelFile as exc:
            self.state, self.error, self.file_refused = ModelState.FAILED, str(exc), True
            raise
        if self.file_refused:  # the file was fixed
            self.state, self.error, self.file_refused = ModelState.COLD, "", False
        return self.facts

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The template this model chats with (None: it takes prompts only), as far as its
        file is known."""
        facts = self.facts
        if facts is None:
            return self.configured_template
        return choose_template(
            self.configured_template,
            facts.has_chat_template,
            facts.architecture,
            facts.chat_markers,
        )

    def measure_residency(self) -> Residency | None:
        """Measure how much of what it reads is in memory now, and keep it (blocking: mincore):
        the parts of its file its runner reads through the mapping, the whole file when no
        runner holds it (what a load reads)."""
        used = self.pages_used
        # Nothing read through a mapping (use_mmap off): the weights are the runner's own memory.
        self.residency = self.probe.measure(used) if used != () else None
        return self.residency

    @property
    def pages_used(self) -> tuple[tuple[int, int], ...] | None:
        """The parts of its file its runner reads per token; None: all of it."""
        runner = self.runner
        if runner is None or self.state is not ModelState.WARM:
            return None
        return runner.pages_used

    @property
    def paged_out(self) -> bool:
        """Loaded, with too little of what it reads in memory to answer at warm speed (as last
        measured: asked on every request, so nothing is measured here)."""
        measured = self.residency
        return (
            self.state is ModelState.WARM
            and measured is not None
            and measured.share < PAGED_OUT_BELOW
        )

    async def count_tokens(self, request: GenerateRequest) -> int | None:
        """How many tokens the request's prompt is, as its runner tokenizes it; None when no
        runner holds the model (then only serving it can tell)."""
        runner = self.runner
        if runner is None or self.state is not ModelState.WARM:
            return None
        return await runner.count(request)

    def memory_limit(self) -> int:
        """Resident bytes past which this model's runner is killed: the setting, or twice what
        the model needs plus 1 GiB (a leak or a hostile file, not a model at work)."""
        if self.options.memory_limit:
            return self.options.memory_limit
        return 2 * self.projected_memory() + 2**30

    def projected_memory(self) -> int:
        """Bytes the model will hold once loaded: weights once, the KV cache of every slot
        (sequence), and one context's scratch."""
        if self.memory_bytes:
            return self.memory_bytes
        if self.facts is None:
            return 0
        kv = self.options.count * self.facts.kv_cache_bytes(self.options.context)
        return self.facts.file_size + kv + CONTEXT_OVERHEAD_BYTES

    def resident(self, keep_alive: float) -> Resident:
        """How the eviction policy sees this model."""
        return Resident(
            self.name,
            self.projected_memory(),
            self.pinned,
            self.busy,
            self.last_used,
            self.warm_until(keep_alive),
            self.last_request,
        )

    @property
    def loaded(self) -> bool:
        """A runner holds the model (or is loading it)."""
        return self.runner is not None

    @property
    def busy(self) -> bool:
        return self.inflight > 0 or self.active > 0

    @property
    def active(self) -> int:
        return self.options.count - self.free.qsize() if self.state is ModelState.WARM else 0

    @property
    def retryable(self) -> bool:
        """Whether a request may still start this model here (it is not given up on)."""
        if self.file_refused:
            return False  # the file itself is refused until it changes
        return self._verdict()[0] is not Verdict.GIVEN_UP

    @property
    def may_start_now(self) -> bool:
        """Whether a runner may be started for this model now, as its backoff allows."""
        return not self.file_refused and self._verdict()[0] is Verdict.TRY

    def warm_until(self, keep_alive: float) -> float:
        return warm_until(self.last_used, keep_alive, self.lease_until, self.pinned)

    def file_stamp(self) -> FileStamp | None:
        """The file's size, mtime and inode: a failure recorded for one file is not another's."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    # -- failures --------------------------------------------------------------------------

    def _verdict(self) -> tuple[Verdict, float]:
        if not self.failures.failures:
            return Verdict.TRY, 0.0
        return failures.next_attempt(self.failures, time.monotonic(), self.file_stamp())

    def check_retry(self) -> None:
        """Raise ModelUnavailable while a failed model must not be started again yet."""
        verdict, wait = self._verdict()
        if verdict is Verdict.GIVEN_UP:
            raise ModelUnavailable(
                f"model {self.name!r} failed to load {self.failures.load_failures} times in a "
                f"row and stays off until its file changes or `meshd warm {self.name}`: "
                f"{self.error}"
            )
        if verdict is Verdict.WAIT:
            raise ModelUnavailable(
                f"model {self.name!r} failed ({self.error}); trying again in {wait:.1f} s"
            )

    def forgive(self) -> None:
        """Someone asked for this model explicitly: try it again now, whatever failed before."""
        self.failures = FailureRecord()

    def _failed(self, reason: str, at_load: bool) -> None:
        self.state, self.error = ModelState.FAILED, reason
        self.failures = failures.after_failure(
            self.failures, time.monotonic(), self.file_stamp(), at_load
        )

    # -- load and unload (called by the Engine, one at a time) -----------------------------

    async def load(self) -> None:
        """Start a runner that loads every slot; the model is WARM when this returns."""
        if self.state is ModelState.FAILED:
            self.restarts += 1
        self.state, self.error = ModelState.LOADING, ""
        opts = self.options
        before = await asyncio.to_thread(self.measure_residency)
        started = time.monotonic()
        runner: RunnerProcess | None = None
        try:
            runner = self.runner = await self.supply.take(f"model {self.name!r}")
            template = self.chat_template
            runner.memory_limit = self.memory_limit()
            await runner.load(
                LoadOptions(
                    str(self.path), opts.count, opts.context, opts.threads, opts.batch,
                    opts.use_mmap, template.text if template is not None else "",
                    opts.gpu_layers, opts.lock_memory,
                )
            )  # fmt: skip
        except (ModelUnavailable, asyncio.CancelledError) as exc:
            self.runner = None
            if runner is not None:
                await runner.close()
            if isinstance(exc, asyncio.CancelledError):
                self.state = ModelState.COLD
                raise
            self._failed(str(exc), at_load=True)
            raise ModelUnavailable(f"model {self.name!r}: {self.error}") from None
        finally:
            self.supply.replenish()
        self.free = SlotPool(opts.count)
        self.load_seconds = time.monotonic() - started
        self.load_resident_share = before.share if before is not None else -1.0
        if before is not None:  # what it read from disk, in the time the whole load took
            self.read_rate.add(before.missing, self.load_seconds)
        self.memory_bytes = max(runner.rss(), self.facts.file_size if self.facts else 0)
        self.last_used = time.time()
        self.failures = failures.after_load(self.failures)
        self.state = ModelState.WARM
        if opts.lock_memory and not runner.locked:
            log.warning("%s: lock_memory: %s", self.name, runner.lock_note or "not locked")
        runner.ended.add_done_callback(lambda ended: self._runner_ended(runner, ended.result()))

    def _runner_ended(self, runner: RunnerProcess, reason: str) -> None:
        """The runner is gone: unless it was stopped on purpose, the model failed."""
        if self.runner is not runner:
            return
        self.runner, self.free, self.memory_bytes = None, SlotPool(), 0
        if runner.closing:
            self.state = ModelState.COLD if self.state is not ModelState.FAILED else self.state
            return
        self._failed(reason, at_load=False)

    async def unload(self) -> None:
        """Stop the runner; the model goes back to COLD."""
        runner, self.runner, self.free = self.runner, None, SlotPool()
        if runner is not None:
            await runner.close()
        self.memory_bytes = 0
        if self.state is not ModelState.FAILED:
            self.state = ModelState.COLD

    # -- requests --------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request as queued or active; refuse at once when slots and queue are full."""
        capacity = self.options.count + self.max_queue
        if self.inflight >= capacity:
            raise Overloaded(
                f"model {self.name!r} is busy: {self.options.count} slot(s) running and "
                f"{self.max_queue} request(s) queued"
            )
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def stream(
        self,
        request: GenerateRequest,
        waited: Callable[[float], None] | None = None,
        hold_until: float = 0.0,
        saved: dict[str, str] | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Run the request on the free slot that holds the longest prefix of it and yield its
        chunks; cancels it on exit. `waited` is told how long the request waited for its
        slot; a prefill_only request's prefix is held in its slot until hold_until, and
        restored from (or saved to) `saved` when given."""
        asked = time.monotonic()
        text = canonical_of(request)
        runner, slot = await self._take_slot(text)
        started = time.monotonic()
        if waited is not None:
            waited(started - asked)
        free = self.free
        free.used(slot, text, hold_until)
        completed = False
        first_at = 0.0

        def released() -> None:
            self.service_times.append(time.monotonic() - started)
            self.last_used = time.time()
            if self.free is free:
                free.put_nowait(slot)

        async with contextlib.aclosing(runner.stream(slot, request, released, saved)) as chunks:
            async for chunk in chunks:
                first_at = first_at or time.monotonic()
                completed = chunk.finish_reason is not None
                if completed:
                    self._prefilled(chunk, first_at - started)
                yield chunk
        if completed and not self.failures.load_failures:
            self.failures = FailureRecord()  # a whole answer: the model works again

    def _prefilled(self, last: Chunk, seconds: float) -> None:
        """Learn the prefill rate from a request's first chunk (a long enough prompt only)."""
        evaluated = last.prompt_tokens - last.cached_tokens
        if evaluated >= MIN_RATE_TOKENS and seconds > 0:
            self.prefill_rates.append(evaluated / seconds)

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second this peer prefills (median of recent ones), 0 unknown."""
        rates = sorted(self.prefill_rates)
        return rates[len(rates) // 2] if rates else 0.0

    async def _take_slot(self, text: str) -> tuple[RunnerProcess, int]:
        """The best free slot of the current runner for this canonical text, or RunnerFailed
        if the runner ends first."""
        runner, free = self.runner, self.free
        if runner is None:
            raise RunnerFailed(f"model {self.name!r}: {self.error or 'runner not running'}")
        getter: asyncio.Future[int] = asyncio.ensure_future(free.get(text))
        either: set[asyncio.Future[Any]] = {getter, runner.ended}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if runner.ended.done():
            if getter.done() and not getter.cancelled():
                free.put_nowait(getter.result())
            raise RunnerFailed(f"model {self.name!r}: {runner.ended.result()}")
        return runner, getter.result()

    # -- reporting -------------------------------------------------------------------------

    def load_snapshot(self) -> PeerModel:
        """Its state and live load: active and queued requests, slots, recent service time."""
        times = self.service_times
        mean = sum(times) / len(times) if times else 0.0
        active, queued = self.active, max(self.inflight - self.active, 0)
        slots, memory = self.options.count, self.projected_memory()
        size = self.facts.file_size if self.facts else 0
        prints = self.free.fingerprints() if self.state is ModelState.WARM else ()
        template = self.chat_template
        measured = self.residency
        resident = measured.resident if measured is not None else -1
        return PeerModel(
            self.name, self.state, active, queued, slots, mean, memory, size, prints,
            self.prefill_rate, template.source if template is not None else "", resident,
            measured.size if measured is not None else size, self.read_rate.bytes_per_second,
            self.digest,
        )  # fmt: skip

    def info(self, keep_alive: float) -> ModelInfo:
        """What ListModels reports for this model."""
        facts = self.facts
        until = self.warm_until(keep_alive) if self.state is ModelState.WARM else 0.0
        runner, template = self.runner, self.chat_template
        return ModelInfo(
            name=self.name,
            path=str(self.path),
            size_bytes=facts.file_size if facts else 0,
            state=self.state,
            pinned=self.pinned,
            slots=self.options.count,
            memory_bytes=self.projected_memory(),
            last_used=self.last_used,
            warm_until=0.0 if math.isinf(until) else until,
            architecture=facts.architecture if facts else "",
            quantization=facts.quantization if facts else "",
            context_length=self.options.context,
            error=self.error,
            digest=self.digest,
            runner_pid=runner.pid if runner is not None and runner.alive else 0,
            runner_rss=runner.rss() if runner is not None else 0,
            restarts=self.restarts,
            chat_template=template.source if template is not None else "",
            gpu_layers=runner.gpu_layers if runner is not None and runner.alive else 0,
            resident_bytes=self.residency.resident if self.residency is not None else -1,
            mapped_bytes=self.residency.size if self.residency is not None else 0,
            load_seconds=self.load_seconds or 0.0,
            load_resident_share=self.load_resident_share,
            lock_memory=runner.locked if runner is not None and runner.alive else False,
        )
