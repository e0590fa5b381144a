"""The `meshd` command: run a peer and talk to it."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer

from meshd import __version__
from meshd.config import load_settings
from meshd.errors import MeshdError, PeerUnavailable

from .common import HomeOption, console, err_console, errors_as_exit, setting

LOG_LEVELS = ("debug", "info", "warning", "error")

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


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def _log_to(value: str) -> str:
    from meshd.logfile import DESTINATIONS

    if value not in DESTINATIONS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DESTINATIONS)}")
    return value


def serve(
    model: list[str] = typer.Option([], "--model", "-m", help="NAME=PATH of a GGUF; repeat."),
    listen: str | None = typer.Option(
        None, help="host:port to serve on, mutual TLS only.", show_default=setting("listen")
    ),
    home: Path | None = HomeOption,
    slots: int | None = typer.Option(
        None, help="Concurrent requests per model.", show_default=setting("slots")
    ),
    context: int | None = typer.Option(
        None, help="Context tokens per slot.", show_default=setting("context")
    ),
    threads: int | None = typer.Option(
        None, help="llama.cpp threads.", show_default="one per performance or physical core"
    ),
    pin: list[str] = typer.Option([], help="Keep this model warm always; repeat."),
    keep_alive: str | None = typer.Option(
        None, help="Keep an idle model warm this long.", show_default=setting("keep_alive")
    ),
    memory_budget: str | None = typer.Option(
        None, help="Bytes for models.", show_default="75% of RAM; 2/3 on Apple Silicon up to 36 GiB"
    ),
    max_queue: int | None = typer.Option(
        None, help="Queued requests per model.", show_default=setting("max_queue")
    ),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Read weights into RAM, not mmap."),
    peer: list[str] = typer.Option([], "--peer", help="Static peer host:port; repeat."),
    mesh_id: str | None = typer.Option(
        None, help="With --insecure-dev: peers of this mesh only (a real mesh: from its CA)."
    ),
    advertise: str | None = typer.Option(None, help="host:port other peers use for this one."),
    no_discovery: bool = typer.Option(False, "--no-discovery", help="No mDNS on the LAN."),
    http_listen: str | None = typer.Option(
        None,
        help="host:port of the HTTP (OpenAI-compatible) API.",
        show_default=setting("http_listen"),
    ),
    no_http: bool = typer.Option(False, "--no-http", help="No HTTP API."),
    insecure_dev: bool = typer.Option(
        False,
        "--insecure-dev",
        help="Outside a mesh, serve plaintext TCP with no authentication (local experiments).",
    ),
    log_level: str = typer.Option(
        "info", help="debug, info, warning or error.", callback=_log_level
    ),
    log_to: str = typer.Option(
        "both",
        help="both, file (logs/meshd.log in the home, rotated) or stderr.",
        callback=_log_to,
    ),
) -> None:
    """Run a peer in the foreground (what launchd or systemd runs)."""
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
        "peers": peer or None,
        "mesh_id": mesh_id,
        "advertise": advertise,
        "discovery": False if no_discovery else None,
        "insecure_dev": True if insecure_dev else None,
        "http_listen": http_listen,
        "http": False if no_http else None,
    }
    with errors_as_exit():
        settings = load_settings(home, flags)
        from meshd.logfile import setup_logging

        setup_logging(
            settings.home, log_level, log_to, settings.log_max_bytes, settings.log_backups
        )
        if settings.insecure_dev:
            err_console.print(
                "[bold red]INSECURE (--insecure-dev):[/] plaintext TCP without authentication;"
                " for local experiments only, never on a network you share."
            )
        import asyncio

        from meshd.node import Node

        try:
            node = Node(settings)
            asyncio.run(node.run_until_signalled())
        except OSError as exc:
            raise PeerUnavailable(f"cannot serve on {settings.listen}: {exc}") from None


def demo(
    max_tokens: int = typer.Option(48, "--max-tokens", "-n", help="Tokens in the answer."),
    home: Path | None = typer.Option(None, help="Where the demo keeps its model and daemons."),
) -> None:
    """Show cold vs warm vs preemptively warmed time to first token on a real model."""
    from .demo import run_demo

    with errors_as_exit():
        run_demo(home, max_tokens)


# Every command by name, and where it lives: a command imports only its own module, so
# `meshd health` does not pay for the imports of `meshd pull` or `meshd service`.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("talk", "generate"),
    "warm": ("talk", "warm"),
    "models": ("talk", "models"),
    "health": ("talk", "health"),
    "status": ("talk", "status"),
    "open": ("talk", "open_page"),
    "pull": ("store", "pull"),
    "rm": ("store", "rm"),
    "gc": ("store", "gc"),
    "init": ("mesh", "init"),
    "invite": ("mesh", "invite"),
    "join": ("mesh", "join"),
    "revoke": ("mesh", "revoke"),
    "leave": ("mesh", "leave"),
    "doctor": ("doctor", "doctor"),
    "logs": ("logs", "logs"),
    "pause": ("owner", "pause"),
    "resume": ("owner", "resume"),
}
GROUPS = {"service": "service", "ca": "ca"}  # sub-applications: name -> module
HERE: dict[str, Callable[..., None]] = {"serve": serve, "demo": demo}


def register(only: str | None = None) -> None:
    """Add the commands to the app: only the one named, when it is one, else all of them (in
    the order help lists them)."""
    every = ["serve", *COMMANDS, "demo", *GROUPS]
    names = [only] if only in every else every
    for name in names:
        if name in HERE:
            app.command(name=name)(HERE[name])
        elif name in GROUPS:
            module = importlib.import_module(f"{__package__}.{GROUPS[name]}")
            app.add_typer(module.app, name=name)
        else:
            module_name, attribute = COMMANDS[name]
            module = importlib.import_module(f"{__package__}.{module_name}")
            app.command(name=name)(getattr(module, attribute))


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and exit 1; the
    traceback of an unexpected one only with MESHD_DEBUG=1."""
    try:
        if sys.argv[1:2] != ["--version"]:  # the version needs no command
            register(sys.argv[1] if len(sys.argv) > 1 else None)
        app()
    except MeshdError as error:  # raised outside a command's errors_as_exit
        _fail(str(error))
    except OSError as error:  # the environment: a file, a folder, a socket
        where = f": {error.filename}" if error.filename else ""
        _fail(f"{error.strerror or error}{where}")
    except Exception as error:
        if os.environ.get("MESHD_DEBUG"):
            raise
        _fail(f"unexpected {type(error).__name__}: {error} (MESHD_DEBUG=1 shows where)")


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(1)
