"""lock_memory: what the OS allows (meshd.memlock) and what doctor says of it."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from meshd import doctor, memlock
from meshd.config import load_settings
from meshd.types import ModelInfo, ModelState

MIB = 2**20


def _limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    """A user (not root) with these locked-memory limits; returns the limits set."""
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(memlock.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(memlock.resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(memlock.resource, "setrlimit", lambda _, limits: set_to.append(limits))
    return set_to


def test_the_soft_limit_is_raised_to_the_hard_one_when_that_is_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raised = _limits(monkeypatch, 8 * MIB, resource.RLIM_INFINITY)
    assert memlock.lock_refusal(300 * MIB) == ""
    assert raised == [(resource.RLIM_INFINITY, resource.RLIM_INFINITY)]


def test_a_hard_limit_too_low_is_one_line_that_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _limits(monkeypatch, 8 * MIB, 8 * MIB)
    line = memlock.lock_refusal(300 * MIB)
    assert "lock 8 MiB" in line and "300 MiB" in line and "meshd doctor" in line
    assert "\n" not in line


def test_root_may_lock_any_amount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memlock.os, "geteuid", lambda: 0)
    assert memlock.lock_refusal(10**12) == ""


def test_the_advice_fits_the_platform() -> None:
    assert "LimitMEMLOCK" in memlock.how_to_raise("linux")
    assert "vm.user_wire_limit" in memlock.how_to_raise("darwin")


def _model(name: str, locked: bool) -> ModelInfo:
    return ModelInfo(
        name, f"/{name}.gguf", 300 * MIB, ModelState.WARM, False, 4, 400 * MIB, 0.0, 0.0,
        runner_pid=42, lock_memory=locked,
    )  # fmt: skip


def test_doctor_fails_a_model_lock_memory_asked_for_and_did_not_get(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {"lock_memory": True}, environ={})
    check = doctor._memory_lock(settings, [_model("a", True), _model("b", False)])
    assert check.outcome == "fail" and "b is not locked" in check.detail
    assert check.fix == memlock.how_to_raise()
    assert doctor._memory_lock(settings, [_model("a", True)]).outcome == "ok"


def test_doctor_skips_the_check_when_nothing_asks_for_a_lock(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {}, environ={})
    assert doctor._memory_lock(settings, [_model("a", False)]).outcome == "skip"
