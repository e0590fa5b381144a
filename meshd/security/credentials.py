"""What a TLS channel needs, as plain bytes: kept apart from `pki` and `keyring` so that a client
on the Unix socket (the CLI) never loads the cryptography library."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The name every peer certificate carries and every peer checks: the mesh, not a host name,
# is what a peer proves (addresses change; Macs move between networks).
PEER_SERVER_NAME = "peer.meshd"
PEER_ID = re.compile(r"peer-[a-z2-7]{16}")  # base32 of 80 bits


def is_peer_id(text: str) -> bool:
    """Whether text has the form of a peer id (what pki.peer_id_of makes)."""
    return PEER_ID.fullmatch(text) is not None


def peer_server_name(peer_id: str) -> str:
    """The name a peer's certificate carries for its own id, checked by whoever dials a peer
    it knows by id: a certificate proves which peer answers, not only that one of the mesh
    does."""
    return f"{peer_id}.{PEER_SERVER_NAME}"


# The founder's join listener presents the CA certificate itself (see meshd.rpc.join).
CA_SERVER_NAME = "ca.meshd"


@dataclass(frozen=True)
class TlsCredentials:
    """What a TLS channel or server needs: the mesh CA, a certificate and its key (all PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
