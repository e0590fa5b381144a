"""Run `meshd serve` as a per-user service: a LaunchAgent on macOS, a systemd user unit on Linux.

Rendering is pure (and tested by parsing what it renders); installing writes the file
atomically and asks launchctl or systemctl to start it.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from meshd.errors import ConfigError
from meshd.fsutil import atomic_write_bytes

LABEL = "com.meshd.agent"
UNIT = "meshd.service"


@dataclass(frozen=True)
class ServiceFile:
    """Where the service definition goes on this platform, and what it holds."""

    path: Path
    content: bytes
    kind: str  # "launchd" or "systemd"


def _template(name: str) -> Template:
    return Template(files("meshd.launchd").joinpath(name).read_text())


def render_plist(home: Path, python: str, path_env: str) -> bytes:
    """The LaunchAgent plist for a meshd home."""
    log = home / "logs" / "meshd.log"
    text = _template(f"{LABEL}.plist").substitute(
        label=LABEL,
        python=_xml(python),
        home=_xml(str(home)),
        path=_xml(path_env),
        log=_xml(str(log)),
    )
    plistlib.loads(text.encode())  # a template that no longer parses must not be installed
    return text.encode()


def render_unit(home: Path, python: str) -> bytes:
    """The systemd user unit for a meshd home."""
    for value in (str(home), python):
        if any(c.isspace() or c in "\"'\\%$" for c in value):
            raise ConfigError(f"cannot put {value!r} in a systemd unit: no spaces or quotes")
    return _template(UNIT).substitute(home=home, python=python).encode()


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def service_file(home: Path, platform: str = sys.platform) -> ServiceFile:
    """The service definition this platform needs for home."""
    python = sys.executable
    if platform == "darwin":
        path = Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        path_env = os.environ.get("PATH", "/usr/bin:/bin")
        return ServiceFile(path, render_plist(home, python, path_env), "launchd")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return ServiceFile(config / "systemd" / "user" / UNIT, render_unit(home, python), "systemd")


def _run(*args: str) -> str:
    if shutil.which(args[0]) is None:
        raise ConfigError(f"{args[0]} is not available here")
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def install(home: Path) -> ServiceFile:
    """Write the service definition and start it now and at every login."""
    service = service_file(home)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(service.path, service.content)
    if service.kind == "launchd":
        domain = f"gui/{os.getuid()}"
        subprocess.run(["launchctl", "bootout", domain, str(service.path)], capture_output=True)
        _run("launchctl", "bootstrap", domain, str(service.path))
    else:
        _run("systemctl", "--user", "daemon-reload")
        _run("systemctl", "--user", "enable", "--now", UNIT)
    return service


def uninstall(home: Path) -> ServiceFile:
    """Stop the service and remove its definition."""
    service = service_file(home)
    if service.kind == "launchd":
        subprocess.run(
            ["launchctl", "bootout", f"gui/{os.getuid()}", str(service.path)], capture_output=True
        )
    elif shutil.which("systemctl"):
        subprocess.run(["systemctl", "--user", "disable", "--now", UNIT], capture_output=True)
    service.path.unlink(missing_ok=True)
    return service


def installed(home: Path) -> bool:
    """True when this platform's service definition is in place."""
    return service_file(home).path.exists()
