"""Commands on this machine's model store: pull and rm."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from meshd.pull import PullResult


from .common import (
    HomeOption,
    JsonOption,
    console,
    err_console,
    errors_as_exit,
    human_bytes,
    print_json,
    settings_of,
)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def pull(
    source: str = typer.Argument(
        ...,
        help="A .gguf file, an http(s):// or hf://org/repo/file.gguf URL, or with --from "
        "a model name or sha256:… digest on that peer.",
    ),
    name: str | None = typer.Option(None, "--name", help="Name to store it under."),
    from_peer: str | None = typer.Option(None, "--from", help="Peer host:port to pull from."),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected digest (sha256:…)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a model that cannot fit RAM."),
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Bring a model into this machine's store: verified, resumable, from a friend first."""
    from meshd.pull import open_source, pull as pull_model
    from meshd.security.keyring import Keyring
    from meshd.store import ModelStore

    with errors_as_exit():
        settings = settings_of(home)
        store = ModelStore(settings.home)
        origin = open_source(source, from_peer, Keyring(settings.home).credentials())
        budget = settings.memory_budget
        bar = _progress_bar()
        task = bar.add_task(f"pull {name or origin.default_name()}", total=None)

        def advance(done: int, total: int | None) -> None:
            if not bar.live.is_started:  # shown once bytes flow, not for errors before
                bar.start()
            bar.update(task, completed=done, total=total)

        try:
            result = pull_model(
                store,
                origin,
                name=name,
                digest=sha256,
                progress=advance,
                memory_budget=budget,
                strict=strict,
                max_bytes=settings.max_pull_bytes,
            )
        finally:
            if bar.live.is_started:
                bar.stop()
    _report(result, json_out)


def _report(result: PullResult, json_out: bool) -> None:
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if json_out:
        print_json({**vars(result), "model": result.model})
        return
    model = result.model
    how = "already in the store" if result.already_present else "verified and stored"
    console.print(
        f"{model.name}: {how} ({model.digest[:19]}…, {model.size / 2**20:.1f} MiB, "
        f"{model.architecture} {model.quantization})",
        highlight=False,
    )


def gc(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Remove files in the store that no model name points to, and say what that freed."""
    from meshd.store import ModelStore

    with errors_as_exit():
        removed = ModelStore(settings_of(home).home).collect_garbage()
    if json_out:
        print_json([{"path": str(path), "bytes": size} for path, size in removed])
        return
    for path, size in removed:
        console.print(f"removed {path} ({human_bytes(size)})", highlight=False)
    freed = human_bytes(sum(size for _, size in removed))
    console.print(f"{len(removed)} file(s) removed, {freed} freed", highlight=False)


def rm(
    name: str = typer.Argument(..., help="Model name in the store."),
    home: Path | None = HomeOption,
) -> None:
    """Remove a model from the store (its file goes when no other name uses it)."""
    from meshd.store import ModelStore

    with errors_as_exit():
        removed = ModelStore(settings_of(home).home).remove(name)
    console.print(f"removed {removed.name} ({removed.digest[:19]}…)", highlight=False)
