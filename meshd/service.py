"""Run `meshd serve` as a service, at login or at boot.

- macOS, at boot (the default there): a LaunchDaemon in /Library/LaunchDaemons that runs as the
  user (`UserName`, `GroupName`): a Mac mini restarted by an update at 3 am is back in the mesh
  with nobody logged in, and a daemon is exempt from Local Network privacy (macOS 15+), which
  can silently cut a LaunchAgent's unbundled python off the LAN. Writing it needs an
  administrator: sudo is asked for and explained, or the whole command runs under sudo, and
  then the service is still the invoking user's (`SUDO_USER`), never root's.
- macOS, at login: a LaunchAgent in ~/Library/LaunchAgents (needs someone logged in at the
  screen: its `gui/<uid>` domain does not exist over SSH alone).
- Linux: a systemd user unit; at boot means lingering for the user (`loginctl enable-linger`),
  so that the user's service manager, and meshd in it, starts at boot without a login. One unit
  file either way, no root-owned unit that runs as someone else.

launchd is asked carefully: a loaded job is booted out and waited for (it drains first) before
the new one is bootstrapped, and the errors launchd gives while a job is still leaving are
retried. Rendering is pure and tested by parsing what it renders; installing writes the file
atomically and asks launchctl, systemctl or loginctl through `run`, and `root`, `run` and
`sleep` let tests install into a fake root against a stand-in launchctl.
"""

from __future__ import annotations

import contextlib
import grp
import os
import plistlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
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
MIN_EXIT_TIMEOUT_S = 30
POLL_S = 0.5  # how often launchctl is asked whether a booted-out job has left
BOOTSTRAP_TRIES = 5
# What launchctl says when it is asked to bootstrap a job that is still leaving: "Bootstrap
# failed: 5: Input/output error" (the label is still loaded) and 37 ("Operation already in
# progress"). Anything else is the user's to see at once.
TRANSIENT = ("Bootstrap failed: 5:", "Bootstrap failed: 37:", "Operation already in progress")

Run = Callable[[Sequence[str]], None]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class ServiceUser:
    """Whom the service runs as: this user, or under sudo the user who ran sudo."""

    name: str
    uid: int
    gid: int
    group: str
    home: Path  # their home folder (where LaunchAgents and systemd user units live)

    @property
    def by_root(self) -> bool:
        """Run by root for another user (under sudo): files made for them must be theirs."""
        return os.geteuid() == 0 and self.uid != 0


def service_user() -> ServiceUser:
    """The user a service is for: `SUDO_USER` when run through sudo (a service for root is
    never what `sudo meshd service install` means), else the user running meshd."""
    sudo_user = os.environ.get("SUDO_USER", "")
    if os.geteuid() == 0 and sudo_user and sudo_user != "root":
        try:
            entry = pwd.getpwnam(sudo_user)
        except KeyError:
            raise ConfigError(f"SUDO_USER names {sudo_user!r}, who is not a user here") from None
        home = Path(entry.pw_dir)
    else:
        entry = pwd.getpwuid(os.getuid())
        home = Path.home()
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, group, home)


@dataclass(frozen=True)
class ServiceFile:
    """Where a service definition goes, what it holds, and when it starts meshd."""

    path: Path
    content: bytes
    kind: str  # "launch-agent", "launch-daemon" or "systemd-user"
    at_boot: bool
    label: str = ""  # launchd's label ("" for systemd)


def exit_timeout(drain_seconds: float) -> int:
    """How long the service manager waits after SIGTERM before SIGKILL: the drain, then the
    runners' own exit, with room to spare."""
    return max(MIN_EXIT_TIMEOUT_S, int(drain_seconds) + 20)


def _template(name: str) -> Template:
    return Template(files("meshd.launchd").joinpath(name).read_text())


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_plist(
    home: Path,
    python: str,
    path_env: str,
    user: str = "",
    group: str = "",
    drain_seconds: float = 10.0,
) -> bytes:
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
        exit_timeout=exit_timeout(drain_seconds),
    )
    plistlib.loads(text.encode())  # a template that no longer parses must not be installed
    return text.encode()


def render_unit(home: Path, python: str, drain_seconds: float = 10.0) -> bytes:
    """The systemd user unit for a meshd home."""
    for value in (str(home), python):
        if any(c.isspace() or c in "\"'\\%$" for c in value):
            raise ConfigError(f"cannot put {value!r} in a systemd unit: no spaces or quotes")
    timeout = exit_timeout(drain_seconds)
    return _template(UNIT).substitute(home=home, python=python, exit_timeout=timeout).encode()


