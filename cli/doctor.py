"""`meshd doctor`: check this peer and say how to fix each problem."""

from __future__ import annotations

from pathlib import Path

import typer

from meshd.config import load_settings

from .common import HomeOption, JsonOption, console, errors_as_exit, print_json

_MARK = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]", "skip": "[dim]-[/]"}


def doctor(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Check the daemon, service, network, peers, certificates, store and memory."""
    from meshd.doctor import failed, run_checks

    with errors_as_exit():
        checks = run_checks(load_settings(home))
    if json_out:
        print_json(checks)
    else:
        for check in checks:
            console.print(f"{_MARK[check.outcome]} {check.name}: {check.detail}", highlight=False)
            if check.fix and check.outcome in ("warn", "fail"):
                console.print(f"    → {check.fix}", highlight=False)
    raise typer.Exit(1 if failed(checks) else 0)
