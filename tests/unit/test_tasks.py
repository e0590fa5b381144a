"""meshd.tasks.Periodic: the one background loop every component runs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshd.tasks import Periodic


def test_a_failing_step_is_logged_once_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[int] = []
    sixth = asyncio.Event()

    async def step() -> float | None:
        steps.append(len(steps))
        if len(steps) == 6:
            sixth.set()
        if len(steps) <= 3:
            raise OSError("no /proc today")
        return None

    async def scenario() -> None:
        loop = Periodic("test-loop", step, 0.0, logging.getLogger("test"), failing="cannot read")
        loop.start()
        loop.start()  # idempotent: still one task
        await asyncio.wait_for(sixth.wait(), 30)
        await loop.close()
        await loop.close()  # idempotent
        assert not loop.running

    with caplog.at_level(logging.WARNING, logger="test"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if "cannot read: no /proc today" in r.getMessage()]
    assert len(failures) == 1, "logged once a minute, not at every round"


def test_a_step_sets_the_wait_before_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # a fake clock: the wait is recorded, not slept
        waits.append(seconds)
        await real_sleep(0)

    async def scenario() -> None:
        loop = Periodic("test-loop", lambda: _returns(7.5), 2.0, logging.getLogger("test"), 0.5)
        monkeypatch.setattr(asyncio, "sleep", sleep)
        loop.start()
        while len(waits) < 3:
            await real_sleep(0)
        await loop.close()

    asyncio.run(scenario())
    assert waits[:3] == [0.5, 7.5, 7.5]


async def _returns(value: float) -> float:
    return value
