"""`meshd service install|uninstall|status`: keep `meshd serve` running, from login or boot."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from meshd import service as service_files
from meshd.config import load_settings

from .common import HomeOption, JsonOption, console, err_console, errors_as_exit, print_json

app = typer.Typer(
    help="Run meshd as a per-user service (LaunchAgent on macOS, systemd on Linux).",
    no_args_is_help=True,
)


AtBootOption = typer.Option(
    False,
    "--at-boot",
    help="Start at boot with nobody logged in (macOS: a LaunchDaemon, asks for sudo; "
    "Linux: lingering for this user).",
)


@app.command()
def install(home: Path | None = HomeOption, at_boot: bool = AtBootOption) -> None:
    """Write the service definition and start meshd now and at every login (or boot)."""
    with errors_as_exit():
        if at_boot and sys.platform == "darwin":
            err_console.print(
                "a LaunchDaemon lives in /Library/LaunchDaemons, which only an administrator "
                "may write: sudo asks for your password once",
                highlight=False,
            )
        done = service_files.install(load_settings(home).home, at_boot=at_boot)
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
        removed = service_files.uninstall(load_settings(home).home)
    for service in removed:
        console.print(f"removed {service.path}", highlight=False)
    if not removed:
        console.print("no meshd service was installed", highlight=False)


@app.command()
def status(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Is the service installed? Exit 0 when it is, 1 when not."""
    with errors_as_exit():
        settings = load_settings(home)
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
