"""meshd/awake.py: what holds the machine awake, when, and that it lets go."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest

from meshd import awake
from meshd.awake import KeepAwake, inhibit_command, should_hold


def test_the_command_per_platform_holds_idle_sleep_only_while_the_daemon_lives() -> None:
    assert inhibit_command("darwin", 42) == ["caffeinate", "-i", "-w", "42"]
    linux = inhibit_command("linux", 42)
    assert linux is not None and linux[0] == "systemd-inhibit"
    assert "--what=idle" in linux, "never blocks a sleep the owner asks for, nor the display"
    assert linux[-4:] == ["tail", "--pid=42", "-f", "/dev/null"]
    assert inhibit_command("win32", 42) is None


def test_the_policy() -> None:
    assert should_hold("always", warm=False)
    assert should_hold("while-warm", warm=True) and not should_hold("while-warm", warm=False)
    assert not should_hold("never", warm=True)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether condition() came true within timeout seconds (a slow process start included)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_while_warm_holds_and_lets_go_with_a_real_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for caffeinate or systemd-inhibit: a real process that holds until stopped.
    monkeypatch.setattr(
        awake,
        "inhibit_command",
        lambda platform, pid: [sys.executable, "-c", "import time; time.sleep(60)"],
    )
    monkeypatch.setattr(awake, "CHECK_EVERY_S", 0.05)

    async def scenario() -> list[bool]:
        warm = [True]
        keeper = KeepAwake("while-warm", platform="linux")
        keeper.start(lambda: warm[0])
        seen = []
        seen.append(await until(lambda: keeper.held))  # the helper process started
        helper = keeper.helper
        warm[0] = False
        seen.append(not await until(lambda: not keeper.held))
        # ... and the helper has exited (reaped a moment after the keeper lets it go).
        seen.append(await until(lambda: helper is not None and helper.returncode is not None))
        await keeper.close()
        return seen

    assert asyncio.run(scenario()) == [True, False, True]


def test_a_helper_that_refuses_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        awake,
        "inhibit_command",
        lambda platform, pid: [
            sys.executable,
            "-c",
            "import sys; sys.exit('Failed to inhibit: no logind')",
        ],
    )

    async def scenario() -> tuple[bool, str]:
        keeper = KeepAwake("always", platform="linux")
        await keeper._hold()
        await keeper._hold()  # no retry storm: it tried once
        await keeper.close()
        return keeper.held, keeper.failure

    assert asyncio.run(scenario()) == (False, "Failed to inhibit: no logind")
