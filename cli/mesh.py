"""`meshd init|invite|join|revoke|leave`: make a mesh, let friends in, and show people out."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from meshd.config import MODEL_NAME, parse_duration
from meshd.errors import ConfigError

if TYPE_CHECKING:
    from meshd.v1.access_pb2_grpc import AdminStub


from .common import HomeOption, console, err_console, errors_as_exit, local_socket, settings_of

Reply = TypeVar("Reply")


def init(
    name: str = typer.Option(..., "--name", help="A name for the mesh, e.g. friends."),
    home: Path | None = HomeOption,
) -> None:
    """Create a mesh (its CA) with this machine as the founding peer."""
    from meshd.daemonfile import running_daemon
    from meshd.security import pki
    from meshd.security.keyring import Keyring

    with errors_as_exit():
        settings = settings_of(home)
        keyring = Keyring(settings.home)
        ca = keyring.init_mesh(name)
    console.print(f"created mesh [bold]{name}[/] ({pki.mesh_id_of(ca)})")
    console.print(f"this peer: {keyring.peer_id()}", highlight=False)
    fingerprint = pki.fingerprint(ca).hex()
    console.print(f"CA fingerprint: sha256:{fingerprint}", highlight=False, soft_wrap=True)
    if running_daemon(settings.home) is not None:
        console.print("the daemon running from this home started outside the mesh: restart it")
    console.print("next: `meshd service install` (or `meshd serve`), then `meshd invite`")


def invite(
    ttl: str = typer.Option("1h", "--ttl", help="How long the code works (it works once)."),
    address: list[str] = typer.Option(
        [],
        "--address",
        help="Host friends reach this peer at; repeat.",
        show_default="LAN addresses",
    ),
    client: bool = typer.Option(False, "--client", help="An app credential bundle instead."),
    name: str | None = typer.Option(None, "--name", help="The app's name (with --client)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Bundle file.", show_default="NAME.meshd.json"
    ),
    api_key: bool = typer.Option(
        False, "--api-key", help="With --client: print an HTTP API key instead of a bundle."
    ),
    home: Path | None = HomeOption,
) -> None:
    """Print a one-time code for a friend's `meshd join`, or (--client) write an app bundle."""
    from meshd.security.invite import MAX_TTL_S
    from meshd.v1 import access_pb2 as apb

    with errors_as_exit():
        if client and api_key:
            _api_key(name, home)
            return
        if client:
            _client_bundle(name, out, address, home)
            return
        if api_key:
            raise ConfigError("--api-key goes with --client --name APP")
        seconds = parse_duration(ttl)
        if not 0 < seconds <= MAX_TTL_S:
            raise ConfigError("--ttl must be longer than 0 and at most 7d (try 10m or 1h)")
        request = apb.CreateInviteRequest(ttl_seconds=seconds, addresses=address)
        reply = admin_call(home, lambda stub: stub.CreateInvite(request, timeout=10))
    expires = dt.datetime.fromtimestamp(reply.expires_unix).strftime(
        "%H:%M" if seconds < 12 * 3600 else "%a %d %b %H:%M"
    )
    console.print(f"on your friend's machine, before {expires} (works once):\n")
    console.print(f"    meshd join {reply.code}\n", highlight=False, soft_wrap=True)


def _api_key(name: str | None, home: Path | None) -> None:
    from meshd.security.keyring import Keyring

    if not name or not MODEL_NAME.match(name):
        raise ConfigError("--client needs --name: letters, digits, '.', '_' or '-'")
    key = Keyring(settings_of(home).home).issue_api_key(name)
    print(key)  # stdout alone, so that scripts can take it
    err_console.print(
        f"the API key of {name}: shown once, only its hash is kept; send it as "
        "`Authorization: Bearer …` to any peer's HTTP API (revoke: `meshd revoke "
        f"{name}`)",
        highlight=False,
    )


