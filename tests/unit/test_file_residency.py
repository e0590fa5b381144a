"""Residency measured by the real mincore on real files, and read back (engine.residency)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from meshd.engine.iopriority import background_io
from meshd.engine.residency import (
    PAGE,
    FileResidency,
    ReadRate,
    Residency,
    ResidencyProbe,
    drop_from_cache,
    page_cache_visible,
)

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="dropping a file from the page cache needs Linux's fadvise"
)
MIB = 2**20


def _file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.write(os.urandom(size))
        handle.flush()
        os.fsync(handle.fileno())  # dirty pages cannot be dropped
    return path


def _read(path: Path, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, length, offset)
    finally:
        os.close(fd)


@linux_only
def test_a_dropped_file_measures_out_and_a_read_part_measures_in(tmp_path: Path) -> None:
    path = _file(tmp_path / "weights.bin", 8 * MIB)
    drop_from_cache(path)
    with FileResidency(path) as file:
        assert file.measure().share < 0.05
        _read(path, 2 * MIB, 2 * MIB)
        measured = file.measure()
        assert 2 * MIB <= measured.resident < 4 * MIB  # readahead may add a little
        assert measured.size == 8 * MIB


@linux_only
def test_missing_runs_name_the_parts_not_in_memory(tmp_path: Path) -> None:
    path = _file(tmp_path / "weights.bin", 16 * MIB)
    drop_from_cache(path)
    _read(path, 4 * MIB, 4 * MIB)
    with FileResidency(path) as file:
        runs = file.missing_runs()
    covered = sum(length for _, length in runs)
    assert runs[0][0] == 0 and runs[-1][0] + runs[-1][1] == 16 * MIB
    assert 8 * MIB <= covered <= 12 * MIB  # the read part (and maybe its readahead) is not
    for offset, _ in runs:
        assert offset % PAGE == 0


@linux_only
def test_restore_reads_every_missing_page_back(tmp_path: Path) -> None:
    path = _file(tmp_path / "weights.bin", 8 * MIB + 123)  # a partial last page
    drop_from_cache(path)
    with FileResidency(path) as file:
        restored = file.restore()
        assert restored.read >= 7 * MIB and not restored.stopped
        assert file.measure() == Residency(8 * MIB + 123, 8 * MIB + 123)
        assert file.restore().read == 0  # nothing left to read


@linux_only
def test_restore_stops_when_told_and_keeps_to_its_rate(tmp_path: Path) -> None:
    path = _file(tmp_path / "weights.bin", 4 * MIB)
    drop_from_cache(path)
    with FileResidency(path) as file:
        stopped = file.restore(stop=lambda: True)
        assert stopped.stopped and stopped.read == 0
        assert file.measure().share < 0.05
        now = [0.0]
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds

        done = file.restore(rate=MIB, clock=lambda: now[0], sleep=sleep)
    assert done.read == 4 * MIB
    assert sum(slept) == pytest.approx(4.0)  # 4 MiB at 1 MiB/s on the fake clock


def test_an_empty_file_is_wholly_resident(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with FileResidency(path) as file:
        assert file.measure().share == 1.0 and file.missing_runs() == []


@linux_only
def test_the_probe_follows_a_replaced_file_and_answers_none_when_it_is_gone(
    tmp_path: Path,
) -> None:
    path = _file(tmp_path / "weights.bin", 2 * MIB)
    probe = ResidencyProbe(path)
    _read(path, 0, 2 * MIB)
    first = probe.measure()
    assert first is not None and first.size == 2 * MIB and first.share == 1.0
    _file(tmp_path / "new.bin", 4 * MIB).replace(path)
    drop_from_cache(path)
    second = probe.measure()
    assert second is not None and second.size == 4 * MIB and second.share < 0.05
    path.unlink()
    assert probe.measure() is None
    probe.close()


def test_mincore_is_trusted_only_where_linux_answers_it_truthfully(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    assert page_cache_visible(path, platform="darwin")
    assert page_cache_visible(path, platform="linux")  # our own file (or root)
    assert not page_cache_visible(tmp_path / "missing", platform="linux") or os.geteuid() == 0


def test_the_read_rate_is_the_median_of_large_enough_reads() -> None:
    rate = ReadRate()
    assert rate.bytes_per_second == 0.0
    rate.add(MIB, 0.001)  # too small to say anything about the disk
    assert rate.bytes_per_second == 0.0
    rate.add(100 * MIB, 1.0)
    rate.add(100 * MIB, 0.5)
    rate.add(100 * MIB, 0.25)
    assert rate.bytes_per_second == 200 * MIB


def test_background_io_is_taken_and_given_back_on_linux() -> None:
    with background_io() as taken:
        if sys.platform == "linux":
            assert taken
    with background_io():
        pass  # twice in a row: the first gave the priority back
