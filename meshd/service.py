"""Run `meshd serve` as a service, at login or at boot.

- macOS, at login: a LaunchAgent in ~/Library/LaunchAgents (starts when the user logs in).
- macOS, at boot: a LaunchDaemon in /Library/LaunchDaemons that runs as the user (`UserName`,
  `GroupName`): a Mac mini restarted by an update at 3 am is back in the mesh with nobody
  logged in. Writing it needs an administrator (sudo), asked for and explained.
- Linux: a systemd user unit; at boot means lingering for the user (`loginctl enable-linger`),
  so that the user's service manager, and meshd in it, starts at boot without a login. One unit
  file either way, no root-owned unit that runs as someone else.

Rendering is pure and tested by parsing what it renders. Installing writes the file atomically
and asks launchctl, systemctl or loginctl; `root` and `run` let tests install into a fake root.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import os
import plistlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from meshd.errors import ConfigError
from meshd.fsutil import atomic_write_bytes

LABEL = "com.meshd.agent"
DAEMON_LABEL = "com.meshd.daemon"
UNIT = "meshd.service"
SERVICE_LOG = "service.log"  # what the service manager catches: crashes before logging starts
LINGER_MARKER = "linger-by-meshd"  # in the home: meshd turned lingering on, so may turn it off

Run = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class ServiceFile:
    """Where a service definition goes, what it holds, and when it starts meshd."""

    path: Path
    content: bytes
    kind: str  # "launch-agent", "launch-daemon" or "systemd-user"
    at_boot: bool


def _template(name: str) -> Template:
    return Template(files("meshd.launchd").joinpath(name).read_text())


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_plist(home: Path, python: str, path_env: str, user: str = "", group: str = "") -> bytes:
    """The LaunchAgent plist for a meshd home, or with a user, the LaunchDaemon that runs as
    that user from boot."""
    name = f"{DAEMON_LABEL}.plist" if user else f"{LABEL}.plist"
    text = _template(name).substitute(
        label=DAEMON_LABEL if user else LABEL,
        python=_xml(python),
        home=_xml(str(home)),
        path=_xml(path_env),
        log=_xml(str(home / "logs" / SERVICE_LOG)),
        user=_xml(user),
        group=_xml(group),
    )
    plistlib.loads(text.encode())  # a template that no longer parses must not be installed
    return text.encode()


def render_unit(home: Path, python: str) -> bytes:
    """The systemd user unit for a meshd home."""
    for value in (str(home), python):
        if any(c.isspace() or c in "\"'\\%$" for c in value):
            raise ConfigError(f"cannot put {value!r} in a systemd unit: no spaces or quotes")
    return _template(UNIT).substitute(home=home, python=python).encode()


def service_file(
    home: Path, platform: str = sys.platform, at_boot: bool = False, root: Path = Path("/")
) -> ServiceFile:
    """The service definition this platform needs for home."""
    python = sys.executable
    if platform == "darwin":
        path_env = os.environ.get("PATH", "/usr/bin:/bin")
        if at_boot:
            user = getpass.getuser()
            group = grp.getgrgid(os.getgid()).gr_name
            path = root / "Library" / "LaunchDaemons" / f"{DAEMON_LABEL}.plist"
            content = render_plist(home, python, path_env, user, group)
            return ServiceFile(path, content, "launch-daemon", True)
        path = _user_home(root) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return ServiceFile(path, render_plist(home, python, path_env), "launch-agent", False)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or _user_home(root) / ".config")
    path = config / "systemd" / "user" / UNIT
    return ServiceFile(path, render_unit(home, python), "systemd-user", at_boot)


def _user_home(root: Path) -> Path:
    return root / Path.home().relative_to("/")


def linger_file(root: Path = Path("/"), user: str | None = None) -> Path:
    """The file logind keeps for a user who lingers (whose services start at boot)."""
    return root / "var" / "lib" / "systemd" / "linger" / (user or getpass.getuser())


def run_command(args: Sequence[str]) -> None:
    """Run a service manager command; ConfigError with its own words when it fails."""
    if shutil.which(args[0]) is None:
        raise ConfigError(f"{args[0]} is not available here")
    done = subprocess.run(list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")


def install(
    home: Path,
    at_boot: bool = False,
    platform: str = sys.platform,
    root: Path = Path("/"),
    run: Run = run_command,
) -> ServiceFile:
    """Write the service definition and start it: now, and at every login (or boot). The other
    variant, if installed, is removed first."""
    service = service_file(home, platform, at_boot, root)
    other = service_file(home, platform, not at_boot, root)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    if platform == "darwin":
        if other.path.exists():
            _stop_launchd(other, run)
        _write_launchd(service, run)
    else:
        existed = service.path.exists()
        atomic_write_bytes(service.path, service.content)
        try:
            run(["systemctl", "--user", "daemon-reload"])
            run(["systemctl", "--user", "enable", "--now", UNIT])
        except ConfigError:
            if not existed:  # nothing half-installed: no unit that never started
                service.path.unlink(missing_ok=True)
            raise
        _linger(home, at_boot, root, run)
    return service


def _linger(home: Path, at_boot: bool, root: Path, run: Run) -> None:
    """Linger on for at boot; off again only if meshd turned it on (the user may linger for
    services of their own)."""
    marker = home / LINGER_MARKER
    if at_boot:
        if not linger_file(root).exists():
            run(["loginctl", "enable-linger", getpass.getuser()])
            atomic_write_bytes(marker, b"meshd enabled lingering for this user\n")
    elif marker.exists():
        run_quietly(run, ["loginctl", "disable-linger", getpass.getuser()])
        marker.unlink()


def _domain(service: ServiceFile) -> str:
    return "system" if service.kind == "launch-daemon" else f"gui/{os.getuid()}"


def _write_launchd(service: ServiceFile, run: Run) -> None:
    run_quietly(run, ["launchctl", "bootout", _domain(service), str(service.path)])
    if service.kind == "launch-daemon" and os.geteuid() != 0:
        # /Library/LaunchDaemons belongs to root: sudo copies the file there and loads it.
        with tempfile.NamedTemporaryFile(suffix=".plist") as staged:
            staged.write(service.content)
            staged.flush()
            run(
                [
                    "sudo",
                    "install",
                    "-m",
                    "0644",
                    "-o",
                    "root",
                    "-g",
                    "wheel",
                    staged.name,
                    str(service.path),
                ]
            )
        run(["sudo", "launchctl", "bootstrap", "system", str(service.path)])
        return
    existed = service.path.exists()
    atomic_write_bytes(service.path, service.content)
    try:
        run(["launchctl", "bootstrap", _domain(service), str(service.path)])
    except ConfigError:
        if not existed:  # nothing half-installed
            service.path.unlink(missing_ok=True)
        raise


def _stop_launchd(service: ServiceFile, run: Run) -> None:
    sudo = ["sudo"] if service.kind == "launch-daemon" and os.geteuid() != 0 else []
    run_quietly(run, [*sudo, "launchctl", "bootout", _domain(service), str(service.path)])
    if sudo:
        run([*sudo, "rm", "-f", str(service.path)])
    else:
        service.path.unlink(missing_ok=True)


def run_quietly(run: Run, args: Sequence[str]) -> None:
    """A command whose failure means there was nothing to do (unloading what is not loaded)."""
    with contextlib.suppress(ConfigError):
        run(args)


def uninstall(
    home: Path, platform: str = sys.platform, root: Path = Path("/"), run: Run = run_command
) -> list[ServiceFile]:
    """Stop the service and remove its definition, whichever variant is installed."""
    removed = []
    for at_boot in (False, True):
        service = service_file(home, platform, at_boot, root)
        if platform == "darwin" and service.path.exists():
            _stop_launchd(service, run)
            removed.append(service)
    if platform != "darwin":
        service = service_file(home, platform, False, root)
        if service.path.exists():
            run_quietly(run, ["systemctl", "--user", "disable", "--now", UNIT])
            service.path.unlink(missing_ok=True)
            removed.append(service)
        _linger(home, False, root, run)
    return removed


def installed(
    home: Path, platform: str = sys.platform, root: Path = Path("/")
) -> ServiceFile | None:
    """The service definition in place (the at-boot one first), or None."""
    if platform != "darwin":
        unit = service_file(home, platform, linger_file(root).exists(), root)
        return unit if unit.path.exists() else None
    for at_boot in (True, False):
        service = service_file(home, platform, at_boot, root)
        if service.path.exists():
            return service
    return None
