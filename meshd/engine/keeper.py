"""Warm means resident: measure every model file's residency now and then, and read a leased or
pinned model's evicted pages back, never against the owner.

The OS reclaims an idle mapped model's pages first when the owner needs memory; the model is
still loaded, and the next request pays the page-ins. The keeper measures each file with
mincore (every few seconds, spending at most COST_SHARE of one core on it) and, for models a
lease or a pin holds warm, reads the missing parts back at a capped rate and the lowest I/O
priority. While the owner's machine is short of memory (`owner_needs_memory`) it reads
nothing, and stops a read under way: the OS took those pages because someone needed them.
A Warm on a paged-out model pages it in at full speed before it reports the model ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from meshd.engine.iopriority import background_io
from meshd.engine.model import ModelHost
from meshd.engine.residency import FileResidency, ReadRate, Residency, Restored
from meshd.errors import MeshdError
from meshd.tasks import Periodic
from meshd.types import ModelState

log = logging.getLogger("meshd.engine")

MEASURE_EVERY_S = 2.0
COST_SHARE = 0.001  # of one core, at most, spent measuring residency
KEEPER_BYTES_PER_S = 128 * 2**20  # the keeper's reads; a Warm's go as fast as the disk
# Missing more than this share of a held model's file (and MIN_MISSING) sets the keeper going.
RESTORE_ABOVE_SHARE = 0.01
MIN_MISSING = 256 * 1024


def needs_restore(residency: Residency | None) -> bool:
    """Whether enough of a file is out of memory to read back."""
    if residency is None:
        return False
    return residency.missing > max(RESTORE_ABOVE_SHARE * residency.size, MIN_MISSING)


def held_warm(host: ModelHost, now: float) -> bool:
    """A model the keeper keeps resident: loaded, and under a pin or a lease."""
    return host.state is ModelState.WARM and (host.pinned or host.lease_until > now)


class ResidencyKeeper:
    """Measures residency for the engine's models and keeps held ones resident."""

    def __init__(
        self,
        hosts: Callable[[], Iterable[ModelHost]],
        read_rate: ReadRate,
        every: float = MEASURE_EVERY_S,
    ) -> None:
        self.hosts, self.read_rate, self.every = hosts, read_rate, every
        # Whether the owner's machine is short of memory now (the node sets it to read the
        # memory pressure the host watch reads); while it is, nothing is read back.
        self.owner_needs_memory: Callable[[], bool] = lambda: False
        self.restores = 0  # page-ins the keeper (not a Warm) started
        self.checks = 0  # rounds of measuring done
        self.measure_seconds = 0.0  # CPU spent measuring, in all
        self._paging: dict[str, asyncio.Task[Restored]] = {}
        self._urgent: set[str] = set()  # models a Warm is paging in
        self._closed = False
        self._loop = Periodic("meshd-residency", self._step, every, log, 0.0)

    def start(self) -> None:
        """Measure and keep in the background (idempotent)."""
        self._closed = False
        self._loop.start()

    async def close(self) -> None:
        """Stop; a read under way ends at its next chunk."""
        self._closed = True
        await self._loop.close()
        for paging in list(self._paging.values()):
            await asyncio.gather(paging, return_exceptions=True)

    async def _step(self) -> float:
        """One round of measuring; the next waits long enough that measuring costs at most
        COST_SHARE of a core."""
        cost = await self.check()
        return max(self.every, cost / COST_SHARE)

    async def check(self) -> float:
        """Measure every model once and start page-ins for held models that need one; returns
        the CPU seconds measuring took."""
        cost = 0.0
        for host in list(self.hosts()):
            residency, seconds = await asyncio.to_thread(_timed_measure, host)
            cost += seconds
            if held_warm(host, time.time()) and needs_restore(residency):
                if self.owner_needs_memory():
                    log.debug("%s: paged out, left so: the owner needs the memory", host.name)
                elif host.name not in self._paging:
                    self.restores += 1
                    self._page_in_task(host)
        self.measure_seconds += cost
        self.checks += 1
        return cost

    async def page_in(self, host: ModelHost) -> bool:
        """Read host's evicted pages back now, at full speed (a keeper read under way gives
        way to it); returns whether any had to be read."""
        self._urgent.add(host.name)
        try:
            while (task := self._paging.get(host.name)) is not None:
                with contextlib.suppress(Exception):  # the keeper's read: logged where it failed
                    await asyncio.shield(task)
            if not needs_restore(await asyncio.to_thread(host.measure_residency)):
                return False
            done = await asyncio.shield(self._page_in_task(host, urgent=True))
        finally:
            self._urgent.discard(host.name)
        return done.read > 0

    def _page_in_task(self, host: ModelHost, urgent: bool = False) -> asyncio.Task[Restored]:
        task = asyncio.create_task(self._read_back(host, urgent), name=f"meshd-page-in-{host.name}")
        self._paging[host.name] = task
        task.add_done_callback(lambda _: self._paging.pop(host.name, None))
        return task

    async def _read_back(self, host: ModelHost, urgent: bool) -> Restored:
        """One restore: a Warm's at full speed; the keeper's capped, at background priority,
        stopping when the keeper closes, the owner needs memory or a Warm wants it faster."""

        def stop() -> bool:
            if urgent:
                return False
            return self._closed or self.owner_needs_memory() or host.name in self._urgent

        started = time.monotonic()
        try:
            done = await asyncio.to_thread(_restore, host, urgent, stop)
        except OSError as error:  # the file went away or cannot be read: nothing to keep
            log.warning("%s: cannot read its file back: %s", host.name, error)
            return Restored(0, 0.0, True)
        self.read_rate.add(done.read, done.reading_seconds)
        runner = host.runner
        if done.read and runner is not None and runner.alive:
            with contextlib.suppress(MeshdError, asyncio.TimeoutError):
                await runner.populate()  # into the runner's page table: no fault per page
        after = await asyncio.to_thread(host.measure_residency)
        log.info(
            "%s: read %d MiB of its file back in %.1f s%s (%s resident)",
            host.name,
            done.read // 2**20,
            time.monotonic() - started,
            ", stopped early" if done.stopped else "",
            f"{after.share:.0%}" if after is not None else "unknown",
        )
        return done


def _timed_measure(host: ModelHost) -> tuple[Residency | None, float]:
    started = time.thread_time()
    residency = host.measure_residency()
    return residency, time.thread_time() - started


def _restore(host: ModelHost, urgent: bool, stop: Callable[[], bool]) -> Restored:
    """Read host's missing pages back (blocking): urgent at full speed, else capped and at
    background I/O priority."""
    ranges = host.pages_used
    with FileResidency(host.path) as file:
        if urgent:
            return file.restore(0.0, stop, ranges=ranges)
        with background_io():
            return file.restore(KEEPER_BYTES_PER_S, stop, ranges=ranges)
