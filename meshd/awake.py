"""Keep the machine from idle sleep while it serves: a sleeping peer vanishes from routing.

On macOS `caffeinate -i -w PID` holds a power assertion against idle sleep for as long as the
daemon lives; on Linux `systemd-inhibit --what=idle` holds a logind inhibitor lock (where logind
runs). Only idle sleep: the display may sleep, and an owner who puts the machine to sleep on
purpose is obeyed. The helper process watches the daemon's pid, so a killed daemon never
leaves the machine awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable

from meshd.tasks import stop_task

log = logging.getLogger("meshd.awake")
POLICIES = ("always", "while-warm", "never")
CHECK_EVERY_S = 5.0
HELPERS = frozenset({"caffeinate", "systemd-inhibit"})  # what doctor looks for


def inhibit_command(platform: str, pid: int) -> list[str] | None:
    """The command that holds the machine awake while process pid lives, or None."""
    if platform == "darwin":
        return ["caffeinate", "-i", "-w", str(pid)]
    if platform.startswith("linux"):
        return [
            "systemd-inhibit",
            "--what=idle",
            "--who=meshd",
            "--why=serving warm models to the mesh",
            "--mode=block",
            "tail",
            f"--pid={pid}",
            "-f",
            "/dev/null",
        ]
    return None


def should_hold(policy: str, warm: bool) -> bool:
    """Whether to hold the machine awake now: always, only while warm, or never."""
    return policy == "always" or (policy == "while-warm" and warm)


class KeepAwake:
    """Holds (or releases) the inhibitor as the policy and the daemon's state say."""

    def __init__(self, policy: str, platform: str = sys.platform, pid: int | None = None) -> None:
        self.policy, self.platform = policy, platform
        self.pid = os.getpid() if pid is None else pid
        self.helper: asyncio.subprocess.Process | None = None
        self.failure = ""  # why it could not hold, once it tried
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self.helper is not None and self.helper.returncode is None

    def start(self, warm: Callable[[], bool]) -> None:
        """Follow the policy from now on (idempotent)."""
        if self._task is None and self.policy != "never":
            self._task = asyncio.create_task(self._run(warm), name="meshd-keep-awake")

    async def _run(self, warm: Callable[[], bool]) -> None:
        while True:
            if should_hold(self.policy, warm()):
                await self._hold()
            else:
                await self._release()
            await asyncio.sleep(CHECK_EVERY_S)

    async def _hold(self) -> None:
        if self.held or self.failure:
            return
        command = inhibit_command(self.platform, self.pid)
        if command is None or shutil.which(command[0]) is None:
            self.failure = f"{command[0] if command else 'no helper'} is not available here"
        else:
            self.helper = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            with contextlib.suppress(TimeoutError):  # a refusal (no logind) comes at once
                await asyncio.wait_for(self.helper.wait(), 0.5)
            if self.helper.returncode is not None:
                self.failure = await _why_it_ended(self.helper, command[0])
                self.helper = None
        if self.failure:
            log.warning("cannot keep this machine awake: %s", self.failure)
        else:
            log.info("keeping this machine from idle sleep (keep_awake = %s)", self.policy)

    async def _release(self) -> None:
        helper, self.helper = self.helper, None
        if helper is not None and helper.returncode is None:
            helper.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(helper.wait(), 2)
            log.info("letting this machine sleep again: nothing is warm")

    async def close(self) -> None:
        """Stop following the policy and let the machine sleep (idempotent)."""
        task, self._task = self._task, None
        await stop_task(task)
        await self._release()


async def _why_it_ended(helper: asyncio.subprocess.Process, name: str) -> str:
    error = (await helper.stderr.read()).decode(errors="replace") if helper.stderr else ""
    lines = error.strip().splitlines()
    return lines[-1] if lines else f"{name} exited with {helper.returncode}"
