"""meshd/fsutil.py: a flush that works on every file system a Mac may keep its models on."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from meshd import fsutil

F_FULLFSYNC = 51  # macOS's value; Linux answers EINVAL for it, as SMB or FAT do on a Mac


def test_full_fsync_falls_back_to_fsync_where_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", F_FULLFSYNC, raising=False)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    with (tmp_path / "f").open("wb") as handle:
        handle.write(b"x")
        with pytest.raises(OSError):
            fcntl.fcntl(handle.fileno(), F_FULLFSYNC)  # what the file system says here
        fsutil.fsync_file(handle.fileno(), platform="darwin")
        assert synced == [handle.fileno()], "fsync after the refusal, not an error"


def test_full_fsync_is_used_where_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int]] = []

    def fcntl_ok(fd: int, cmd: int) -> int:
        asked.append((fd, cmd))
        return 0

    monkeypatch.setattr(fcntl, "F_FULLFSYNC", F_FULLFSYNC, raising=False)
    monkeypatch.setattr(fsutil.fcntl, "fcntl", fcntl_ok)
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: pytest.fail("fsync after a full sync"))
    fsutil.fsync_file(7, platform="darwin")
    assert asked == [(7, F_FULLFSYNC)]
