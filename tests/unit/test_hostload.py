"""meshd/hostload.py: when the host yields, on fake samples; and the real sampler once."""

from __future__ import annotations

import logging
import os

import pytest

from meshd.hostload import (
    CRITICAL,
    NORMAL,
    WARN,
    HostSample,
    HostSampler,
    YieldRules,
    parse_macos_pressure,
    parse_psi,
    yield_reason,
)

RULES = YieldRules()


def sample(cpu: float = 0.1, pressure: str = NORMAL, battery: bool = False) -> HostSample:
    return HostSample(cpu, pressure, battery)


def test_yield_decisions() -> None:
    assert yield_reason(sample(), RULES) == ("", False)
    assert yield_reason(sample(pressure=CRITICAL), RULES) == ("critical memory pressure", True)
    assert yield_reason(sample(pressure=WARN), RULES) == ("memory pressure", False)
    assert yield_reason(sample(battery=True), RULES) == ("on battery", False)
    assert yield_reason(sample(battery=True), YieldRules(on_battery=False)) == ("", False)
    busy, evict = yield_reason(sample(cpu=0.9), RULES)
    assert busy == "its owner's work uses over 75% of the CPU" and not evict
    assert yield_reason(sample(cpu=0.75), RULES) == ("", False), "at the threshold: not yet"


def test_pressure_readings() -> None:
    assert parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00") == NORMAL
    assert parse_psi("some avg10=12.50 avg60=3.00 avg300=1.00 total=99") == WARN
    assert parse_psi("some avg10=55.00 avg60=3.00 avg300=1.00 total=99") == CRITICAL
    assert parse_psi("") == NORMAL
    assert [parse_macos_pressure(v) for v in ("1\n", "2\n", "4\n", "")] == [
        NORMAL,
        WARN,
        CRITICAL,
        NORMAL,
    ]


def test_the_real_sampler_reads_this_host() -> None:
    sampler = HostSampler(os.getpid())
    sum(i * i for i in range(300_000))  # a little of our own work, between readings
    found = sampler.sample()
    assert 0.0 <= found.others_cpu <= 1.0
    assert found.memory_pressure in (NORMAL, WARN, CRITICAL)
    assert isinstance(found.on_battery, bool)


def test_the_watch_reports_changes_and_unloads_under_critical_pressure() -> None:
    import asyncio

    from meshd.hostload import HostWatch

    reports: list[str] = []
    unloads: list[int] = []

    async def unload() -> list[str]:
        unloads.append(1)
        return ["m"]

    async def scenario() -> None:
        watch = HostWatch(RULES, reports.append, unload)
        await watch.apply(sample())
        await watch.apply(sample(cpu=0.9))
        await watch.apply(sample(cpu=0.95))  # still busy: no new report
        await watch.apply(sample(pressure=CRITICAL))
        await watch.apply(sample())

    asyncio.run(scenario())
    assert reports == [
        "its owner's work uses over 75% of the CPU",
        "critical memory pressure",
        "",
    ]
    assert unloads == [1]


def test_a_failed_sample_is_logged_once_and_the_watch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On macOS a sample once forked `sysctl`, and one failure ended the watch for good (and
    broke shutdown). Failures are now skipped: the next sample is taken as usual."""
    import asyncio

    from meshd.hostload import HostSampler, HostWatch

    samples = [OSError("sysctl: fork failed"), OSError("again"), sample(cpu=0.9)]

    class Flaky(HostSampler):
        def __init__(self, own_pid: int) -> None:
            pass

        def sample(self) -> HostSample:
            next_one = samples.pop(0) if samples else sample(cpu=0.9)
            if isinstance(next_one, Exception):
                raise next_one
            return next_one

    async def scenario() -> list[str]:
        reports: list[str] = []
        arrived = asyncio.Event()

        def report(reason: str) -> None:
            reports.append(reason)
            arrived.set()

        async def unload() -> list[str]:
            return []

        watch = HostWatch(RULES, report, unload, every=0.01, make_sampler=Flaky)
        watch.start(0)
        try:
            await asyncio.wait_for(arrived.wait(), timeout=60)
        finally:
            await watch.close()
        return reports

    with caplog.at_level(logging.WARNING, logger="meshd.host"):
        assert asyncio.run(scenario()) == ["its owner's work uses over 75% of the CPU"]
    failures = [r for r in caplog.records if "cannot sample the host" in r.getMessage()]
    assert len(failures) == 1, "logged once a minute, not at every sample"


def test_macos_pressure_is_read_in_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshd import hostload

    monkeypatch.setattr(hostload, "memory_pressure_level", lambda: 4)
    assert hostload.memory_pressure("darwin") == CRITICAL
    monkeypatch.setattr(hostload, "memory_pressure_level", lambda: None)  # no such sysctl
    assert hostload.memory_pressure("darwin") == NORMAL
