"""One line of `meshd doctor`'s report: what a check saw and, when it fails, what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    outcome: Outcome
    detail: str
    fix: str = ""


NOT_MAC, NOT_LINUX = "not macOS", "not Linux"  # the detail of a check for another platform


def for_another_platform(check: Check) -> bool:
    """A check skipped because it is about another platform (listed by --json only)."""
    return check.outcome == "skip" and check.detail in (NOT_MAC, NOT_LINUX)
