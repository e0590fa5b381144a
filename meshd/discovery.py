"""mDNS on the LAN: announce this peer, find the others. The only module that imports zeroconf.

Service `_meshd._tcp.local.` with TXT: peer id, mesh id, version and port; what a peer has warm
and how busy it is travel in heartbeats, not here. Discovery only hands addresses to the peer
table; a peer becomes live (and routable) only after it answers a gRPC heartbeat, and services
of another mesh are never handed over.
On close the service is unregistered, which sends the mDNS goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger("meshd.discovery")
SERVICE_TYPE = "_meshd._tcp.local."


def txt_record(peer_id: str, mesh_id: str, version: str, port: int) -> dict[str, str]:
    """The TXT properties."""
    return {"peer": peer_id, "mesh": mesh_id, "ver": version, "port": str(port)}


class Discovery:
    """Announces this peer and reports peers of the same mesh as they appear."""

    def __init__(
        self,
        peer_id: str,
        mesh_id: str,
        addresses: list[str],
        port: int,
        properties: dict[str, str],
        found: Callable[[str, str], None],
    ) -> None:
        self.peer_id, self.mesh_id = peer_id, mesh_id
        self.addresses = addresses
        self.port, self.properties, self.found = port, properties, found
        self.zeroconf: AsyncZeroconf | None = None
        self.browser: AsyncServiceBrowser | None = None
        self.info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Register the service and start browsing (idempotent)."""
        if self.zeroconf is not None or not self.addresses:
            return
        self.zeroconf = AsyncZeroconf(interfaces=self.addresses)
        self.info = self._service_info()
        # The instance name is the peer id, unique by construction: probing the LAN for a
        # name conflict (about a second) would only delay the first announcement.
        await self.zeroconf.async_register_service(self.info, cooperating_responders=True)
        self.browser = AsyncServiceBrowser(
            self.zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )
        log.info("announcing %s on %s", SERVICE_TYPE, ", ".join(self.addresses))

    async def close(self) -> None:
        """Say goodbye on the network and stop (idempotent)."""
        zeroconf, self.zeroconf = self.zeroconf, None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if zeroconf is None:
            return
        if self.browser is not None:
            await self.browser.async_cancel()
        with contextlib.suppress(Exception):  # the goodbye is best effort on a dying network
            await zeroconf.async_unregister_all_services()
        await zeroconf.async_close()

    def _service_info(self) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.peer_id}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties=self.properties,
            server=f"{self.peer_id}.local.",
        )

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        log.debug("mDNS %s %s", state_change.name, name)
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        if self.zeroconf is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self.zeroconf.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if props.get("mesh") != self.mesh_id or props.get("peer") == self.peer_id:
            return
        log.debug("mDNS resolved %s: %s", name, props)
        for address in info.parsed_addresses(IPVersion.V4Only):  # IPv6: static peers
            self.found(f"{address}:{info.port}", props.get("peer", ""))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
