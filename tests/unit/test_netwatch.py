"""meshd/netwatch.py: a change of this machine's addresses is seen and handed on once."""

from __future__ import annotations

import asyncio

from meshd.netwatch import AddressWatch


def test_a_change_is_handed_on_once_and_a_failed_read_changes_nothing() -> None:
    readings: list[list[str] | Exception] = [
        [],
        ["192.168.1.20"],
        ["192.168.1.20"],
        OSError("interface vanished while read"),
        ["192.168.1.31"],
    ]
    told: list[list[str]] = []

    def read() -> list[str]:
        reading = readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading

    async def changed(addresses: list[str]) -> None:
        told.append(addresses)

    async def scenario() -> list[bool]:
        watch = AddressWatch(read, changed, every=3600)
        watch.start([])  # the daemon started before the network
        try:
            return [await watch.check() for _ in range(5)]
        finally:
            await watch.close()

    assert asyncio.run(scenario()) == [False, True, False, False, True]
    assert told == [["192.168.1.20"], ["192.168.1.31"]]


def test_the_watch_reads_on_its_own_cadence() -> None:
    reads = 0

    async def scenario() -> list[str]:
        arrived = asyncio.Event()
        told: list[str] = []

        def read() -> list[str]:
            nonlocal reads
            reads += 1
            return ["10.0.0.2"] if reads >= 3 else []

        async def changed(addresses: list[str]) -> None:
            told.extend(addresses)
            arrived.set()

        watch = AddressWatch(read, changed, every=0.01)
        watch.start([])
        try:
            await asyncio.wait_for(arrived.wait(), timeout=60)
        finally:
            await watch.close()
        return told

    assert asyncio.run(scenario()) == ["10.0.0.2"]
    assert reads >= 3
