"""The LaunchAgent and systemd unit, tested by parsing what is rendered; installed for real
only where a systemd user manager runs."""

from __future__ import annotations

import configparser
import dataclasses
import getpass
import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd import service
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
        "--log-to",
        "file",
    ]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert isinstance(plist["ThrottleInterval"], int)
    assert plist["EnvironmentVariables"] == {"MESHD_HOME": str(MAC_HOME), "PATH": "/usr/bin:/bin"}
    assert (
        plist["StandardOutPath"]
        == plist["StandardErrorPath"]
        == str(MAC_HOME / "logs" / "service.log")
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
    assert (
        service["ExecStart"] == f"/usr/bin/python3 -m meshd.cli serve --home {home} --log-to file"
    )
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
    assert mac.kind == "launch-agent" and not mac.at_boot
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


def test_the_launch_daemon_runs_as_the_user_from_boot() -> None:
    plist = plistlib.loads(
        render_plist(MAC_HOME, "/opt/py/bin/python3", "/usr/bin:/bin", user="ann", group="staff")
    )
    assert plist["Label"] == service.DAEMON_LABEL
    assert plist["UserName"] == "ann" and plist["GroupName"] == "staff"
    assert plist["ProgramArguments"][-2:] == ["--log-to", "file"], "the rotating log, not stdout"
    assert plist["StandardErrorPath"] == str(MAC_HOME / "logs" / "service.log")
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    agent = plistlib.loads(render_plist(MAC_HOME, "/opt/py/bin/python3", "/usr/bin:/bin"))
    assert "UserName" not in agent and agent["ProgramArguments"][-2:] == ["--log-to", "file"]


def test_the_unit_logs_to_the_rotating_file() -> None:
    unit = render_unit(Path("/home/ann/.local/share/meshd"), "/usr/bin/python3").decode()
    assert "serve --home /home/ann/.local/share/meshd --log-to file" in unit


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


class Recorder:
    """The service manager commands install and uninstall would run, in a fake root."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def __call__(self, args: object) -> None:
        call = list(args)  # type: ignore[call-overload]
        self.calls.append(call)
        linger = service.linger_file(self.root)
        if call[:2] == ["loginctl", "enable-linger"]:
            linger.parent.mkdir(parents=True, exist_ok=True)
            linger.touch()
        if call[:2] == ["loginctl", "disable-linger"]:
            linger.unlink(missing_ok=True)


def _fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Recorder]:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    root, home = tmp_path / "root", tmp_path / "root" / "meshd-home"
    return root, home, Recorder(root)


def test_linux_switches_between_login_and_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, run = _fake_root(tmp_path, monkeypatch)
    at_boot = service.install(home, at_boot=True, platform="linux", root=root, run=run)
    assert at_boot.path.exists() and at_boot.path.is_relative_to(root)
    assert ["loginctl", "enable-linger", getpass.getuser()] in run.calls
    assert ["systemctl", "--user", "enable", "--now", "meshd.service"] in run.calls
    found = service.installed(home, platform="linux", root=root)
    assert found is not None and found.at_boot
    at_login = service.install(home, at_boot=False, platform="linux", root=root, run=run)
    assert not at_login.at_boot and run.calls[-1] == [
        "loginctl",
        "disable-linger",
        getpass.getuser(),
    ]
    assert not service.linger_file(root).exists()
    service.linger_file(root).parent.mkdir(parents=True, exist_ok=True)
    service.linger_file(root).touch()  # the user lingers for reasons of their own
    service.install(home, at_boot=True, platform="linux", root=root, run=run)
    removed = service.uninstall(home, platform="linux", root=root, run=run)
    assert [r.path for r in removed] == [at_boot.path] and not at_boot.path.exists()
    assert service.linger_file(root).exists(), "meshd turns off only what it turned on"
    assert service.installed(home, platform="linux", root=root) is None


def test_macos_switches_between_agent_and_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, run = _fake_root(tmp_path, monkeypatch)
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)  # an administrator, not root
    agent = service.install(home, at_boot=False, platform="darwin", root=root, run=run)
    assert agent.kind == "launch-agent" and agent.path.exists()
    assert ["launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent.path)] in run.calls
    daemon = service.install(home, at_boot=True, platform="darwin", root=root, run=run)
    assert daemon.path == root / "Library" / "LaunchDaemons" / "com.meshd.daemon.plist"
    assert not agent.path.exists(), "installing one removes the other"
    sudo = [c for c in run.calls if c[0] == "sudo"]
    assert sudo[0][:2] == ["sudo", "install"] and sudo[0][-1] == str(daemon.path)
    assert ["sudo", "launchctl", "bootstrap", "system", str(daemon.path)] in run.calls
    daemon.path.parent.mkdir(parents=True, exist_ok=True)
    daemon.path.write_bytes(daemon.content)  # what sudo install would have written
    found = service.installed(home, platform="darwin", root=root)
    assert found is not None and found.kind == "launch-daemon"
    service.uninstall(home, platform="darwin", root=root, run=run)
    assert ["sudo", "rm", "-f", str(daemon.path)] in run.calls


def test_a_refused_install_leaves_no_unit_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, _ = _fake_root(tmp_path, monkeypatch)

    def no_user_manager(args: object) -> None:
        raise ConfigError("systemctl --user daemon-reload: Failed to connect to bus")

    with pytest.raises(ConfigError, match="Failed to connect to bus"):
        service.install(home, at_boot=True, platform="linux", root=root, run=no_user_manager)
    assert service.installed(home, platform="linux", root=root) is None


def test_launchd_lets_the_daemon_drain_and_runs_it_at_full_speed() -> None:
    """launchd kills a job a few seconds after SIGTERM unless ExitTimeOut says otherwise (the daemon
    drains for drain_seconds), and throttles a Standard job's CPU and I/O; the runners nice
    themselves, so the daemon need not be throttled too."""
    from meshd.config import Settings

    drain = next(f.default for f in dataclasses.fields(Settings) if f.name == "drain_seconds")
    unit = render_unit(Path("/home/ann/.local/share/meshd"), "/x/python").decode()
    unit_stop = re.search(r"TimeoutStopSec=(\d+)", unit)
    assert unit_stop is not None
    for user in ("", "ann"):
        plist = plistlib.loads(
            render_plist(MAC_HOME, "/opt/py/bin/python3", "/usr/bin:/bin", user, "staff")
        )
        assert plist["ProcessType"] == "Interactive"
        assert plist["ExitTimeOut"] > drain + 10  # the drain, and the runners' exit after it
        assert plist["ExitTimeOut"] == int(unit_stop.group(1)), "the same grace under systemd"
