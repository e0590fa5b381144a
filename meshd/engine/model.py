"""One model on this peer: its file facts, its slots, its admission queue and its lease."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from meshd.engine.eviction import Resident, warm_until
from meshd.engine.generation import Job
from meshd.engine.slot import Slot
from meshd.errors import InvalidModelFile, ModelUnavailable, Overloaded
from meshd.ggufcheck import GGUFFacts, inspect_gguf
from meshd.types import Chunk, ModelInfo, ModelLoad, ModelState

# Scratch a llama.cpp context needs beyond weights and KV cache, before it is measured.
SLOT_OVERHEAD_BYTES = 16 * 2**20


@dataclass(frozen=True)
class SlotOptions:
    """How each slot of a model is built."""

    count: int
    context: int
    threads: int
    batch: int
    use_mmap: bool


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Hand fn to the event loop from a worker thread; a closed loop has no one to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


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


class ModelHost:
    """Owns one model's slots; the Engine decides when it loads and unloads."""

    def __init__(
        self,
        name: str,
        path: Path,
        options: SlotOptions,
        *,
        pinned: bool,
        max_queue: int,
        digest: str = "",
    ) -> None:
        self.name, self.path, self.options = name, path, options
        self.digest = digest  # set for models that live in the store
        self.pinned, self.max_queue = pinned, max_queue
        self.state = ModelState.COLD
        self.error = ""
        self.facts: GGUFFacts | None = None
        self.slots: list[Slot] = []
        self.free: asyncio.Queue[Slot] = asyncio.Queue()
        self.inflight = 0
        self.last_used = 0.0
        self.lease_until = 0.0
        self.memory_bytes = 0
        self.load_seconds: float | None = None
        self.service_times: deque[float] = deque(maxlen=32)
        self.loading: asyncio.Task[None] | None = None

    # -- facts and memory ------------------------------------------------------------------

    def inspect(self) -> GGUFFacts:
        """Validate the file (again); a bad file marks the model FAILED and raises."""
        try:
            self.facts = inspect_gguf(self.path)
        except InvalidModelFile as exc:
            self.state, self.error = ModelState.FAILED, str(exc)
            raise
        if self.state is ModelState.FAILED:
            self.state, self.error = ModelState.COLD, ""
        return self.facts

    def projected_memory(self) -> int:
        """Bytes the model will hold once loaded: weights once, KV cache and scratch per slot."""
        if self.memory_bytes:
            return self.memory_bytes
        if self.facts is None:
            return 0
        per_slot = self.facts.kv_cache_bytes(self.options.context) + SLOT_OVERHEAD_BYTES
        return self.facts.file_size + self.options.count * per_slot

    def resident(self, keep_alive: float) -> Resident:
        """How the eviction policy sees this model."""
        return Resident(
            self.name,
            self.projected_memory(),
            self.pinned,
            self.busy,
            self.last_used,
            self.warm_until(keep_alive),
        )

    @property
    def busy(self) -> bool:
        return self.inflight > 0 or self.active > 0

    @property
    def active(self) -> int:
        return len(self.slots) - self.free.qsize() if self.state is ModelState.WARM else 0

    def warm_until(self, keep_alive: float) -> float:
        return warm_until(self.last_used, keep_alive, self.lease_until, self.pinned)

    # -- load and unload (called by the Engine, one at a time) -----------------------------

    async def load(self) -> None:
        """Build every slot on its own thread; the model is WARM when this returns."""
        self.state, self.error = ModelState.LOADING, ""
        started, rss_before = time.monotonic(), psutil.Process().memory_info().rss
        slots = [Slot(f"meshd-{self.name}-{i}") for i in range(self.options.count)]
        opts = self.options
        try:
            for slot in slots:  # one at a time: the first maps the file, the rest share it
                await asyncio.wrap_future(
                    slot.submit(
                        slot.load,
                        self.path,
                        context=opts.context,
                        threads=opts.threads,
                        batch=opts.batch,
                        use_mmap=opts.use_mmap,
                    )
                )
        except Exception as exc:
            await asyncio.gather(*(asyncio.to_thread(s.close) for s in slots))
            self.state, self.error = ModelState.FAILED, f"llama.cpp could not load it: {exc}"
            raise ModelUnavailable(f"model {self.name!r}: {self.error}") from exc
        self.slots, self.free = slots, asyncio.Queue()
        for slot in slots:
            self.free.put_nowait(slot)
        self.load_seconds = time.monotonic() - started
        measured = psutil.Process().memory_info().rss - rss_before
        self.memory_bytes = max(measured, self.facts.file_size if self.facts else 0)
        self.last_used = time.time()
        self.state = ModelState.WARM

    async def unload(self) -> None:
        """Free every slot; the model goes back to COLD."""
        slots, self.slots, self.free = self.slots, [], asyncio.Queue()
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in slots))
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

    async def stream(self, job: Job) -> AsyncGenerator[Chunk, None]:
        """Run job on the next free slot and yield its chunks; cancels the job on exit."""
        slot = await self.free.get()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        started = time.monotonic()

        def work() -> None:
            try:
                slot.run(job, lambda chunk: _post(loop, chunks.put_nowait, chunk))
            except BaseException as exc:
                _post(loop, chunks.put_nowait, exc)

        future = slot.submit(work)
        future.add_done_callback(lambda _: _post(loop, self._release, slot, started))
        try:
            while True:
                item = _merge_backlog(await chunks.get(), chunks)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancel.set()

    def _release(self, slot: Slot, started: float) -> None:
        self.service_times.append(time.monotonic() - started)
        self.last_used = time.time()
        if slot in self.slots:
            self.free.put_nowait(slot)

    # -- reporting -------------------------------------------------------------------------

    def load_snapshot(self) -> ModelLoad:
        """Live load: active and queued requests, slots, recent service time."""
        times = self.service_times
        mean = sum(times) / len(times) if times else 0.0
        active = self.active
        return ModelLoad(
            self.name, active, max(self.inflight - active, 0), self.options.count, mean
        )

    def info(self, keep_alive: float) -> ModelInfo:
        """What ListModels reports for this model."""
        facts = self.facts
        until = self.warm_until(keep_alive) if self.state is ModelState.WARM else 0.0
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
        )
