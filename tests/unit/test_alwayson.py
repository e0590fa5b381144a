"""meshd/alwayson.py: doctor's always-on checks, on samples and in a fake root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshd import service
from meshd.alwayson import (
    lingering,
    log_size,
    open_file_limit,
    parse_pmset,
    sleep_assertion,
    sleep_settings,
    starts_at_boot,
)
from meshd.config import load_settings

PMSET_MINI = """System-wide power settings:
Currently in use:
 standby              0
 Sleep On Power Button 1
 womp                 1
 hibernatemode        0
 powernap             1
 networkoversleep     0
 disksleep            10
 sleep                0 (sleep prevented by caffeinate)
 ttyskeepawake        1
 displaysleep         10
 tcpkeepalive         1
"""
PMSET_LAPTOP_DEFAULTS = PMSET_MINI.replace(
    "womp                 1", "womp                 0"
).replace("sleep                0 (sleep prevented by caffeinate)", "sleep                1")


def test_pmset_samples() -> None:
    mini = parse_pmset(PMSET_MINI)
    assert mini.sleep_minutes == 0 and mini.wake_on_network is True
    laptop = parse_pmset(PMSET_LAPTOP_DEFAULTS)
    assert laptop.sleep_minutes == 1 and laptop.wake_on_network is False
    assert parse_pmset("").sleep_minutes is None


def test_sleep_settings(tmp_path: Path) -> None:
    never = load_settings(tmp_path, {"keep_awake": "never"}, environ={})
    always = load_settings(tmp_path, {}, environ={})
    assert sleep_settings(always, PMSET_MINI).outcome == "ok"
    warned = sleep_settings(never, PMSET_LAPTOP_DEFAULTS)
    assert warned.outcome == "warn" and "sleeps after 1 min" in warned.detail
    assert "Wake for network access is off" in warned.detail
    assert sleep_settings(always, None).outcome == "skip"


def test_starts_at_boot_and_linger_in_a_fake_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    root = tmp_path / "root"
    settings = load_settings(root / "home", {}, environ={})
    assert starts_at_boot(settings, root).outcome == "warn"
    unit = service.service_file(settings.home, "linux", False, root)
    unit.path.parent.mkdir(parents=True)
    unit.path.write_bytes(unit.content)
    at_login = starts_at_boot(settings, root)
    assert at_login.outcome == "warn" and "only at login" in at_login.detail
    assert lingering("linux", root).outcome == "warn"
    service.linger_file(root).parent.mkdir(parents=True)
    service.linger_file(root).touch()
    assert starts_at_boot(settings, root).outcome == "ok"
    assert lingering("linux", root).outcome == "ok"
    assert lingering("darwin", root).outcome == "skip"


def test_assertion_logs_and_open_files_of_a_process(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {}, environ={})
    me = os.getpid()  # this test process has no helper child: not held
    assert sleep_assertion(settings, me).outcome == "warn"
    assert sleep_assertion(settings, None).outcome == "skip"
    assert open_file_limit(me).outcome in ("ok", "warn")
    assert log_size(settings).outcome == "ok"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "service.log").write_bytes(b"x" * (11 * 2**20))
    assert log_size(settings).outcome == "warn"


def test_the_open_file_limit_the_daemon_recorded_is_read_on_any_platform() -> None:
    """psutil reads another process's limits only on Linux: the daemon writes its own."""
    assert open_file_limit(os.getpid(), recorded=256).outcome == "warn"
    assert open_file_limit(os.getpid(), recorded=8192).detail == "8192"
    assert open_file_limit(None, recorded=8192).outcome == "skip"
