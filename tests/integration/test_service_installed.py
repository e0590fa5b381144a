"""The systemd unit as systemd itself sees it: verified by systemd-analyze, and installed for
real only where a systemd user manager runs and the test is asked for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.service import render_unit


def _systemd_user_reason() -> str | None:
    # A real install writes the user's own ~/.config/systemd/user/meshd.service (systemd reads
    # nothing else), so it runs only when asked for, on a machine meant for it.
    if os.environ.get("MESHD_TEST_SYSTEMD") != "1":
        return "installs the real user service: set MESHD_TEST_SYSTEMD=1 to run it"
    if shutil.which("systemctl") is None:
        return "no systemctl on this machine"
    probe = subprocess.run(
        ["systemctl", "--user", "is-system-running"], capture_output=True, text=True
    )
    if probe.stdout.strip() not in ("running", "degraded"):
        return f"no systemd user manager here ({(probe.stdout or probe.stderr).strip()})"
    return None


SYSTEMD = _systemd_user_reason()


@pytest.mark.skipif(SYSTEMD is not None, reason=SYSTEMD or "")
def test_install_and_uninstall_for_real(tmp_path: Path) -> None:
    from meshd.service import install, installed, uninstall

    home = tmp_path / "home"
    try:
        install(home)
        assert installed(home)
    finally:
        uninstall(home)
    assert not installed(home)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "meshd.service"
    unit.write_bytes(render_unit(tmp_path / "home", sys.executable))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in done.stderr.splitlines() if "meshd.service" in line and "Unknown" in line
    ]
    assert problems == [], done.stderr
