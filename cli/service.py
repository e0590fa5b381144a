"""`meshd service install|uninstall|status`: keep `meshd serve` running, from login or boot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from meshd import service as service_files
from meshd.config import default_home

from .common import (
    HomeOption,
    JsonOption,
    console,
    err_console,
    errors_as_exit,
    print_json,
    settings_of,
)

app = typer.Typer(
    help="Run meshd as a per-user service (LaunchAgent on macOS, systemd on Linux).",
    no_args_is_help=True,
)


AtBootOption = typer.Option(
    None,
    "--at-boot/--at-login",
    help="Start at boot with nobody logged in (macOS: a LaunchDaemon, asks for sudo; Linux: "
    "lingering for this user), or at login.",
    show_default="at boot on macOS, at login elsewhere",
)
AGENT_NOTE = (
    "note: on macOS 15 and later, Local Network privacy can keep a login service (python, not "
    "an app) off the LAN without asking; if peers never appear, use --at-boot"
)


def default_at_boot(platform: str = sys.platform) -> bool:
    """At boot on macOS (a LaunchDaemon: no login needed, and exempt from Local Network
    privacy); at login elsewhere (lingering is the user's to turn on)."""
    return platform == "darwin"


def install_service(home: Path, at_boot: bool, drain_seconds: float) -> service_files.ServiceFile:
    """Install with the words a person needs around it: why sudo, what may block an agent."""
    if sys.platform == "darwin" and at_boot and os.geteuid() != 0:
        err_console.print(
            "a LaunchDaemon lives in /Library/LaunchDaemons, which only an administrator "
            "may write: sudo asks for your password once",
            highlight=False,
        )
    if sys.platform == "darwin" and not at_boot:
        err_console.print(AGENT_NOTE, highlight=False)
    return service_files.install(home, at_boot=at_boot, drain_seconds=drain_seconds)


def service_home(home: Path | None) -> Path | None:
    """Under sudo, the home of the user who ran it (their service, their models), unless
    one is named."""
    user = service_files.service_user()
    if home is None and user.by_root and not os.environ.get("MESHD_HOME"):
        return default_home(user.home)
    return home


@app.command()
def install(home: Path | None = HomeOption, at_boot: bool | None = AtBootOption) -> None:
    """Write the service definition and start meshd now and at every boot (or login)."""
    with errors_as_exit():
        settings = settings_of(service_home(home))
        at_boot = default_at_boot() if at_boot is None else at_boot
        done = install_service(settings.home, at_boot, settings.drain_seconds)
    console.print(f"installed {done.kind} service: {done.path}", highlight=False)
    when = (
        "it starts at boot, with nobody logged in"
        if done.at_boot
        else "it starts when you log in (`--at-boot` to start with the machine)"
    )
    console.print(when, highlight=False)


@app.command()
def uninstall(home: Path | None = HomeOption) -> None:
    """Stop the service and remove its definition (whichever variant is installed)."""
    with errors_as_exit():
        removed = service_files.uninstall(settings_of(service_home(home)).home)
    for service in removed:
        console.print(f"removed {service.path}", highlight=False)
    if not removed:
        console.print("no meshd service was installed", highlight=False)


@app.command()
def status(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Is the service installed? Exit 0 when it is, 1 when not."""
    with errors_as_exit():
        settings = settings_of(service_home(home))
        found = service_files.installed(settings.home)
        definition = found or service_files.service_file(settings.home)
    present = found is not None
    if json_out:
        print_json(
            {
                "installed": present,
                "kind": definition.kind,
                "path": str(definition.path),
                "at_boot": present and definition.at_boot,
            }
        )
    else:
        when = "starts at boot" if definition.at_boot else "starts at login"
        word = f"installed, {when}" if present else "not installed (run: meshd service install)"
        console.print(f"{definition.kind} service {word}: {definition.path}", highlight=False)
    raise typer.Exit(0 if present else 1)
