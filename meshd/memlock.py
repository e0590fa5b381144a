"""Locking a model's weights in memory (`lock_memory`, mlock in the runner): what the OS allows,
and how its owner raises the limit. A process may lock up to RLIMIT_MEMLOCK bytes (root, with
CAP_IPC_LOCK, any amount); the soft limit can be raised up to the hard one without asking."""

from __future__ import annotations

import os
import sys

try:
    import resource
except ImportError:  # not on every platform Python runs on
    resource = None  # type: ignore[assignment]

MIB = 2**20


def lock_refusal(need: int) -> str:
    """Raise this process's locked-memory limit to `need` bytes where the hard limit allows;
    "" when `need` bytes may be locked, else one line saying why not."""
    if resource is None or os.geteuid() == 0:
        return ""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if _enough(soft, need):
        return ""
    if _enough(hard, need):
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
            return ""
        except (ValueError, OSError):
            pass
    return (
        f"the OS lets meshd lock {_size(hard)} of memory and the weights are {need // MIB} MiB "
        f"(RLIMIT_MEMLOCK): not locked; `meshd doctor` says how to raise it"
    )


def _enough(limit: int, need: int) -> bool:
    return resource is not None and (limit == resource.RLIM_INFINITY or limit >= need)


def _size(limit: int) -> str:
    if resource is not None and limit == resource.RLIM_INFINITY:
        return "any amount"
    return f"{limit // MIB} MiB" if limit >= MIB else f"{limit // 1024} KiB"


def memlock_limit() -> int | None:
    """This process's hard locked-memory limit in bytes; None when unlimited or unknown."""
    if resource is None:
        return None
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def how_to_raise(platform: str = sys.platform) -> str:
    """Where the owner raises the locked-memory limit for meshd's service."""
    if platform == "darwin":
        return (
            "macOS caps wired memory (sysctl vm.user_wire_limit); raise it with "
            "`sudo sysctl vm.user_wire_limit=BYTES`, or turn lock_memory off"
        )
    return (
        "add LimitMEMLOCK=infinity to meshd's systemd unit ([Service]), or a line "
        "`USER - memlock unlimited` to /etc/security/limits.conf and log in again; "
        "or turn lock_memory off"
    )
