"""Tables as `kubectl get` and `ollama ps` print them: no borders, one line a row, the columns a
person needs at 80 columns, the rest with --wide (and everything with --json)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import typer
from rich import box
from rich.console import Console
from rich.table import Table

WideOption = typer.Option(False, "--wide", "-w", help="Every column, however wide.")


@dataclass(frozen=True)
class Column:
    """One column: its heading, whether only --wide shows it, and how it aligns."""

    name: str
    wide_only: bool = False
    right: bool = False


def table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], wide: bool, title: str = ""
) -> Table:
    """The rows under the columns --wide asks for; a cell never wraps a row over two lines (a
    narrow table's long cells are cut with '…', --wide shows them whole)."""
    shown = [i for i, c in enumerate(columns) if wide or not c.wide_only]
    out = Table(
        title=title or None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        expand=False,
    )
    for i in shown:
        column = columns[i]
        out.add_column(
            column.name.upper(),
            justify="right" if column.right else "left",
            no_wrap=True,
            overflow="fold" if wide else "ellipsis",
        )
    for row in rows:
        out.add_row(*(row[i] for i in shown))
    return out


def show(console: Console, rows_table: Table, wide: bool) -> None:
    """Print a table: within the terminal, or with --wide at its own width, however wide (as
    `kubectl get -o wide` does: a wide row overflows the terminal rather than folding)."""
    if not wide:
        console.print(rows_table)
        return
    natural = console.measure(rows_table, options=console.options.update(width=10_000)).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(rows_table, crop=False)
    finally:
        console.width = width
