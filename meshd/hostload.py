"""The host yields by itself: when its owner's own work needs the machine, the mesh goes
elsewhere first.

`yield_reason` is a pure decision over a sample of the host (CPU used by other processes,
memory pressure, battery); `HostSampler` takes that sample on Linux (PSI,
/proc/pressure/memory) and macOS (`kern.memorystatus_vm_pressure_level`, read in the process,
see meshd.macos). A sample that fails is logged (once a minute) and skipped: the watch never
ends on one bad reading. A yielding peer is the routing's last resort; under critical memory
pressure its idle models are unloaded at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshd.macos import memory_pressure_level
from meshd.tasks import Periodic

log = logging.getLogger("meshd.host")
NORMAL, WARN, CRITICAL = "normal", "warn", "critical"
WATCH_EVERY_S = 2.0
PSI = Path("/proc/pressure/memory")
PSI_WARN, PSI_CRITICAL = 10.0, 40.0  # % of the last 10 s some task stalled on memory


@dataclass(frozen=True)
class HostSample:
    """What the host is doing besides meshd."""

    others_cpu: float  # share of all cores used by other processes, 0..1
    memory_pressure: str  # NORMAL, WARN or CRITICAL
    on_battery: bool


@dataclass(frozen=True)
class YieldRules:
    """When to yield (from meshd.toml)."""

    busy_cpu: float = 0.75  # other processes use more than this share of the cores
    on_battery: bool = True


def yield_reason(sample: HostSample, rules: YieldRules) -> tuple[str, bool]:
    """Why this peer should yield ("" when it should not), and whether to unload idle models
    now (critical memory pressure)."""
    if sample.memory_pressure == CRITICAL:
        return "critical memory pressure", True
    if sample.memory_pressure == WARN:
        return "memory pressure", False
    if rules.on_battery and sample.on_battery:
        return "on battery", False
    if sample.others_cpu > rules.busy_cpu:
        return f"its owner's work uses over {100 * rules.busy_cpu:.0f}% of the CPU", False
    return "", False


def parse_psi(text: str) -> str:
    """Memory pressure from /proc/pressure/memory ("some avg10=12.34 ...")."""
    for line in text.splitlines():
        if line.startswith("some"):
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            avg10 = float(fields.get("avg10", 0.0))
            if avg10 >= PSI_CRITICAL:
                return CRITICAL
            return WARN if avg10 >= PSI_WARN else NORMAL
    return NORMAL


def parse_macos_pressure(level: str) -> str:
    """kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical."""
    return {"2": WARN, "4": CRITICAL}.get(level.strip(), NORMAL)


def memory_pressure(platform: str = sys.platform) -> str:
    if platform == "darwin":
        level = memory_pressure_level()
        return parse_macos_pressure(str(level)) if level is not None else NORMAL
    try:
        return parse_psi(PSI.read_text())
    except OSError:  # no PSI (older kernels, containers): fall back on available memory
        return CRITICAL if psutil.virtual_memory().percent > 97 else NORMAL


class HostSampler:
    """Samples the host between calls (CPU shares need two readings)."""

    def __init__(self, own_pid: int) -> None:
        self.own = psutil.Process(own_pid)
        self.own.cpu_percent()
        psutil.cpu_percent()
        self._mine: dict[int, psutil.Process] = {}

    def _own_cpu(self) -> float:
        """meshd's own CPU (the daemon and its runners) since the last call, % of one core."""
        total = self.own.cpu_percent()
        for child in self.own.children(recursive=True):
            known = self._mine.setdefault(child.pid, child)
            try:
                total += known.cpu_percent()
            except psutil.Error:
                self._mine.pop(child.pid, None)
        return total

    def sample(self) -> HostSample:
        cores = psutil.cpu_count() or 1
        everything = psutil.cpu_percent() / 100  # share of all cores
        mine = self._own_cpu() / 100 / cores
        battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
        return HostSample(
            others_cpu=max(everything - mine, 0.0),
            memory_pressure=memory_pressure(),
            on_battery=battery is not None and not battery.power_plugged,
        )


class HostWatch:
    """Samples the host every few seconds and tells the router whether to yield; unloads idle
    models under critical memory pressure."""

    def __init__(
        self,
        rules: YieldRules,
        report: Callable[[str], None],
        unload_idle: Callable[[], Awaitable[list[str]]],
        every: float = WATCH_EVERY_S,
        make_sampler: Callable[[int], HostSampler] = HostSampler,
    ) -> None:
        self.rules, self.report, self.unload_idle, self.every = rules, report, unload_idle, every
        self.make_sampler = make_sampler
        self.reason = ""
        self.own_pid = 0
        self._sampler: HostSampler | None = None
        self._loop = Periodic(
            "meshd-host-watch", self._step, every, log, 0.0, failing="cannot sample the host"
        )

    def start(self, own_pid: int) -> None:
        """Start watching (idempotent)."""
        self.own_pid = own_pid
        self._loop.start()

    async def _step(self) -> None:
        """One sample, acted on; a failing one (psutil, /proc or sysctl) is logged by the loop
        and the next is taken as usual."""
        if self._sampler is None:
            self._sampler = await asyncio.to_thread(self.make_sampler, self.own_pid)
        await self.apply(await asyncio.to_thread(self._sampler.sample))

    async def apply(self, sample: HostSample) -> None:
        """Act on one sample: report the reason (logging changes), unload if critical."""
        reason, unload = yield_reason(sample, self.rules)
        if reason != self.reason:
            if reason:
                log.info("yielding to this machine's owner: %s", reason)
            else:
                log.info("no longer yielding: the host is quiet again")
            self.reason = reason
            self.report(reason)
        if unload:
            names = await self.unload_idle()
            if names:
                log.warning("critical memory pressure: unloaded %s", ", ".join(names))

    async def close(self) -> None:
        await self._loop.close()
