"""Several hosts on one machine: Linux network namespaces joined by a bridge in its own namespace.

Each host gets one interface with its own address in 10.213.0.0/24 and a multicast route,
so mDNS works between them. Nothing is routed anywhere else: the bridge namespace has no
uplink, and the hosts have no default route. Root only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence

SUBNET = "10.213.0"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"mshprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """n hosts (namespaces) on one bridge; tear down with close(), even after a failure."""

    def __init__(self, n: int) -> None:
        self.tag = secrets.token_hex(2)
        self.bridge = f"mshb{self.tag}"
        self.names = [f"msh{self.tag}h{i}" for i in range(n)]
        self.ips = [f"{SUBNET}.{i + 1}" for i in range(n)]
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.bridge)
        self._made.append(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, (name, ip) in enumerate(zip(self.names, self.ips, strict=True)):
            _ip("netns", "add", name)
            self._made.append(name)
            inside, port = f"v{self.tag}{i}", f"p{self.tag}{i}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", port)
            _ip("link", "set", inside, "netns", name)
            _ip("link", "set", port, "netns", self.bridge)
            _ip("-n", self.bridge, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge, "link", "set", port, "up")
            _ip("-n", name, "link", "set", inside, "name", "eth0")
            _ip("-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def remove_address(self, i: int) -> None:
        """Host i loses its address (a machine up before its network), keeping its routes."""
        _ip("-n", self.names[i], "addr", "del", f"{self.ips[i]}/24", "dev", "eth0")

    def add_address(self, i: int) -> None:
        """Host i gets its address (back), as from DHCP."""
        _ip("-n", self.names[i], "addr", "add", f"{self.ips[i]}/24", "dev", "eth0")
        _ip("-n", self.names[i], "route", "replace", "224.0.0.0/4", "dev", "eth0")

    def prefix(self, i: int) -> Sequence[str]:
        """Command prefix that runs a program on host i."""
        return ("ip", "netns", "exec", self.names[i])

    def close(self) -> None:
        """Delete every namespace this rig made (their interfaces go with them)."""
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
