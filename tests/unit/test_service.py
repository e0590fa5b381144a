"""The LaunchAgent and systemd unit, tested by parsing what is rendered; installed for real
only where a systemd user manager runs."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from meshd.errors import ConfigError
from meshd.fdlimit import MACOS_OPEN_MAX
from meshd.service import LABEL, render_plist, render_unit, service_file

MAC_HOME = Path("/Users/ann & bo/Library/Application Support/meshd")


def test_the_launch_agent_parses_with_the_right_keys_and_types() -> None:
    plist = plistlib.loads(render_plist(MAC_HOME, "/opt/py/bin/python3", "/usr/bin:/bin"))
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [
        "/opt/py/bin/python3",
        "-m",
        "meshd.cli",
        "serve",
        "--home",
        str(MAC_HOME),
    ]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert isinstance(plist["ThrottleInterval"], int)
    assert plist["EnvironmentVariables"] == {"MESHD_HOME": str(MAC_HOME), "PATH": "/usr/bin:/bin"}
    assert (
        plist["StandardOutPath"]
        == plist["StandardErrorPath"]
        == str(MAC_HOME / "logs" / "meshd.log")
    )
    assert plist["WorkingDirectory"] == str(MAC_HOME)
    # Above macOS's 256 for a LaunchAgent, within its OPEN_MAX.
    soft, hard = (plist[k]["NumberOfFiles"] for k in ("SoftResourceLimits", "HardResourceLimits"))
    assert 256 < soft <= hard <= MACOS_OPEN_MAX


def test_the_systemd_unit_runs_serve_in_the_foreground_and_restarts() -> None:
    home = Path("/home/ann/.local/share/meshd")
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(render_unit(home, "/usr/bin/python3").decode())
    service = unit["Service"]
    assert service["ExecStart"] == f"/usr/bin/python3 -m meshd.cli serve --home {home}"
    assert service["Environment"] == f"MESHD_HOME={home}"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "default.target"
    soft, hard = map(int, service["LimitNOFILE"].split(":"))
    assert 1024 < soft <= hard


def test_a_path_systemd_cannot_hold_is_refused() -> None:
    with pytest.raises(ConfigError, match="no spaces or quotes"):
        render_unit(Path("/home/ann/my models"), "/usr/bin/python3")


def test_where_each_platform_keeps_the_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    mac = service_file(tmp_path / "home", platform="darwin")
    assert mac.path == tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert mac.kind == "launchd"
    linux = service_file(tmp_path / "home", platform="linux")
    assert linux.path == tmp_path / "cfg" / "systemd" / "user" / "meshd.service"


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
