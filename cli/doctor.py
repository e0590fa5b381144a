"""`meshd doctor`: check this peer and say how to fix each problem."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import HomeOption, JsonOption, console, errors_as_exit, print_json, settings_of

_MARK = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]", "skip": "[dim]-[/]"}


def doctor(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Check the daemon, service, network, peers, certificates, store and memory."""
    import textwrap

    from meshd.checks import for_another_platform
    from meshd.doctor import failed, run_checks

    with errors_as_exit():
        checks = run_checks(settings_of(home))
    if json_out:
        print_json(checks)
        raise typer.Exit(1 if failed(checks) else 0)
    elsewhere = [c for c in checks if for_another_platform(c)]
    for check in checks:
        if check in elsewhere:
            continue
        console.print(f"{_MARK[check.outcome]} {check.name}: {check.detail}", highlight=False)
        if check.fix and check.outcome in ("warn", "fail"):
            fix = textwrap.fill(
                check.fix, console.width, initial_indent="    → ", subsequent_indent="      "
            )
            console.print(fix, highlight=False, markup=False, soft_wrap=True)
    if elsewhere:
        console.print(
            f"[dim]{len(elsewhere)} checks for another platform left out (--json lists them)[/]"
        )
    raise typer.Exit(1 if failed(checks) else 0)
