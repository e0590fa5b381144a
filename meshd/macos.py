"""What macOS says about this Mac, read in the process (sysctlbyname through ctypes), never by
forking `sysctl`: a fork every few seconds costs the owner's machine, and a failed fork must
not end a watch. Every function answers None (or False) where there is no such value: on Linux,
on an older macOS, or on an Intel Mac."""

from __future__ import annotations

import ctypes
import sys
from typing import Any


def sysctl_int(name: str, platform: str | None = None, libc: Any = None) -> int | None:
    """A sysctl integer by name; None where there is none (or not macOS). `libc` stands in
    for the C library in tests."""
    if (platform or sys.platform) != "darwin":
        return None
    try:
        libc = libc or ctypes.CDLL(None, use_errno=True)
        value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
        failed = libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0)
    except (OSError, AttributeError):
        return None
    if failed != 0:
        return None
    if size.value == 4:  # an int sysctl fills the low half (every Mac is little-endian)
        return ctypes.c_int32(value.value & 0xFFFFFFFF).value
    return int(value.value)


def performance_cores() -> int | None:
    """Apple Silicon's performance cores (an M4 mini's 4 of its 10); None elsewhere."""
    cores = sysctl_int("hw.perflevel0.physicalcpu")
    return cores if cores and cores > 0 else None


def memory_pressure_level() -> int | None:
    """kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical."""
    return sysctl_int("kern.memorystatus_vm_pressure_level")


def under_rosetta() -> bool:
    """This process is an x86_64 program translated on Apple Silicon (sysctl.proc_translated):
    its llama.cpp has no Metal and no ARM kernels."""
    return sysctl_int("sysctl.proc_translated") == 1
