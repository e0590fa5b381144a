"""The model host of one peer: which models are resident, warming, evicting, and serving."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Coroutine
from pathlib import Path
from typing import Any

from meshd.chattemplates import ChatTemplate
from meshd.config import PinnedPrefix, Settings, with_machine_defaults
from meshd.engine.eviction import expired, plan_eviction
from meshd.engine.keeper import ResidencyKeeper
from meshd.engine.model import ModelHost, PinnedReport, SlotOptions
from meshd.engine.residency import ReadRate
from meshd.engine.runnerproc import RunnerOptions
from meshd.engine.runnersupply import RunnerSupply
from meshd.engine.validate import Limits, validate_request
from meshd.errors import (
    ConfigError,
    InsufficientMemory,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
)
from meshd.store import ModelStore
from meshd.tasks import Periodic
from meshd.telemetry import Telemetry
from meshd.types import (
    ASSUMED_READ_BYTES_PER_S,
    Chunk,
    GenerateRequest,
    ModelInfo,
    ModelState,
    PeerModel,
    Prefix,
    WarmRequest,
    WarmResult,
)

log = logging.getLogger("meshd.engine")
PREFIX_DIR = "prefixes"  # pinned prefixes' saved states, in the home

REAP_INTERVAL_S = 1.0


def prefix_key(host: ModelHost, pin: PinnedPrefix, context: int) -> str:
    """What a saved prefix state belongs to: this model file, context size, llama.cpp build
    and prefix text. A state with another key is ignored."""
    try:
        build = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        build = "unknown"
    identity = [host.digest or str(host.file_stamp()), context, build, pin.model, pin.text]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


class Engine:
    """Loads, warms, serves and evicts the models in Settings; all methods run on one loop."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        settings = with_machine_defaults(settings)  # a no-op for load_settings' settings
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.store = store
        self.keep_alive = settings.keep_alive
        self.memory_budget = settings.memory_budget
        self.limits = Limits(settings.max_tokens_cap, settings.max_prompt_bytes)
        self.options = SlotOptions(
            count=settings.slots,
            context=settings.context,
            threads=settings.threads,
            batch=settings.batch,
            use_mmap=settings.use_mmap,
            memory_limit=settings.runner_memory_limit,
            gpu_layers=settings.gpu_layers,
            lock_memory=settings.lock_memory,
        )
        self.supply = RunnerSupply(
            RunnerOptions(stall_timeout=settings.runner_stall_timeout), settings.spare_runner
        )
        self.read_rate = ReadRate()
        self.hosts = {
            spec.name: self._new_host(
                spec.name, spec.path, chat_template=spec.chat_template, lock=spec.lock_memory
            )
            for spec in settings.models
        }
        self.keeper = ResidencyKeeper(lambda: self.hosts.values(), self.read_rate)
        self._store_seen = -1
        self._retired: list[ModelHost] = []  # out of the store, still loaded
        self._load_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper = Periodic("meshd-reaper", self._reap_step, REAP_INTERVAL_S, log, 0.0)

    async def start(self) -> None:
        """Validate every model file, start the keep-alive reaper, warm the pinned models."""
        if self._reaper.running:
            return
        for host in self.hosts.values():
            with contextlib.suppress(InvalidModelFile):
                await asyncio.to_thread(host.inspect)
        await self.refresh()
        unknown = self.settings.pins - set(self.hosts)
        if unknown:
            raise ConfigError(f"pinned model(s) not configured: {', '.join(sorted(unknown))}")
        for pin in self.settings.prefixes:
            if pin.model not in self.hosts:
                have = ", ".join(sorted(self.hosts)) or "none"
                raise ConfigError(
                    f"[prefixes.{pin.name}] names model {pin.model!r}, which this peer does "
                    f"not serve (it has: {have})"
                )
        self._reaper.start()
        self.keeper.start()
        pinned = [h for h in self.hosts.values() if h.pinned and h.state is ModelState.COLD]
        for host in pinned:
            self._loading_task(host)
        if not pinned:
            self.supply.replenish()  # a load replenishes it otherwise

    async def close(self) -> None:
        """Stop background work and free every model. Idempotent."""
        await self._reaper.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.keeper.close()
        async with self._load_lock:
            everyone = [*self.hosts.values(), *self._retired]
            await asyncio.gather(*(h.unload() for h in everyone if h.loaded))
            for host in everyone:
                host.probe.close()
            self._retired.clear()
        await self.supply.close()

    def _new_host(
        self,
        name: str,
        path: Path,
        digest: str = "",
        chat_template: ChatTemplate | None = None,
        lock: bool | None = None,
    ) -> ModelHost:
        options = (
            self.options if lock is None else dataclasses.replace(self.options, lock_memory=lock)
        )
        return ModelHost(
            name,
            path,
            options,
            self.supply,
            pinned=name in self.settings.pins,
            max_queue=self.settings.max_queue,
            digest=digest,
            chat_template=chat_template,
            read_rate=self.read_rate,
        )

    async def refresh(self) -> None:
        """Pick up models pulled into, or removed from, the store since the last look."""
        if self.store is None or self.store.manifest_mtime() == self._store_seen:
            return
        self._store_seen = self.store.manifest_mtime()
        try:
            stored = {m.name: m for m in await asyncio.to_thread(self.store.models)}
        except InvalidModelFile as exc:
            log.error("%s", exc)
            return
        configured = set(self.settings.model_paths())
        for name, model in stored.items():
            host = self.hosts.get(name)
            if name not in configured and (host is None or host.digest != model.digest):
                if host is not None:
                    self._retire(host)
                host = self._new_host(name, self.store.blob_path(model.digest), model.digest)
                self.hosts[name] = host
                with contextlib.suppress(InvalidModelFile):
                    await asyncio.to_thread(host.inspect)
        for name, host in list(self.hosts.items()):
            if host.digest and name not in stored:
                self._retire(self.hosts.pop(name))

    def _retire(self, host: ModelHost) -> None:
        """A model that left the store: the reaper unloads it once its requests finish."""
        if host.loaded:
            self._retired.append(host)
        else:
            host.probe.close()

    # -- serving ---------------------------------------------------------------------------

    def host(self, name: str) -> ModelHost:
        """The model by name, or ModelNotFound listing what this peer has."""
        host = self.hosts.get(name)
        if host is None:
            have = ", ".join(sorted(self.hosts)) or "none"
            raise ModelNotFound(f"no model named {name!r} here (this peer has: {have})")
        return host

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Validate, admit, warm if needed, and stream the completion."""
        validate_request(request, self.limits)
        await self.refresh()
        host = self.host(request.model)
        host.last_request = time.time()
        with host.admit():
            start = "cold"
            if host.state is ModelState.WARM:
                start = "paged_out" if host.paged_out else "warm"
            self.telemetry.starts.labels(host.name, start).inc()
            await self.ensure_warm(host)
            waited = self.telemetry.queue.labels(host.name).observe
            async with contextlib.aclosing(host.stream(request, waited)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def warm(self, request: WarmRequest) -> WarmResult:
        """Start warming the model here (or wait for it) and hold it warm for at least the
        lease; with a prefix, then evaluate it into a slot's cache and hold it there for the
        lease. (Replicas and hops are the router's: see meshd.mesh.)"""
        name, lease, wait, prefix = request.model, request.lease, request.wait, request.prefix
        await self.refresh()
        host = self.host(name)
        prefill = self._prefill_request(name, prefix) if prefix else None
        if host.file_refused:  # fixed since? then it is warmed like any other
            with contextlib.suppress(InvalidModelFile):
                await asyncio.to_thread(host.inspect)
            if host.file_refused:
                raise ModelUnavailable(f"model {name!r} is unusable: {host.error}")
        host.forgive()  # asked for by name: a model given up on is tried again
        if prefill is not None:  # refused to the caller now when it cannot fit the context
            tokens = await host.count_tokens(prefill)
            if tokens is not None and tokens >= self.options.context:
                raise InvalidRequest(
                    f"the prefix is {tokens:,} tokens; a slot of {name!r} holds "
                    f"{self.options.context:,} (context)",
                    field="prefix",
                )
        now = time.time()
        host.lease_until = max(host.lease_until, now + lease)
        host.last_used = max(host.last_used, now)
        prefix_tokens = 0
        if host.state is ModelState.WARM:
            await asyncio.to_thread(host.measure_residency)
        paged_out = host.state is ModelState.WARM and host.paged_out
        if wait:
            await self.ensure_warm(host, for_warm=True)
            await self._page_in_if_evicted(host)
            if prefill is not None:
                last = await self._prefill(host, prefill, now + lease)
                prefix_tokens = last.prompt_tokens if last is not None else 0
        elif prefill is not None:
            self._background(self._warm_then_prefill(host, prefill, now + lease), f"prefix-{name}")
        elif host.state is not ModelState.WARM:
            self._loading_task(host, for_warm=True)
        elif paged_out:
            self._background(self._page_in_if_evicted(host), f"page-in-{name}")
        ready = host.state is ModelState.WARM and not (paged_out and not wait)
        state = ModelState.WARM if ready else ModelState.LOADING
        until = host.warm_until(self.keep_alive)
        ready_in = 0.0 if ready else self._ready_in(host)
        return WarmResult(name, state, ready_in, until, prefix_tokens=prefix_tokens)

    def _prefill_request(self, name: str, prefix: Prefix) -> GenerateRequest:
        request = GenerateRequest(
            name, prefix.prompt or None, prefix.messages, max_tokens=1, prefill_only=True
        )
        validate_request(request, self.limits)
        return request

    async def _warm_then_prefill(
        self, host: ModelHost, prefill: GenerateRequest, hold_until: float
    ) -> None:
        await self.ensure_warm(host, for_warm=True)
        await self._page_in_if_evicted(host)
        await self._prefill(host, prefill, hold_until)

    async def _page_in_if_evicted(self, host: ModelHost) -> None:
        """A Warm on a loaded model whose pages the OS took: read them back before it says the
        model is ready (measured now, not as the keeper last saw it)."""
        if host.state is ModelState.WARM:
            await self.keeper.page_in(host)

    async def _prefill(
        self,
        host: ModelHost,
        prefill: GenerateRequest,
        hold_until: float,
        saved: dict[str, str] | None = None,
    ) -> Chunk | None:
        """Evaluate a prefix into the slot that holds most of it; the last chunk says how
        many tokens it has and how many were there already."""
        last = None
        with host.admit():
            stream = host.stream(prefill, hold_until=hold_until, saved=saved)
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    last = chunk
        if last is not None:
            log.info(
                "%s: prefix of %d tokens warm (%d were cached)",
                host.name,
                last.prompt_tokens,
                last.cached_tokens,
            )
        return last

    async def ensure_warm(self, host: ModelHost, for_warm: bool = False) -> None:
        """Return once the model is WARM; concurrent callers share one load. A load for a warm
        (for_warm) evicts no model used within the keep-alive."""
        while host.state is not ModelState.WARM:
            await asyncio.shield(self._loading_task(host, for_warm))

    def _loading_task(self, host: ModelHost, for_warm: bool = False) -> asyncio.Task[None]:
        """The model's load in progress, started now if none is; a failure stays on the model."""
        if host.loading is None or host.loading.done():
            host.loading = self._background(self._load(host, for_warm), f"load-{host.name}")
        return host.loading

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task the engine keeps and cancels on close; its failure is logged, not lost."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("%s: %s", task.get_name(), task.exception())

    async def _load(self, host: ModelHost, for_warm: bool = False) -> None:
        async with self._load_lock:
            if host.state is ModelState.WARM:
                return
            host.check_retry()
            try:
                if host.digest and self.store is not None:
                    await asyncio.to_thread(self.store.checked_path, host.name)
                await asyncio.to_thread(host.inspect)
            except InvalidModelFile as exc:
                raise ModelUnavailable(f"model {host.name!r} is unusable: {exc}") from None
            need = host.projected_memory()
            others = [h for h in self.hosts.values() if h is not host and h.loaded]
            spare_after = time.time() - self.keep_alive if for_warm else math.inf
            residents = [h.resident(self.keep_alive) for h in others]
            victims = plan_eviction(residents, need, self.memory_budget, spare_after)
            if victims is None:
                raise InsufficientMemory(self._refusal(host, need, others, for_warm))
            for name in victims:
                await self.hosts[name].unload()
            await host.load()
        for pin in self.settings.prefixes:
            if pin.model == host.name:
                self._background(self._pin_prefix(host, pin), f"pin-{pin.name}")

    async def _pin_prefix(self, host: ModelHost, pin: PinnedPrefix) -> None:
        """Hold a pinned prefix in a slot for as long as the model is loaded: restored from its
        saved state when that belongs to this model file and text, else evaluated and saved."""
        started = time.monotonic()
        request = self._prefill_request(host.name, Prefix(pin.text))
        saved = {
            "path": str(self.settings.home / PREFIX_DIR / f"{pin.name}.state"),
            "key": prefix_key(host, pin, self.settings.context),
        }
        last = await self._prefill(host, request, math.inf, saved)
        if last is None:
            return
        restored = last.cached_tokens == last.prompt_tokens
        host.pinned_prefixes[pin.name] = PinnedReport(restored, time.monotonic() - started)
        log.info(
            "%s: pinned prefix %r (%d tokens) %s in %.0f ms",
            host.name,
            pin.name,
            last.prompt_tokens,
            "restored from disk" if restored else "evaluated and saved",
            1000 * host.pinned_prefixes[pin.name].seconds,
        )

    def _refusal(self, host: ModelHost, need: int, others: list[ModelHost], for_warm: bool) -> str:
        held = sum(h.projected_memory() for h in others if h.pinned or h.busy)
        mib = 2**20
        why = (
            f"model {host.name!r} needs ~{need // mib} MiB but the memory budget is "
            f"{self.memory_budget // mib} MiB ({held // mib} MiB held by busy or pinned models)"
        )
        if for_warm:
            spared = [h.name for h in others if h.last_request > time.time() - self.keep_alive]
            if spared:
                return (
                    f"{why}; a warm does not evict {', '.join(sorted(spared))}, used within the "
                    "keep-alive (a request would)"
                )
        return f"{why}; raise memory_budget or unpin a model"

    def _ready_in(self, host: ModelHost) -> float:
        """Seconds until host is ready: its page-in when loaded, else its last load's time, or
        its file read at this peer's measured rate before it loaded once."""
        if host.state is ModelState.WARM:
            return host.load_snapshot().page_in_seconds()
        if host.load_seconds is not None:
            return host.load_seconds
        rate = self.read_rate.bytes_per_second or ASSUMED_READ_BYTES_PER_S
        return host.projected_memory() / rate

    # -- keep-alive ------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Unload idle models whose keep-alive and lease ran out; returns their names."""
        async with self._load_lock:
            for host in [h for h in self._retired if not h.busy]:
                self._retired.remove(host)
                await host.unload()
                host.probe.close()
            loaded = [h.resident(self.keep_alive) for h in self.hosts.values() if h.loaded]
            names = expired(loaded, time.time())
            for name in names:
                await self.hosts[name].unload()
            return names

    async def unload_idle(self, idle_for: float = 0.0) -> list[str]:
        """Unload every loaded model no request is using (pins excepted) and none used for
        idle_for seconds: the host needs its memory. Returns their names."""
        async with self._load_lock:
            since = time.time() - idle_for
            idle = [
                h
                for h in self.hosts.values()
                if h.loaded and not h.busy and not h.pinned and h.last_used <= since
            ]
            for host in idle:
                await host.unload()
            return [h.name for h in idle]

    async def _reap_step(self) -> float:
        """One round: unload what expired, start failed pins again; returns the next wait (a
        short keep-alive is reaped more often)."""
        await self.reap()
        self._rewarm_pins()
        return min(REAP_INTERVAL_S, max(self.keep_alive / 4, 0.05))

    def _rewarm_pins(self) -> None:
        """A pinned model whose runner failed is started again, as its backoff allows."""
        for host in self.hosts.values():
            loading = host.loading is not None and not host.loading.done()
            idle = host.pinned and host.state is not ModelState.WARM and not loading
            if idle and host.may_start_now:
                self._loading_task(host)

    # -- reporting -------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every configured model, warm or cold."""
        return [h.info(self.keep_alive) for h in self.hosts.values()]

    def loads(self) -> list[PeerModel]:
        """Live load per model."""
        return [h.load_snapshot() for h in self.hosts.values()]

    def holds_warm(self) -> bool:
        """Whether a model is warm or loading here, or a lease asks for one."""
        now = time.time()
        return any(
            h.state in (ModelState.WARM, ModelState.LOADING) or h.lease_until > now
            for h in self.hosts.values()
        )

    def memory_in_models(self) -> int:
        """Bytes held by resident models."""
        return sum(h.projected_memory() for h in self.hosts.values() if h.loaded)
