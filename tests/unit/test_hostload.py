"""meshd/hostload.py: when the host yields, on fake samples; and the real sampler once."""

from __future__ import annotations

import os

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
