"""Addresses that follow the network: this machine's LAN addresses are read again every few
seconds, and a change is handed on (the node then updates what it advertises and announces,
and starts mDNS once a usable interface appears). A daemon that starts at boot before the
network is up, or a Mac whose DHCP lease changes, stays reachable without a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from meshd.tasks import Periodic

log = logging.getLogger("meshd.netwatch")
WATCH_EVERY_S = 5.0


class AddressWatch:
    """Reads the addresses with `read` (in a thread) every `every` seconds; calls `changed`
    with the new list when it differs from the last one."""

    def __init__(
        self,
        read: Callable[[], list[str]],
        changed: Callable[[list[str]], Awaitable[None]],
        every: float = WATCH_EVERY_S,
    ) -> None:
        self.read, self.changed, self.every = read, changed, every
        self.current: list[str] = []
        self._loop = Periodic("meshd-address-watch", self._step, every, log)
        self._failures = 0

    def start(self, current: list[str]) -> None:
        """Watch from the addresses in use now (idempotent)."""
        if not self._loop.running:
            self.current = list(current)
            self._loop.start()

    async def _step(self) -> None:
        await self.check()

    async def check(self) -> bool:
        """Read once; True when the addresses changed (and `changed` was told)."""
        try:
            found = await asyncio.to_thread(self.read)
        except Exception as error:  # a failed read changes nothing; the next one may work
            self._failures += 1
            if self._failures == 1:
                log.warning("cannot read this machine's addresses: %s", error)
            return False
        self._failures = 0
        if found == self.current:
            return False
        log.info(
            "network addresses changed: %s → %s",
            ", ".join(self.current) or "none",
            ", ".join(found) or "none",
        )
        self.current = found
        await self.changed(found)
        return True

    async def close(self) -> None:
        await self._loop.close()
