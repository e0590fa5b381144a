"""`meshd service install|uninstall|status`: keep `meshd serve` running at login."""

from __future__ import annotations

from pathlib import Path

import typer

from meshd import service as service_files
from meshd.config import load_settings

from .common import HomeOption, JsonOption, console, errors_as_exit, print_json

app = typer.Typer(
    help="Run meshd as a per-user service (LaunchAgent on macOS, systemd on Linux).",
    no_args_is_help=True,
)


@app.command()
def install(home: Path | None = HomeOption) -> None:
    """Write the service definition and start meshd now and at every login."""
    with errors_as_exit():
        installed = service_files.install(load_settings(home).home)
    console.print(f"installed {installed.kind} service: {installed.path}", highlight=False)


@app.command()
def uninstall(home: Path | None = HomeOption) -> None:
    """Stop the service and remove its definition."""
    with errors_as_exit():
        removed = service_files.uninstall(load_settings(home).home)
    console.print(f"removed {removed.path}", highlight=False)


@app.command()
def status(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Is the service installed? Exit 0 when it is, 1 when not."""
    with errors_as_exit():
        settings = load_settings(home)
        definition = service_files.service_file(settings.home)
    present = definition.path.exists()
    if json_out:
        print_json({"installed": present, "kind": definition.kind, "path": str(definition.path)})
    else:
        word = "installed" if present else "not installed (run: meshd service install)"
        console.print(f"{definition.kind} service {word}: {definition.path}", highlight=False)
    raise typer.Exit(0 if present else 1)
