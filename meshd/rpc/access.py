"""Getting in and running the mesh: the founder's join listener, and the local Admin service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio

from meshd.addresses import reachable_hosts
from meshd.errors import AccessDenied, ConfigError, InvalidRequest, Overloaded
from meshd.logthrottle import Throttle, source_of
from meshd.rpc.channels import server_options
from meshd.rpc.status import ErrorsAsStatus
from meshd.security import pki
from meshd.security.invite import DEFAULT_TTL_S, InviteCode, check_host
from meshd.security.trust import Trust
from meshd.tasks import stop_task
from meshd.v1 import access_pb2 as apb, access_pb2_grpc

log = logging.getLogger("meshd.access")
JOIN_MESSAGE_BYTES = 64 * 1024  # a secret and a CSR
JOIN_CONNECTIONS = 16  # anyone on the network may connect while an invite is open


class JoinServicer(access_pb2_grpc.JoinServicer):
    """Trades a one-time secret and a CSR for a peer certificate; logs every refusal."""

    def __init__(self, trust: Trust, addresses: Callable[[], list[str]]) -> None:
        self.trust, self.addresses = trust, addresses
        self._throttle = Throttle()

    async def Join(
        self, request: apb.JoinRequest, context: aio.ServicerContext[Any, Any]
    ) -> apb.JoinReply:
        try:
            cert = self.trust.sign_joiner(request.secret, request.csr)
        except (InvalidRequest, Overloaded) as error:
            source = source_of(context.peer())
            self._throttle.log(
                log, logging.WARNING, source, "refused a join from %s: %s", source, error
            )
            if isinstance(error, Overloaded):
                raise
            raise AccessDenied(str(error)) from None
        assert self.trust.ca is not None
        return apb.JoinReply(
            certificate=cert,
            ca_certificate=pki.cert_pem(self.trust.ca),
            addresses=self.addresses(),
            revocations=self.trust.revocations_wire,
        )


class JoinDesk:
    """The founder's join listener: open while an invite is, closed when none is left."""

    def __init__(self, trust: Trust, host: str, addresses: Callable[[], list[str]]) -> None:
        self.trust, self.host = trust, host
        self.servicer = JoinServicer(trust, addresses)
        self.server: aio.Server | None = None
        self.port = 0
        self._watch: asyncio.Task[None] | None = None

    async def open(self, port: int = 0) -> int:
        """Start listening (idempotent), on port if given (0: any free one); returns the port."""
        if self.server is None:
            ca_key, ca = self.trust.keyring.ca_key(), self.trust.ca
            assert ca is not None
            # The CA certificate is the server certificate here: a joining peer fetches it
            # unverified, checks its fingerprint against the code, then trusts it for this call.
            tls = grpc.ssl_server_credentials([(pki.key_pem(ca_key), pki.cert_pem(ca))])
            server = aio.server(
                options=server_options(JOIN_MESSAGE_BYTES, JOIN_CONNECTIONS),
                interceptors=[ErrorsAsStatus()],
            )
            access_pb2_grpc.add_JoinServicer_to_server(self.servicer, server)
            # The port open codes name, if it is still free; any port otherwise.
            self.port = _bind(server, f"{self.host}:{port}", tls) if port else 0
            self.port = self.port or _bind(server, f"{self.host}:0", tls)
            if self.port == 0:
                raise OSError("the join listener cannot bind any port")
            await server.start()
            self.server = server
            self._watch = asyncio.create_task(self._close_when_unused(), name="meshd-join-desk")
            log.info("join listener open on port %d while an invite is", self.port)
        return self.port

    async def _close_when_unused(self) -> None:
        while True:
            self.trust.invites.expire()
            expiry = self.trust.invites.next_expiry()
            if expiry is None:
                break
            await asyncio.sleep(min(max(expiry - time.monotonic(), 0.05), 1.0))
        server, self.server = self.server, None
        if server is not None:
            await server.stop(1.0)
            log.info("join listener closed: no invite is open")

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        watch, self._watch = self._watch, None
        await stop_task(watch)
        server, self.server = self.server, None
        if server is not None:
            await server.stop(0)


class AdminServicer(access_pb2_grpc.AdminServicer):
    """Invites and revocations; the Guard serves this to the Unix socket only."""

    def __init__(self, trust: Trust, desk: JoinDesk) -> None:
        self.trust, self.desk = trust, desk

    async def CreateInvite(
        self, request: apb.CreateInviteRequest, context: aio.ServicerContext[Any, Any]
    ) -> apb.CreateInviteReply:
        if not self.trust.keyring.is_founder() or self.trust.ca is None:
            raise ConfigError(
                "only a CA holder can invite: the founder, or a peer that ran `meshd ca restore`"
            )
        ttl = request.ttl_seconds or DEFAULT_TTL_S
        hosts = [check_host(host) for host in request.addresses]
        secret = self.trust.create_invite(ttl)
        port = await self.desk.open(self.trust.invite_port)
        if port != self.trust.invite_port:
            self.trust.invite_port = port
            self.trust.save_invites()
        hosts = hosts or reachable_hosts(self.desk.host)
        code = InviteCode(
            tuple(f"{h}:{port}" for h in hosts), pki.fingerprint(self.trust.ca), secret
        )
        return apb.CreateInviteReply(code=code.encode(), expires_unix=time.time() + ttl)

    async def Revoke(
        self, request: apb.RevokeRequest, context: aio.ServicerContext[Any, Any]
    ) -> apb.RevokeReply:
        revoked = self.trust.revoke(request.name)
        number = self.trust.revocations.number
        return apb.RevokeReply(serials=[str(r.serial) for r in revoked], list_number=number)


def _bind(server: aio.Server, address: str, tls: grpc.ServerCredentials) -> int:
    """The port bound, or 0 when the address is taken."""
    try:
        return int(server.add_secure_port(address, tls))
    except RuntimeError:
        return 0
