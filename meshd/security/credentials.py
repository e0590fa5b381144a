"""What a TLS channel needs, as plain bytes: kept apart from `pki` and `keyring` so that a client
on the Unix socket (the CLI) never loads the cryptography library."""

from __future__ import annotations

from dataclasses import dataclass

# The name every peer certificate carries and every peer checks: the mesh, not a host name,
# is what a peer proves (addresses change; Macs move between networks).
PEER_SERVER_NAME = "peer.meshd"
# The founder's join listener presents the CA certificate itself (see meshd.rpc.join).
CA_SERVER_NAME = "ca.meshd"


@dataclass(frozen=True)
class TlsCredentials:
    """What a TLS channel or server needs: the mesh CA, a certificate and its key (all PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
