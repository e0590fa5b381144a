"""The LaunchAgent and systemd unit, tested by parsing what is rendered (installing them for
real, and systemd-analyze, are in tests/integration/test_service_installed.py)."""

from __future__ import annotations

import configparser
import dataclasses
import getpass
import os
import plistlib
import re
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
    assert plist["EnvironmentVariables"] == {
        "MESHD_HOME": str(MAC_HOME),
        "PATH": "/usr/bin:/bin",
        "MESHD_SERVICE": "launch-agent",  # the daemon knows what may block its LAN traffic
    }
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
    assert service["Environment"] == f"MESHD_HOME={home} MESHD_SERVICE=systemd-user"
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


class Recorder:
    """The service manager commands install and uninstall would run, in a fake root. As
    launchctl it keeps what was bootstrapped loaded, and keeps a booted-out job loaded for
    `leaving` more questions (launchd lets a job go only after it drained); bootstrapping a
    label still loaded fails as launchd does."""

    def __init__(self, root: Path, leaving: int = 0, gui: bool = True) -> None:
        self.root, self.calls = root, []
        self.leaving, self.gui = leaving, gui
        self.loaded: dict[str, int] = {}  # label -> questions until it has left (-1: stays)
        self.refuse_bootstrap: list[str] = []  # errors for the next bootstraps, in order

    def __call__(self, args: object) -> None:
        call = list(args)  # type: ignore[call-overload]
        self.calls.append(call)
        linger = service.linger_file(self.root)
        if call[:2] == ["loginctl", "enable-linger"]:
            linger.parent.mkdir(parents=True, exist_ok=True)
            linger.touch()
        if call[:2] == ["loginctl", "disable-linger"]:
            linger.unlink(missing_ok=True)
        if "launchctl" in call:
            self._launchctl(call[call.index("launchctl") + 1 :])

    def _launchctl(self, args: list[str]) -> None:
        verb, target = args[0], args[-1]
        label = Path(target).stem if verb == "bootstrap" else target.rpartition("/")[2]
        if verb == "print" and target.startswith("gui/") and "/" not in target[4:]:
            if not self.gui:
                raise ConfigError(f"launchctl print {target}: Could not find domain")
            return
        if verb == "print":
            left = self.loaded.get(label)
            if left is None:
                raise ConfigError(f"launchctl print {target}: Could not find service")
            if left > 0:
                self.loaded[label] = left - 1
            elif left == 0:
                del self.loaded[label]
                raise ConfigError(f"launchctl print {target}: Could not find service")
        if verb == "bootout":
            if label not in self.loaded:
                raise ConfigError("Boot-out failed: 3: No such process")
            self.loaded[label] = self.leaving
        if verb == "bootstrap":
            if self.refuse_bootstrap:
                raise ConfigError(self.refuse_bootstrap.pop(0))
            if label in self.loaded:
                raise ConfigError("Bootstrap failed: 5: Input/output error")
            self.loaded[label] = -1

    def bootstraps(self) -> list[list[str]]:
        return [c for c in self.calls if "bootstrap" in c]


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


def _no_sleep(seconds: float) -> None:
    pass


