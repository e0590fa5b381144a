"""This peer's stable id, kept in the meshd home."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from meshd.fsutil import atomic_write_bytes

PEER_ID_FILE = "peer_id"
_PEER_ID = re.compile(r"^[a-z0-9-]{4,64}$")


def load_or_create_peer_id(home: Path) -> str:
    """The id stored in home, made on first use."""
    path = home / PEER_ID_FILE
    if path.exists():
        stored = path.read_text().strip()
        if _PEER_ID.match(stored):
            return stored
    peer_id = "peer-" + secrets.token_hex(6)
    atomic_write_bytes(path, (peer_id + "\n").encode())
    return peer_id
