"""Where runner processes come from: one spare is started ahead of need, so that loading a model
does not also wait for a Python interpreter to start and import llama.cpp (~0.3 s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meshd.engine.runnerproc import RunnerOptions, RunnerProcess

log = logging.getLogger("meshd.runner")


class RunnerSupply:
    """Hands out started runners; keeps one spare when `keep_spare`. Runs on the daemon's loop."""

    def __init__(self, options: RunnerOptions, keep_spare: bool) -> None:
        self.options, self.keep_spare = options, keep_spare
        self.spare: RunnerProcess | None = None
        self._spawning: asyncio.Task[None] | None = None
        self._closed = False

    async def take(self, label: str) -> RunnerProcess:
        """A started runner for one model: the spare if one is ready, else a new one."""
        if self._spawning is not None and not self._spawning.done():
            await asyncio.shield(self._spawning)  # the spare is almost there: cheaper to wait
        spare, self.spare = self.spare, None
        if spare is not None and spare.alive:
            spare.label = label
            return spare
        if spare is not None:
            await spare.close()
        runner = RunnerProcess(self.options, label)
        await runner.spawn()
        return runner

    def replenish(self) -> None:
        """Start a new spare in the background, if one is wanted and none is there."""
        if not self.keep_spare or self._closed or self.spare is not None:
            return
        if self._spawning is None or self._spawning.done():
            self._spawning = asyncio.create_task(self._spawn_spare(), name="spare-runner")

    async def _spawn_spare(self) -> None:
        runner = RunnerProcess(self.options)
        try:
            await runner.spawn()
        except Exception as exc:  # no spare: the next load starts its own runner
            log.warning("could not start a spare runner: %s", exc)
            return
        if self._closed:
            await runner.close()
        else:
            self.spare = runner

    async def close(self) -> None:
        """Stop the spare. Idempotent."""
        self._closed = True
        if self._spawning is not None:
            with contextlib.suppress(Exception):
                await self._spawning
        spare, self.spare = self.spare, None
        if spare is not None:
            await spare.close()
