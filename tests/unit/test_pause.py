"""meshd/pause.py: the owner's pause and quiet hours, with a fake clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from meshd.errors import ConfigError
from meshd.pause import (
    PauseState,
    QuietHours,
    parse_quiet_hours,
    pause,
    paused_why,
    read_pause,
    resume,
)

NIGHT = dt.datetime(2026, 11, 30, 23, 30)
NOON = dt.datetime(2026, 11, 30, 12, 0)


def test_quiet_hours_cross_midnight() -> None:
    quiet = parse_quiet_hours("23:00-07:00")
    assert quiet == QuietHours(23 * 60, 7 * 60)
    assert 23 * 60 + 30 in quiet and 6 * 60 + 59 in quiet
    assert 7 * 60 not in quiet and 12 * 60 not in quiet
    day = parse_quiet_hours("09:00-17:30")
    assert day is not None and 9 * 60 in day and 17 * 60 + 30 not in day
    assert parse_quiet_hours("") is None
    for bad in ("23-7", "25:00-07:00", "23:00-07:60", "evenings"):
        with pytest.raises(ConfigError):
            parse_quiet_hours(bad)


def test_why_a_peer_is_paused() -> None:
    quiet = parse_quiet_hours("23:00-07:00")
    assert paused_why(None, True, None, now=100.0, local=NOON) == "paused by its owner"
    assert paused_why(200.0, True, None, now=100.0, local=NOON).startswith(
        "paused by its owner until"
    )
    assert paused_why(200.0, True, None, now=200.0, local=NOON) == "", "a pause for a while ends"
    assert paused_why(None, False, quiet, now=100.0, local=NIGHT) == "quiet hours"
    assert paused_why(None, False, quiet, now=100.0, local=NOON) == ""


def test_a_pause_is_a_file_that_outlives_the_daemon(tmp_path: Path) -> None:
    assert read_pause(tmp_path) == (False, None)
    until = pause(tmp_path, 3600)
    assert until is not None and read_pause(tmp_path) == (True, until)
    assert PauseState(tmp_path, "").why().startswith("paused by its owner until")
    assert oct((tmp_path / "paused.json").stat().st_mode & 0o777) == "0o600"
    assert resume(tmp_path) and not resume(tmp_path)
    assert PauseState(tmp_path, "").why() == ""
    (tmp_path / "paused.json").write_text("{damaged")
    assert read_pause(tmp_path) == (True, None), "the owner asked for a pause"


@pytest.mark.parametrize("seconds", [86400.0 * 999999999, float("inf"), float("nan"), 1e308])
def test_a_pause_too_long_to_be_a_date_is_until_resumed(tmp_path: Path, seconds: float) -> None:
    assert pause(tmp_path, seconds) is None
    assert read_pause(tmp_path) == (True, None)
    assert PauseState(tmp_path, "").why() == "paused by its owner"


@pytest.mark.parametrize("until", ["1e999", "-1e999", "NaN", "true", "1e300", "[1]"])
def test_a_pause_file_with_an_impossible_end_is_a_pause_until_resumed(
    tmp_path: Path, until: str
) -> None:
    (tmp_path / "paused.json").write_text(f'{{"until": {until}}}')
    assert read_pause(tmp_path) == (True, None)
    assert PauseState(tmp_path, "").why() == "paused by its owner"


def test_a_pause_file_that_is_not_a_small_regular_file_is_never_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "paused.json").symlink_to(tmp_path / "fifo")  # reading it would block
    assert read_pause(tmp_path) == (True, None)
    (tmp_path / "paused.json").unlink()
    (tmp_path / "paused.json").write_text('{"until": null}' + " " * 5000)
    assert read_pause(tmp_path) == (True, None)
