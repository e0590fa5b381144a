"""The `meshd` command: run a peer and talk to it."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from meshd import __version__
from meshd.client import MeshClient
from meshd.config import load_settings, parse_duration
from meshd.errors import ConfigError, PeerUnavailable
from meshd.types import Chunk

from .common import (
    AddrOption,
    HomeOption,
    JsonOption,
    console,
    err_console,
    errors_as_exit,
    human_bytes,
    human_until,
    print_json,
    resolve_address,
)

app = typer.Typer(
    name="meshd",
    help="Keep llama.cpp models warm on your always-on machines and answer over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"meshd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """meshd: a mesh of warm LLM peers. Start with `meshd serve --model NAME=FILE.gguf`."""


@app.command()
def serve(
    model: list[str] = typer.Option([], "--model", "-m", help="NAME=PATH of a GGUF; repeat."),
    listen: str | None = typer.Option(
        None, help="host:port to serve on [default: 127.0.0.1:7070]."
    ),
    home: Path | None = HomeOption,
    slots: int | None = typer.Option(None, help="Concurrent requests per model [default: 1]."),
    context: int | None = typer.Option(None, help="Context tokens per slot [default: 2048]."),
    threads: int | None = typer.Option(None, help="llama.cpp threads [default: physical cores]."),
    pin: list[str] = typer.Option([], help="Keep this model warm always; repeat."),
    keep_alive: str | None = typer.Option(None, help="Keep an idle model warm this long [30m]."),
    memory_budget: str | None = typer.Option(None, help="Bytes for models [75% of RAM]."),
    max_queue: int | None = typer.Option(None, help="Queued requests per model [default: 8]."),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Read weights into RAM, not mmap."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run a peer in the foreground (what launchd or systemd runs)."""
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    flags = {
        "models": model or None,
        "listen": listen,
        "slots": slots,
        "context": context,
        "threads": threads,
        "pins": pin or None,
        "keep_alive": keep_alive,
        "memory_budget": memory_budget,
        "max_queue": max_queue,
        "use_mmap": False if no_mmap else None,
    }
    with errors_as_exit():
        settings = load_settings(home, flags)
        from meshd.node import Node

        try:
            node = Node(settings)
            asyncio.run(node.run_until_signalled())
        except OSError as exc:
            raise PeerUnavailable(f"cannot serve on {settings.listen}: {exc}") from None


def _print_stats(first: float | None, started: float, last: Chunk | None) -> None:
    if last is None or first is None:
        return
    decode = time.perf_counter() - first
    rate = (last.tokens - 1) / decode if last.tokens > 1 and decode > 0 else 0.0
    err_console.print(
        f"[dim]{last.tokens} tokens · first token {1000 * (first - started):.0f} ms · "
        f"{rate:.1f} tok/s · {last.finish_reason} · served by {last.served_by}[/]",
        highlight=False,
    )


@app.command()
def generate(
    model: str = typer.Argument(..., help="Model name."),
    prompt: str = typer.Argument(..., help="Prompt text (with --chat: the user's message)."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 is greedy."),
    top_p: float = typer.Option(0.95),
    top_k: int = typer.Option(40),
    seed: int | None = typer.Option(None, help="Fixed seed for repeatable output."),
    stop: list[str] = typer.Option([], help="Stop at this text; repeat."),
    chat: bool = typer.Option(False, "--chat", help="Send as a chat message (model template)."),
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Stream a completion as it is generated."""
    with errors_as_exit(), MeshClient(resolve_address(addr, home)) as mesh:
        options = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
        )
        text_in = {"messages": [{"role": "user", "content": prompt}]} if chat else {}
        started, first, last, parts = time.perf_counter(), None, None, []
        for chunk in mesh.generate(model, None if chat else prompt, **text_in, **options):  # type: ignore[arg-type]
            first = first or time.perf_counter()
            last = chunk
            parts.append(chunk.text)
            if not json_out:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        if json_out:
            ttft = None if first is None else round(1000 * (first - started), 2)
            print_json(
                {
                    "model": model,
                    "text": "".join(parts),
                    "tokens": last and last.tokens,
                    "prompt_tokens": last and last.prompt_tokens,
                    "finish_reason": last and last.finish_reason,
                    "served_by": last and last.served_by,
                    "ttft_ms": ttft,
                }
            )
        else:
            sys.stdout.write("\n")
            _print_stats(first, started, last)


@app.command()
def warm(
    model: str = typer.Argument(..., help="Model name."),
    lease: str = typer.Option("5m", help="Keep it warm at least this long."),
    wait: bool = typer.Option(False, "--wait", help="Return only once it is warm."),
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Warm a model ahead of use (returns at once unless --wait)."""
    with errors_as_exit():
        lease_s = parse_duration(lease)
        with MeshClient(resolve_address(addr, home)) as mesh:
            result = mesh.warm(model, lease=lease_s, wait=wait)
    if json_out:
        print_json(result)
        return
    eta = f", ready in ~{result.ready_in:.1f}s" if result.ready_in else ""
    console.print(
        f"{result.model}: {result.state}{eta} on {result.served_by}; "
        f"warm for {human_until(result.warm_until)}"
    )


@app.command()
def models(
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """List this peer's models, warm or cold, and their memory."""
    with errors_as_exit(), MeshClient(resolve_address(addr, home)) as mesh:
        listed = mesh.models()
    if json_out:
        print_json(listed)
        return
    table = Table("model", "state", "size", "memory", "slots", "quant", "warm for", "note")
    for m in listed:
        table.add_row(
            m.name,
            str(m.state),
            human_bytes(m.size_bytes),
            human_bytes(m.memory_bytes),
            str(m.slots),
            m.quantization or "-",
            "pinned" if m.pinned else human_until(m.warm_until),
            m.error,
        )
    console.print(table)


@app.command()
def health(
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Is the daemon serving, and what is warm? Exit 0 when serving, 1 otherwise."""
    address = resolve_address(addr, home)
    with errors_as_exit(), MeshClient(address, timeout=5.0) as mesh:
        serving = mesh.health()
        listed = mesh.models() if serving else []
    warm_models = [m.name for m in listed if m.state == "warm"]
    if json_out:
        print_json({"address": address, "serving": serving, "warm": warm_models})
    else:
        state = "[green]serving[/]" if serving else "[red]not serving[/]"
        console.print(f"{address}: {state}; warm: {', '.join(warm_models) or 'none'}")
    raise typer.Exit(0 if serving else 1)


@app.command()
def demo(
    max_tokens: int = typer.Option(48, "--max-tokens", "-n", help="Tokens in the answer."),
    home: Path | None = typer.Option(None, help="Where the demo keeps its model and daemons."),
) -> None:
    """Show cold vs warm vs preemptively warmed time to first token on a real model."""
    from .demo import run_demo

    with errors_as_exit():
        run_demo(home, max_tokens)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as error:  # raised while parsing options outside a command body
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(1)
