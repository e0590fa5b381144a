"""Background tasks a component owns: started once, stopped and awaited once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from meshd.logthrottle import Throttle


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait for it to end (nothing to do for None)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Periodic:
    """A component's background loop: `step` now and then, in one task on the running loop
    that start() makes (once) and close() cancels and awaits. A step may return the seconds to
    wait before the next (None: `every`); the first waits `first_wait` (default: `every`). A
    step that raises is logged (at most once a minute) and the loop goes on: one bad round is
    never the end of a watch."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[float | None]],
        every: float,
        log: logging.Logger,
        first_wait: float | None = None,
        failing: str = "",
    ) -> None:
        self.name, self.step, self.every, self.log = name, step, every, log
        self.first_wait = every if first_wait is None else first_wait
        self.failing = failing or name  # what the log says when a step fails
        self._task: asyncio.Task[None] | None = None
        self._failures = Throttle()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start the loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop the loop and wait until it has (idempotent)."""
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        await asyncio.sleep(self.first_wait)
        while True:
            try:
                wait = await self.step()
            except Exception as error:
                self._failures.log(self.log, logging.WARNING, "step", "%s: %s", self.failing, error)
                wait = None
            await asyncio.sleep(self.every if wait is None else wait)
