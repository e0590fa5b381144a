"""What every command shares: finding the daemon, printing data, turning errors into one line."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from meshd.config import Settings, load_settings
from meshd.daemonfile import running_daemon_address, running_daemon_http, running_daemon_socket
from meshd.errors import ConfigError, MeshdError, PeerUnavailable, quoted

if TYPE_CHECKING:  # the CLI imports what a command uses when it runs it
    from meshd.client import MeshClient

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

AddrOption = typer.Option(
    None,
    "--addr",
    "--via",
    "-a",
    envvar="MESHD_ADDR",
    help="Daemon address host:port.",
    show_default="the running daemon of --home, else its listen",
)
HomeOption = typer.Option(
    None,
    "--home",
    envvar="MESHD_HOME",
    help="meshd home folder (config, state).",
    show_default="per-user data folder",
)
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")


def setting(name: str) -> str:
    """A setting's default as help shows it, from meshd.config (durations as 30m, 90s)."""
    from dataclasses import fields

    from meshd.config import Settings

    (value,) = [f.default for f in fields(Settings) if f.name == name]
    if name in DURATIONS and isinstance(value, float):
        return human_duration(value)
    return str(value)


DURATIONS = frozenset({"keep_alive"})


@functools.cache
def settings_of(home: Path | None) -> Settings:
    """The settings of home (meshd.toml, MESHD_* variables), read once per invocation however
    many helpers of the command ask."""
    return load_settings(home)


def resolve_address(addr: str | None, home: Path | None) -> str:
    """--addr if given, else the Unix socket of the daemon running from home; a clear error
    when none runs there (and when the home's meshd.toml is broken, as the daemon would)."""
    if addr:
        from meshd.gossip import peer_address

        if not addr.startswith("unix:") and peer_address(addr) is None:
            raise ConfigError(f"--addr must be host:port or unix:PATH, got {quoted(addr)}")
        return addr
    settings = settings_of(home)
    running = running_daemon_socket(settings.home) or running_daemon_address(settings.home)
    if running:
        return running
    raise PeerUnavailable(
        f"no meshd daemon is running from {settings.home}: start one with `meshd serve` "
        "(or `meshd service install`), or ask another with --addr HOST:PORT"
    )


def open_client(addr: str | None, home: Path | None, **options: Any) -> MeshClient:
    """A client for the command's daemon: its Unix socket, or TCP with this peer's mesh
    certificate when it has one (plaintext otherwise: a daemon run with --insecure-dev)."""
    from meshd.client import MeshClient

    address = resolve_address(addr, home)
    credentials = None
    if not address.startswith("unix:"):
        from meshd.security.keyring import Keyring

        with contextlib.suppress(ConfigError):
            credentials = Keyring(settings_of(home).home).credentials()
    return MeshClient(address, credentials=credentials, **options)


def local_socket(home: Path | None) -> str:
    """The Unix socket of the daemon of home; a clear error when it is not running."""
    return _running(home, running_daemon_socket, "")


def running_http(home: Path | None) -> str:
    """The HTTP base URL of the daemon of home; a clear error when none serves HTTP."""
    return _running(home, running_daemon_http, " with HTTP (on unless --no-http)")


def _running(home: Path | None, find: Callable[[Path], str | None], what: str) -> str:
    settings = settings_of(home)
    found = find(settings.home)
    if found is None:
        raise PeerUnavailable(
            f"no meshd daemon{what} is running from {settings.home}: "
            "start it with `meshd service install` or `meshd serve`"
        )
    return found


@contextlib.contextmanager
def errors_as_exit() -> Iterator[None]:
    """Print a MeshdError as one line on stderr and exit 1."""
    try:
        yield
    except MeshdError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(1) from None


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(value: Any) -> None:
    """Dataclasses, enums and lists as JSON on stdout."""
    sys.stdout.write(json.dumps(_plain(value), indent=2) + "\n")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_until(unix: float) -> str:
    """Time left until a Unix time: '4m 10s', or '-' when unset."""
    if unix <= 0:
        return "-"
    if not math.isfinite(unix):
        return "ever (pinned)"
    left = max(unix - time.time(), 0)
    if left >= 2 * 86400:
        return f"{left / 86400:.0f}d"
    if left >= 3600:
        return f"{left / 3600:.1f}h"
    return f"{int(left // 60)}m {int(left % 60):02d}s" if left >= 60 else f"{left:.0f}s"


def human_duration(seconds: float) -> str:
    """3600 -> '1h', 1800 -> '30m', 90 -> '1m 30s', 604800 -> '7d'."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def human_ago(unix: float) -> str:
    """How long ago a Unix time was: '3s ago', '2m ago', or 'never'."""
    if unix <= 0:
        return "never"
    ago = max(time.time() - unix, 0)
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago"
