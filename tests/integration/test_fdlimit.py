"""meshd/fdlimit.py: the open-file limit is raised at start, never lowered; the connection cap."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from meshd.fdlimit import connection_cap

RAISE = "from meshd.fdlimit import raise_open_file_limit; print(raise_open_file_limit())"


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
@pytest.mark.parametrize(("soft", "hard", "after"), [(256, 4096, 4096), (4096, 4096, 4096)])
def test_the_soft_limit_is_raised_to_the_hard_one(soft: int, hard: int, after: int) -> None:
    out = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", "--", sys.executable, "-c", RAISE],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == after


def test_connections_get_at_most_half_the_open_files() -> None:
    assert connection_cap(256, open_files=20_000) == 256
    assert connection_cap(256, open_files=256) == 128
    assert connection_cap(256, open_files=1) == 1
