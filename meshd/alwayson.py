"""`meshd doctor`'s checks for always-on: starts at boot, lingering, sleep settings, the sleep
assertion, log size, the open-file limit. Parsers are pure and tested on samples; the rest
reads local state only."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshd import service
from meshd.awake import HELPERS
from meshd.checks import NOT_LINUX, NOT_MAC, Check
from meshd.config import Settings
from meshd.logfile import log_files, log_path

MIN_OPEN_FILES = 1024


@dataclass(frozen=True)
class SleepSettings:
    """What `pmset -g` says about sleep on macOS."""

    sleep_minutes: int | None  # 0: never sleeps when idle
    wake_on_network: bool | None  # "Wake for network access" (womp)


def parse_pmset(text: str) -> SleepSettings:
    """The idle-sleep minutes and Wake for network access from `pmset -g` output."""
    sleep = re.search(r"^\s*sleep\s+(\d+)", text, re.MULTILINE)
    womp = re.search(r"^\s*womp\s+(\d+)", text, re.MULTILINE)
    return SleepSettings(
        int(sleep.group(1)) if sleep else None, bool(int(womp.group(1))) if womp else None
    )


def starts_at_boot(settings: Settings, root: Path = Path("/")) -> Check:
    found = service.installed(settings.home, root=root)
    if found is None:
        fix = "run `meshd service install --at-boot` so meshd starts with the machine"
        return Check("service", "warn", "no meshd service is installed", fix)
    if not found.at_boot:
        fix = "`meshd service install --at-boot`: a restart with nobody logged in keeps it out"
        return Check("service", "warn", f"{found.kind}, starts only at login", fix)
    return Check("service", "ok", f"{found.kind}, starts at boot: {found.path}")


def lingering(platform: str = sys.platform, root: Path = Path("/")) -> Check:
    if not platform.startswith("linux"):
        return Check("linger (Linux)", "skip", NOT_LINUX)
    if service.linger_file(root).exists():
        return Check("linger (Linux)", "ok", "on: this user's services start at boot")
    fix = "`meshd service install --at-boot` (it runs `loginctl enable-linger`)"
    return Check("linger (Linux)", "warn", "off: user services wait for a login", fix)


def sleep_settings(settings: Settings, pmset: str | None) -> Check:
    if pmset is None:
        return Check("sleep settings (macOS)", "skip", NOT_MAC)
    found = parse_pmset(pmset)
    problems, fixes = [], []
    if found.sleep_minutes and settings.keep_awake == "never":
        problems.append(f"sleeps after {found.sleep_minutes} min idle")
        fixes.append('set keep_awake = "always" in meshd.toml, or `sudo pmset -a sleep 0`')
    if found.wake_on_network is False:
        problems.append("Wake for network access is off")
        fixes.append("System Settings → Energy: turn on Wake for network access")
    if problems:
        return Check("sleep settings (macOS)", "warn", "; ".join(problems), "; ".join(fixes))
    idle = "never sleeps when idle" if not found.sleep_minutes else "meshd keeps it awake"
    return Check("sleep settings (macOS)", "ok", idle)


def sleep_assertion(settings: Settings, daemon_pid: int | None) -> Check:
    name = "kept awake"
    if settings.keep_awake == "never":
        return Check(name, "skip", 'keep_awake = "never"')
    if daemon_pid is None:
        return Check(name, "skip", "the daemon is not running")
    try:
        helpers = [p.name() for p in psutil.Process(daemon_pid).children() if p.name() in HELPERS]
    except psutil.Error:
        return Check(name, "skip", "the daemon is not running")
    if helpers:
        return Check(name, "ok", f"idle sleep is held off ({helpers[0]})")
    if settings.keep_awake == "while-warm":
        return Check(name, "ok", 'not now: nothing is warm (keep_awake = "while-warm")')
    fix = "see `meshd logs` for why (on Linux, logind must run for systemd-inhibit)"
    return Check(name, "warn", "the machine may sleep while meshd serves", fix)


def log_size(settings: Settings) -> Check:
    files = log_files(settings.home)
    size = sum(p.stat().st_size for p in files)
    cap = settings.log_max_bytes * (settings.log_backups + 1)
    service_log = log_path(settings.home).with_name(service.SERVICE_LOG)
    caught = service_log.stat().st_size if service_log.exists() else 0
    detail = f"{size / 2**20:.1f} MiB in {len(files)} file(s), at most {cap / 2**20:.0f} MiB"
    if caught > 10 * 2**20:
        fix = f"look at {service_log} (what crashed before logging started), then empty it"
        return Check("logs", "warn", f"{service_log} holds {caught / 2**20:.0f} MiB", fix)
    return Check("logs", "ok", detail)


def open_file_limit(daemon_pid: int | None, recorded: int = 0) -> Check:
    """The daemon's open-file limit: as it recorded in its daemon file (any platform), else as
    psutil reads it from outside (Linux only)."""
    name = "open-file limit"
    if daemon_pid is None:
        return Check(name, "skip", "the daemon is not running")
    soft = recorded
    if not soft:
        try:
            soft, _hard = psutil.Process(daemon_pid).rlimit(psutil.RLIMIT_NOFILE)
        except (AttributeError, psutil.Error):  # psutil reads other processes' limits on Linux
            return Check(name, "skip", "the daemon did not say (restart it to see)")
    if 0 < soft < MIN_OPEN_FILES:
        fix = "reinstall the service (`meshd service install`): it asks for 8192"
        return Check(name, "warn", f"{soft}: a few hundred connections exhaust it", fix)
    return Check(name, "ok", f"{soft}")


def always_on(settings: Settings, daemon: dict[str, str] | None, pmset: str | None) -> list[Check]:
    """Every always-on check; daemon is the running daemon's record (meshd.daemonfile), pmset
    what `pmset -g` printed (None: not macOS)."""
    daemon_pid = int(daemon["pid"]) if daemon else None
    recorded = daemon.get("open_files", "0") if daemon else "0"
    return [
        starts_at_boot(settings),
        lingering(),
        sleep_settings(settings, pmset),
        sleep_assertion(settings, daemon_pid),
        log_size(settings),
        open_file_limit(daemon_pid, int(recorded) if recorded.isdigit() else 0),
    ]