def service_file(
    home: Path,
    platform: str = sys.platform,
    at_boot: bool = False,
    root: Path = Path("/"),
    drain_seconds: float = 10.0,
    user: ServiceUser | None = None,
) -> ServiceFile:
    """The service definition this platform needs for home."""
    user = user or service_user()
    python = sys.executable
    if platform == "darwin":
        path_env = os.environ.get("PATH", "/usr/bin:/bin")
        if at_boot:
            path = root / "Library" / "LaunchDaemons" / f"{DAEMON_LABEL}.plist"
            content = render_plist(home, python, path_env, user.name, user.group, drain_seconds)
            return ServiceFile(path, content, "launch-daemon", True, DAEMON_LABEL)
        path = _under(root, user.home) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        content = render_plist(home, python, path_env, drain_seconds=drain_seconds)
        return ServiceFile(path, content, "launch-agent", False, LABEL)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or _under(root, user.home) / ".config")
    path = config / "systemd" / "user" / UNIT
    return ServiceFile(path, render_unit(home, python, drain_seconds), "systemd-user", at_boot)


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def linger_file(root: Path = Path("/"), user: str | None = None) -> Path:
    """The file logind keeps for a user who lingers (whose services start at boot)."""
    return root / "var" / "lib" / "systemd" / "linger" / (user or service_user().name)


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
    drain_seconds: float = 10.0,
    sleep: Sleep = time.sleep,
) -> ServiceFile:
    """Write the service definition and start it: now, and at every login (or boot). The other
    variant, if installed, is removed first; the same one, if running, is replaced."""
    user = service_user()
    service = service_file(home, platform, at_boot, root, drain_seconds, user)
    other = service_file(home, platform, not at_boot, root, drain_seconds, user)
    if platform != "darwin" and user.by_root:
        raise ConfigError(
            f"run this without sudo, as {user.name}: a systemd user service belongs to its user"
        )
    _make_dirs(home / "logs", user)
    if platform == "darwin":
        launchd = Launchd(user, run, sleep, drain_seconds)
        if not service.at_boot:
            launchd.check_gui_session()
        if other.path.exists():
            launchd.remove(other)
        launchd.replace(service)
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
        _linger(home, at_boot, root, run, user)
    return service


