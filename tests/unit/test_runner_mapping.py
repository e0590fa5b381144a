"""The runner's view of its model file's mapping (meshd.runner.mapping), and what the daemon
accepts of it (meshd.engine.runnerproc)."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

from meshd.engine.runnerproc import MAX_USED_RANGES, _ranges
from meshd.runner.mapping import PAGE, merge, pages_used


def test_runs_that_touch_are_merged() -> None:
    assert merge([(0, 10), (10, 5), (20, 5)], 10) == [(0, 15), (20, 5)]
    assert merge([(0, 10), (5, 20)], 10) == [(0, 25)]


def test_too_many_runs_are_bridged_across_the_smallest_gaps() -> None:
    runs = [(0, 1), (2, 1), (100, 1), (103, 1), (1000, 1)]  # gaps 1, 96, 2, 896
    assert merge(runs, 3) == [(0, 3), (100, 4), (1000, 1)]
    assert len(merge([(i * 10, 1) for i in range(100)], 7)) <= 7


@pytest.mark.skipif(sys.platform != "linux", reason="pages in use are read from Linux's pagemap")
def test_pages_used_are_the_ones_the_token_reads(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(128 * PAGE))
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        touched = [3, 4, 5, 40]

        def one_token() -> None:
            for page in touched:
                mapped[page * PAGE]

        for page in range(128):  # all of it touched before: the runner lets go first
            mapped[page * PAGE]
        used = pages_used(path, one_token)
        mapped.close()
    assert used is not None

    def covered(page: int) -> bool:
        return any(at <= page * PAGE < at + length for at, length in used)

    assert all(covered(page) for page in touched)
    # A fault maps its neighbours too (fault-around: 16 pages), never the far rest.
    assert sum(length for _, length in used) <= 2 * 16 * PAGE
    assert not any(covered(page) for page in range(80, 128))


def test_a_file_nobody_maps_has_no_pages_in_use(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    assert pages_used(path, lambda: None) in ([], None)


def test_the_daemon_takes_only_well_formed_ranges_from_a_runner() -> None:
    assert _ranges([[0, 4096], [8192, 4096]]) == ((0, 4096), (8192, 4096))
    assert _ranges(None) is None
    assert _ranges([[0, -1]]) is None
    assert _ranges([[0, True]]) is None
    assert _ranges([[0, 1, 2]]) is None
    assert _ranges([["0", 1]]) is None
    assert _ranges([[0, 1]] * (MAX_USED_RANGES + 1)) is None