def test_macos_switches_between_agent_and_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, run = _fake_root(tmp_path, monkeypatch)
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)  # an administrator, not root
    agent = service.install(home, False, "darwin", root, run, sleep=_no_sleep)
    assert agent.kind == "launch-agent" and agent.path.exists()
    assert ["launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent.path)] in run.calls
    assert run.loaded == {service.LABEL: -1}
    daemon = service.install(home, True, "darwin", root, run, sleep=_no_sleep)
    assert daemon.path == root / "Library" / "LaunchDaemons" / "com.meshd.daemon.plist"
    assert not agent.path.exists(), "installing one removes the other"
    assert run.loaded == {service.DAEMON_LABEL: -1}, "the agent was booted out"
    sudo = [c for c in run.calls if c[0] == "sudo" and c[1] != "launchctl"]
    assert sudo[0][:2] == ["sudo", "install"] and sudo[0][-1] == str(daemon.path)
    assert ["sudo", "launchctl", "bootstrap", "system", str(daemon.path)] in run.calls
    daemon.path.parent.mkdir(parents=True, exist_ok=True)
    daemon.path.write_bytes(daemon.content)  # what sudo install would have written
    found = service.installed(home, platform="darwin", root=root)
    assert found is not None and found.kind == "launch-daemon"
    service.uninstall(home, platform="darwin", root=root, run=run, sleep=_no_sleep)
    assert ["sudo", "launchctl", "bootout", "system/com.meshd.daemon"] in run.calls
    assert ["sudo", "rm", "-f", str(daemon.path)] in run.calls
    assert run.loaded == {}


def test_a_reinstall_waits_for_the_running_daemon_to_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launchctl bootout returns before the job has drained; bootstrapping at once fails with
    "Bootstrap failed: 5" and left meshd stopped until the next boot. A reinstall (upgrade,
    re-join) asks until the job has gone, with sudo for the system domain, then loads it."""
    root, home, _ = _fake_root(tmp_path, monkeypatch)
    run = Recorder(root, leaving=4)
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)
    slept: list[float] = []
    first = service.install(home, True, "darwin", root, run, sleep=slept.append)
    first.path.parent.mkdir(parents=True, exist_ok=True)
    first.path.write_bytes(first.content)
    again = service.install(home, True, "darwin", root, run, drain_seconds=60, sleep=slept.append)
    assert run.loaded == {service.DAEMON_LABEL: -1}, "loaded again after the reinstall"
    assert len(run.bootstraps()) == 2
    bootout = run.calls.index(["sudo", "launchctl", "bootout", "system/com.meshd.daemon"])
    bootstrap = len(run.calls) - 1
    assert run.calls[bootstrap] == run.bootstraps()[1]
    asked = [c for c in run.calls[bootout:bootstrap] if c[-2:-1] == ["print"]]
    assert len(asked) == 5 and all(c[0] == "sudo" for c in asked)
    assert slept == [service.POLL_S] * 4
    assert plistlib.loads(again.content)["ExitTimeOut"] > 60, "ExitTimeOut follows the drain"


def test_a_job_that_never_leaves_is_named_with_the_command_that_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, _ = _fake_root(tmp_path, monkeypatch)
    run = Recorder(root, leaving=-1)  # bootout accepted, the job stays
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)
    service.install(home, True, "darwin", root, run, sleep=_no_sleep)
    with pytest.raises(ConfigError, match=r"did not stop within .*sudo launchctl bootout system"):
        service.install(home, True, "darwin", root, run, sleep=_no_sleep)
    assert len(run.bootstraps()) == 1, "nothing bootstrapped over a job still there"


def test_launchds_transient_refusals_are_retried_and_others_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, run = _fake_root(tmp_path, monkeypatch)
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)
    run.refuse_bootstrap = [
        "Bootstrap failed: 5: Input/output error",
        "Bootstrap failed: 37: Operation already in progress",
    ]
    slept: list[float] = []
    service.install(home, True, "darwin", root, run, sleep=slept.append)
    assert len(run.bootstraps()) == 3 and slept == [1.0, 1.0]
    assert run.loaded == {service.DAEMON_LABEL: -1}
    run.loaded.clear()
    run.refuse_bootstrap = ["Bootstrap failed: 122: Path had bad ownership/permissions"]
    with pytest.raises(ConfigError, match="bad ownership"):
        service.install(home, True, "darwin", root, run, sleep=_no_sleep)
    assert len(run.bootstraps()) == 4, "a real error is not retried"


def test_a_login_service_over_ssh_says_to_start_at_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, home, _ = _fake_root(tmp_path, monkeypatch)
    run = Recorder(root, gui=False)  # no gui/<uid> domain: nobody at the screen
    with pytest.raises(ConfigError, match=r"not logged in at this Mac's screen.*--at-boot"):
        service.install(home, False, "darwin", root, run, sleep=_no_sleep)
    assert run.bootstraps() == []
    assert service.installed(home, platform="darwin", root=root) is None


def test_under_sudo_the_service_is_the_invoking_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sudo meshd service install --at-boot` must not make a LaunchDaemon that runs meshd as
    root: it runs as SUDO_USER, and sudo is not asked for again."""
    import pwd

    root, home, run = _fake_root(tmp_path, monkeypatch)
    someone = pwd.getpwnam("nobody")
    monkeypatch.setattr(service.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_USER", "nobody")
    daemon = service.install(home, True, "darwin", root, run, sleep=_no_sleep)
    plist = plistlib.loads(daemon.content)
    assert plist["UserName"] == "nobody" and plist["UserName"] != "root"
    assert not any(c[0] == "sudo" for c in run.calls), "already root: no second sudo"
    assert (home / "logs").stat().st_uid == someone.pw_uid, "the user's logs are the user's"
    agent = service_file(home, "darwin", False, root)
    assert agent.path.is_relative_to(root / Path(someone.pw_dir).relative_to("/"))
    with pytest.raises(ConfigError, match="without sudo, as nobody"):
        service.install(home, False, "linux", root, run)


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


def test_macos_starts_at_boot_unless_asked_otherwise() -> None:
    """A LaunchDaemon needs no login and is exempt from Local Network privacy; elsewhere the
    default stays a login service (lingering is the user's to turn on)."""
    from meshd.cli.service import default_at_boot

    assert default_at_boot("darwin") is True
    assert default_at_boot("linux") is False
