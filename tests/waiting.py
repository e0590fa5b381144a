"""Waiting for a condition in tests, with a deadline that fails the test clearly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def eventually(predicate: Callable[[], bool], timeout: float = 10.0, poll: float = 0.01) -> float:
    """Seconds until predicate() held; fails the test after timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(poll)
    return time.monotonic() - started
