"""`meshd ca backup|restore`: the mesh CA outlives any one machine."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from meshd.errors import ConfigError
from meshd.fsutil import read_small_file

from .common import HomeOption, console, errors_as_exit, settings_of

app = typer.Typer(help="Back up the mesh CA, or make this peer a CA holder.", no_args_is_help=True)

PassphraseFile = typer.Option(
    None, "--passphrase-file", help="Read the passphrase from this file.", show_default="ask"
)


def _passphrase(path: Path | None, confirm: bool) -> str:
    if path is not None:
        from meshd.security.cabackup import MAX_PASSPHRASE_BYTES

        raw = read_small_file(path, MAX_PASSPHRASE_BYTES, "passphrase file")
        return raw.decode("utf-8", errors="replace").strip()
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for the passphrase: give --passphrase-file")
    return str(typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm))


@app.command()
def backup(
    out: Path = typer.Option(..., "--out", "-o", help="The backup file to write (0600)."),
    passphrase_file: Path | None = PassphraseFile,
    home: Path | None = HomeOption,
) -> None:
    """Write the CA key and certificate, encrypted with a passphrase (keep both safe, apart)."""
    from meshd.fsutil import atomic_write_bytes
    from meshd.security.keyring import Keyring

    with errors_as_exit():
        if out.exists():
            raise ConfigError(f"{out} exists; pick another --out")
        keyring = Keyring(settings_of(home).home)
        if not keyring.is_founder():
            raise ConfigError("this peer holds no CA key: back it up on the founder")
        sealed = keyring.ca_backup(_passphrase(passphrase_file, confirm=True))
        atomic_write_bytes(out, sealed, 0o600)
    console.print(f"wrote {out}: restore it on another peer with `meshd ca restore`")


@app.command()
def restore(
    backup_file: Path = typer.Argument(..., help="A file `meshd ca backup` wrote."),
    passphrase_file: Path | None = PassphraseFile,
    home: Path | None = HomeOption,
) -> None:
    """Make this peer a CA holder: it can invite and revoke, like the founder."""
    from meshd.security.keyring import Keyring

    with errors_as_exit():
        from meshd.security.cabackup import MAX_BACKUP_BYTES

        data = read_small_file(backup_file, MAX_BACKUP_BYTES, "backup file")
        Keyring(settings_of(home).home).ca_restore(data, _passphrase(passphrase_file, False))
    console.print("this peer now holds the mesh CA: `meshd invite` and `meshd revoke` work here")