def _client_bundle(name: str | None, out: Path | None, hosts: list[str], home: Path | None) -> None:
    from meshd.addresses import reachable_hosts
    from meshd.daemonfile import running_daemon_address
    from meshd.fsutil import atomic_write_bytes
    from meshd.security.keyring import Keyring

    if not name or not MODEL_NAME.match(name):
        raise ConfigError("--client needs --name: letters, digits, '.', '_' or '-'")
    path = out or Path(f"{name}.meshd.json")
    if path.exists():
        raise ConfigError(f"{path} exists; pick another --out")
    settings = settings_of(home)
    running = running_daemon_address(settings.home)
    host, _, port = (running or settings.listen).rpartition(":")
    addresses = [f"{h}:{port}" for h in (hosts or reachable_hosts(host))]
    atomic_write_bytes(path, Keyring(settings.home).client_bundle(name, addresses), 0o600)
    console.print(f"wrote {path} (0600: it holds the app's private key)", highlight=False)
    console.print(f'in the app: MeshClient.from_bundle("{path.name}")', highlight=False)


def join(
    code: str = typer.Argument(..., help="The code `meshd invite` printed."),
    no_service: bool = typer.Option(
        False, "--no-service", help="Do not install and start the service."
    ),
    at_boot: bool | None = typer.Option(
        None,
        "--at-boot/--at-login",
        help="Start the service at boot, with nobody logged in, or at login.",
        show_default="asked; at boot on macOS when it cannot ask",
    ),
    home: Path | None = HomeOption,
) -> None:
    """Join a friend's mesh: identity, signed certificate, config, and the service started."""
    from meshd.daemonfile import stop_daemon
    from meshd.rpc.join import join_mesh

    from .service import default_at_boot, install_service

    with errors_as_exit():
        settings = settings_of(home)
        joined = join_mesh(settings.home, code)
        console.print(
            f"joined mesh [bold]{joined.mesh_name}[/] ({joined.mesh_id}) as {joined.peer_id}"
        )
        if no_service:
            console.print("start serving with `meshd service install` or `meshd serve`")
            return
        if at_boot is None and sys.stdin.isatty():
            at_boot = typer.confirm(
                "Start meshd when this machine boots, even with nobody logged in? (a Mac mini "
                "restarted by an update stays in the mesh)",
                default=True,
            )
        if at_boot is None:
            at_boot = default_at_boot()
        stop_daemon(settings.home, settings.drain_seconds + 5)  # it started outside the mesh
        installed = install_service(settings.home, at_boot, settings.drain_seconds)
    when = "at boot" if installed.at_boot else "at login"
    console.print(f"installed and started the {installed.kind} service ({when}): {installed.path}")


def revoke(
    name: str = typer.Argument(..., help="A peer id or an app name."),
    home: Path | None = HomeOption,
) -> None:
    """Founder: refuse a peer or app from now on, on every peer within seconds."""
    from meshd.daemonfile import running_daemon
    from meshd.security.keyring import Keyring
    from meshd.v1 import access_pb2 as apb

    with errors_as_exit():
        settings = settings_of(home)
        if running_daemon(settings.home) is None:  # offline: the daemon spreads it at start
            _, revoked = Keyring(settings.home).revoke(name)
            serials = [str(r.serial) for r in revoked]
        else:
            request = apb.RevokeRequest(name=name)
            serials = list(admin_call(home, lambda stub: stub.Revoke(request, timeout=10)).serials)
    console.print(f"revoked {name} ({len(serials)} certificate(s)); peers refuse it within seconds")


def leave(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    home: Path | None = HomeOption,
) -> None:
    """Stop serving, remove the service, and forget the mesh (its keys and certificates)."""
    from meshd import service as service_files
    from meshd.daemonfile import stop_daemon
    from meshd.security.keyring import Keyring

    with errors_as_exit():
        settings = settings_of(home)
        keyring = Keyring(settings.home)
        if keyring.ca() is None:
            raise ConfigError(f"{settings.home} belongs to no mesh")
        founder = " This peer holds the mesh CA: nobody can be invited after this." * (
            keyring.is_founder()
        )
        if not yes and not typer.confirm(f"Leave the mesh and forget its keys?{founder}"):
            raise typer.Exit(1)
        if service_files.installed(settings.home):
            service_files.uninstall(settings.home)
        stop_daemon(settings.home, settings.drain_seconds + 5)
        keyring.forget()
    console.print("left the mesh; models and settings are kept")


def admin_call(home: Path | None, call: Callable[[AdminStub], Reply]) -> Reply:
    """Call the local daemon's Admin service over its Unix socket."""
    import grpc

    from meshd.rpc import channels
    from meshd.rpc.status import error_from_rpc

    socket = local_socket(home)
    channel = channels.open_channel(socket)
    try:
        return call(channels.admin_stub(channel))
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, socket) from None
    finally:
        channel.close()
