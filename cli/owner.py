"""`meshd pause` and `meshd resume`: the owner decides when the mesh may use this machine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from meshd.config import parse_duration

from .common import HomeOption, console, errors_as_exit, settings_of


def pause(
    duration: str | None = typer.Option(
        None, "--for", help="How long, e.g. 2h or 30m.", show_default="until `meshd resume`"
    ),
    home: Path | None = HomeOption,
) -> None:
    """Take no new requests from the mesh (yours still run); it holds across restarts."""
    from meshd.errors import ConfigError
    from meshd.pause import pause as pause_peer

    with errors_as_exit():
        seconds = parse_duration(duration) if duration is not None else None
        if seconds is not None and seconds <= 0:
            raise ConfigError("--for must be longer than 0 (try 30m or 2h)")
        until = pause_peer(settings_of(home).home, seconds)
    when = f"until {dt.datetime.fromtimestamp(until):%a %H:%M}" if until else "until `meshd resume`"
    console.print(
        f"paused {when}: streams in progress finish, the mesh sends new requests elsewhere "
        "within seconds",
        highlight=False,
    )


def resume(home: Path | None = HomeOption) -> None:
    """Take requests from the mesh again."""
    from meshd.pause import resume as resume_peer

    with errors_as_exit():
        was = resume_peer(settings_of(home).home)
    console.print("resumed: the mesh may use this machine again" if was else "was not paused")
