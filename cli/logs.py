"""`meshd logs`: the daemon's own log (logs/meshd.log in the home, rotated)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import HomeOption, errors_as_exit, settings_of


def logs(
    home: Path | None = HomeOption,
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many of the last lines."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then print new lines as they come."),
) -> None:
    """Show the daemon's log (and with -f, follow it)."""
    from meshd.errors import ConfigError
    from meshd.logfile import follow as follow_log, last_lines, log_path

    with errors_as_exit():
        home_dir = settings_of(home).home
        path = log_path(home_dir)
        if not path.exists() and not follow:
            raise ConfigError(f"no log at {path} yet: the daemon writes it once it runs")
    for line in last_lines(home_dir, lines) if lines else []:
        print(line)
    if follow:
        try:
            for line in follow_log(home_dir):
                print(line, flush=True)
        except KeyboardInterrupt:
            return
