"""The heartbeat over gRPC: every address that is due, on a fixed cadence, learning addresses
from the replies. Only a good heartbeat makes a peer live in the table (meshd.peers); which
learned addresses are taken and how often a failing one is dialled is meshd.gossip's to say."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from grpc import aio

from meshd.addresses import is_loopback
from meshd.gossip import MAX_PER_TELLER, host_of
from meshd.lanblock import LanBlockHint
from meshd.logthrottle import Throttle
from meshd.peers import PeerTable
from meshd.rpc import channels, convert
from meshd.security.credentials import is_peer_id
from meshd.security.trust import Trust
from meshd.tasks import stop_task
from meshd.types import PeerInfo
from meshd.v1 import mesh_pb2 as pb

log = logging.getLogger("meshd.membership")


# What an unreachable or slow peer answers; anything else is a refusal worth the owner's eye.
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Membership:
    """Heartbeats every known address on a fixed cadence and learns addresses from the replies."""

    def __init__(
        self,
        table: PeerTable,
        pool: channels.ChannelPool,
        local_info: Callable[[], PeerInfo],
        interval: float,
        trust: Trust,
    ) -> None:
        self.table, self.pool, self.local_info, self.interval = table, pool, local_info, interval
        self.trust = trust
        self._task: asyncio.Task[None] | None = None
        self._first_beats: set[asyncio.Task[None]] = set()
        self._throttle = Throttle()
        self.lan_block = LanBlockHint()

    def _refused(self, address: str, exc: grpc.RpcError) -> None:
        """A heartbeat the peer refused (too large, permission, a bug) is logged, once a
        minute per address: an unreachable one is just backed off."""
        code = exc.code() if isinstance(exc, aio.AioRpcError) else None
        details = (exc.details() or "")[:200] if isinstance(exc, aio.AioRpcError) else ""
        if code == grpc.StatusCode.UNAVAILABLE:
            self.lan_block.dial_failed(details)
        if code is None or code in _UNREACHABLE:
            return
        self._throttle.log(
            log, logging.WARNING, address, "heartbeat to %s refused: %s %s", address, code.name,
            details,
        )  # fmt: skip

    def start(self) -> None:
        """Begin heartbeating (idempotent); a newly found address is heartbeaten at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="meshd-heartbeat")
            self.table.on_new = self._beat_now
            self.table.on_forget = self.pool.discard

    def _beat_now(self, address: str) -> None:
        task = asyncio.get_running_loop().create_task(self.beat(address, self._request()))
        self._first_beats.add(task)
        task.add_done_callback(self._first_beats.discard)

    async def close(self) -> None:
        """Stop heartbeating (idempotent)."""
        task, self._task = self._task, None
        self.table.on_new = None
        self.table.on_forget = None
        for first in list(self._first_beats):
            first.cancel()
        await asyncio.gather(*self._first_beats, return_exceptions=True)
        await stop_task(task)

    async def _run(self) -> None:
        next_round = time.monotonic()
        while True:
            addresses = self.table.due(time.monotonic())
            if addresses:
                request = self._request()
                await asyncio.gather(*(self.beat(a, request) for a in addresses))
            next_round += self.interval
            await asyncio.sleep(max(0.0, next_round - time.monotonic()))

    def _request(self) -> pb.HeartbeatRequest:
        """What every heartbeat of a round says; the revocation list itself is added per
        address, only where that peer's list is older (see `_for`)."""
        return pb.HeartbeatRequest(
            sender=convert.peer_info_to_pb(self.local_info()),
            revocations_number=self.trust.revocations.number,
        )

    def _for(self, request: pb.HeartbeatRequest, known: int) -> pb.HeartbeatRequest:
        """The request for a peer whose list was `known` at its last reply (-1: unknown)."""
        if known >= request.revocations_number or not self.trust.revocations_wire:
            return request
        with_list = pb.HeartbeatRequest()
        with_list.CopyFrom(request)
        with_list.revocations = self.trust.revocations_wire
        return with_list

    async def beat(self, address: str, request: pb.HeartbeatRequest, proving: bool = False) -> None:
        """One heartbeat; a failure leaves the peer's last good time where it was and backs off.
        An answer is believed only over a TLS handshake that proved the certificate there names
        the peer id the answer claims: a first answer (or a new id) is asked again that way."""
        entry = self.table.entries.get(address)
        if entry is None:
            return  # forgotten meanwhile
        expected = entry.claimed
        stub = channels.aio_mesh_stub(self.pool.get(address, expected))
        self.table.dialling(address)
        started = time.monotonic()
        try:
            reply = await stub.Heartbeat(
                self._for(request, entry.revocations_number), timeout=self.interval * 0.8
            )
        except (grpc.RpcError, aio.AioRpcError) as exc:
            entry.claimed = ""
            self.table.record_failure(address, time.monotonic(), self.interval)
            self._refused(address, exc)
            return
        now = time.monotonic()
        entry.revocations_number = reply.revocations_number
        self.trust.adopt(reply.revocations, reply.revocations_number or None)
        info = convert.peer_info_from_pb(reply.peer)
        if info.peer_id != expected:
            if proving or not is_peer_id(info.peer_id):  # it named one id, then another
                entry.claimed = ""
                self.table.record_failure(address, now, self.interval)
                return
            entry.claimed = info.peer_id
            await self.beat(address, request, proving=True)
            return
        self.table.record_ok(address, info, now - started, now)
        if address not in self.table.entries:
            return  # itself, another mesh or revoked: nothing it says is taken
        local = is_loopback(host_of(address))
        for learned in info.known_addresses[: 2 * MAX_PER_TELLER]:
            self.table.add(learned, teller=info.peer_id, teller_local=local)