def _make_dirs(path: Path, user: ServiceUser) -> None:
    """mkdir -p, and under sudo every folder made is the service user's, not root's."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    if user.by_root:
        for made in missing:
            os.chown(made, user.uid, user.gid)


def _linger(home: Path, at_boot: bool, root: Path, run: Run, user: ServiceUser) -> None:
    """Linger on for at boot; off again only if meshd turned it on (the user may linger for
    services of their own)."""
    marker = home / LINGER_MARKER
    if at_boot:
        if not linger_file(root, user.name).exists():
            run(["loginctl", "enable-linger", user.name])
            atomic_write_bytes(marker, b"meshd enabled lingering for this user\n")
    elif marker.exists():
        run_quietly(run, ["loginctl", "disable-linger", user.name])
        marker.unlink()


class Launchd:
    """launchctl, asked the way launchd needs: with the privileges of the job's domain, waiting
    for a job to leave before loading it again, retrying what launchd says while it leaves."""

    def __init__(
        self, user: ServiceUser, run: Run, sleep: Sleep, drain_seconds: float = 10.0
    ) -> None:
        self.user, self.run, self.sleep = user, run, sleep
        self.leave_within = exit_timeout(drain_seconds) + 15  # launchd kills it by then

    def domain(self, service: ServiceFile) -> str:
        return "system" if service.kind == "launch-daemon" else f"gui/{self.user.uid}"

    def target(self, service: ServiceFile) -> str:
        return f"{self.domain(service)}/{service.label}"

    def sudo(self, service: ServiceFile) -> list[str]:
        """The system domain and /Library/LaunchDaemons are root's: sudo unless already root."""
        return ["sudo"] if service.kind == "launch-daemon" and os.geteuid() != 0 else []

    def check_gui_session(self) -> None:
        """A LaunchAgent needs the user's GUI domain, which exists only while they are logged
        in at the screen (not over SSH alone)."""
        try:
            self.run(["launchctl", "print", f"gui/{self.user.uid}"])
        except ConfigError:
            raise ConfigError(
                f"{self.user.name} is not logged in at this Mac's screen (over SSH only?), so a "
                "login service cannot start: use `meshd service install --at-boot`"
            ) from None

    def loaded(self, service: ServiceFile) -> bool:
        try:
            self.run([*self.sudo(service), "launchctl", "print", self.target(service)])
        except ConfigError:
            return False
        return True

    def boot_out(self, service: ServiceFile) -> None:
        """Stop the job if loaded and wait until launchd has let it go (it drains first)."""
        if not self.loaded(service):
            return
        bootout = [*self.sudo(service), "launchctl", "bootout", self.target(service)]
        run_quietly(self.run, bootout)
        waited = 0.0
        while self.loaded(service):
            if waited >= self.leave_within:
                raise ConfigError(
                    f"the running meshd service did not stop within {self.leave_within} s; "
                    f"run `{' '.join(bootout)}`, then try again"
                )
            self.sleep(POLL_S)
            waited += POLL_S

    def bootstrap(self, service: ServiceFile) -> None:
        args = [*self.sudo(service), "launchctl", "bootstrap", self.domain(service)]
        for attempt in range(BOOTSTRAP_TRIES):
            try:
                self.run([*args, str(service.path)])
                return
            except ConfigError as error:
                if attempt == BOOTSTRAP_TRIES - 1 or not any(t in str(error) for t in TRANSIENT):
                    raise
            self.sleep(1.0)

    def replace(self, service: ServiceFile) -> None:
        """Install the definition and start it, stopping the running one first."""
        self.boot_out(service)
        existed = service.path.exists()
        if self.sudo(service):
            # /Library/LaunchDaemons belongs to root: sudo copies the file there.
            with tempfile.NamedTemporaryFile(suffix=".plist") as staged:
                staged.write(service.content)
                staged.flush()
                install_file = ["sudo", "install", "-m", "0644", "-o", "root", "-g", "wheel"]
                self.run([*install_file, staged.name, str(service.path)])
        else:
            if service.kind == "launch-agent":
                _make_dirs(service.path.parent, self.user)
            atomic_write_bytes(service.path, service.content, 0o644)
            if self.user.by_root and service.kind == "launch-agent":
                os.chown(service.path, self.user.uid, self.user.gid)
        try:
            self.bootstrap(service)
        except ConfigError:
            if not existed and not self.sudo(service):  # nothing half-installed
                service.path.unlink(missing_ok=True)
            raise

    def remove(self, service: ServiceFile) -> None:
        """Stop the job and delete its definition."""
        self.boot_out(service)
        if self.sudo(service):
            self.run([*self.sudo(service), "rm", "-f", str(service.path)])
        else:
            service.path.unlink(missing_ok=True)


def run_quietly(run: Run, args: Sequence[str]) -> None:
    """A command whose failure means there was nothing to do (unloading what is not loaded)."""
    with contextlib.suppress(ConfigError):
        run(args)


def uninstall(
    home: Path,
    platform: str = sys.platform,
    root: Path = Path("/"),
    run: Run = run_command,
    sleep: Sleep = time.sleep,
) -> list[ServiceFile]:
    """Stop the service and remove its definition, whichever variant is installed."""
    removed = []
    user = service_user()
    for at_boot in (False, True):
        service = service_file(home, platform, at_boot, root, user=user)
        if platform == "darwin" and service.path.exists():
            Launchd(user, run, sleep).remove(service)
            removed.append(service)
    if platform != "darwin":
        service = service_file(home, platform, False, root, user=user)
        if service.path.exists():
            run_quietly(run, ["systemctl", "--user", "disable", "--now", UNIT])
            service.path.unlink(missing_ok=True)
            removed.append(service)
        _linger(home, False, root, run, user)
    return removed


def installed(
    home: Path, platform: str = sys.platform, root: Path = Path("/")
) -> ServiceFile | None:
    """The service definition in place (the at-boot one first), or None."""
    user = service_user()
    if platform != "darwin":
        unit = service_file(home, platform, linger_file(root, user.name).exists(), root, user=user)
        return unit if unit.path.exists() else None
    for at_boot in (True, False):
        service = service_file(home, platform, at_boot, root, user=user)
        if service.path.exists():
            return service
    return None
