"""What macOS says about this Mac, read in the process (sysctlbyname through ctypes), never by
forking `sysctl`: a fork every few seconds costs the owner's machine, and a failed fork must
not end a watch. Every function answers None (or False) where there is no such value: on Linux,
on an older macOS, or on an Intel Mac."""

from __future__ import annotations

import ctypes
import plistlib
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


def important_free_bytes(path: str) -> int | None:
    """The space macOS gives a file the user wants now on path's volume (Finder's "available"):
    free space plus purgeable space (caches, local snapshots, iCloud copies) it deletes on
    demand, which statvfs does not count. None where it cannot be read (or not macOS)."""
    if sys.platform != "darwin":
        return None
    try:
        cf = ctypes.CDLL("/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation")
        key = ctypes.c_void_p.in_dll(cf, "kCFURLVolumeAvailableCapacityForImportantUsageKey")
        # Every CF function returns a pointer or a Boolean: say so, or ctypes truncates to int.
        cf.CFURLCreateFromFileSystemRepresentation.restype = ctypes.c_void_p
        cf.CFURLCreateFromFileSystemRepresentation.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_long,
            ctypes.c_bool,
        ]
        cf.CFURLCopyResourcePropertyForKey.restype = ctypes.c_bool
        cf.CFURLCopyResourcePropertyForKey.argtypes = [ctypes.c_void_p] * 4
        cf.CFNumberGetValue.restype = ctypes.c_bool
        cf.CFNumberGetValue.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
        cf.CFRelease.argtypes = [ctypes.c_void_p]
        encoded = path.encode()
        url = cf.CFURLCreateFromFileSystemRepresentation(None, encoded, len(encoded), True)
        if not url:
            return None
        try:
            value = ctypes.c_void_p()
            if not cf.CFURLCopyResourcePropertyForKey(url, key, ctypes.byref(value), None):
                return None
            if not value.value:
                return None
            try:
                number = ctypes.c_int64(0)
                k_cf_number_sint64 = 4
                if not cf.CFNumberGetValue(value, k_cf_number_sint64, ctypes.byref(number)):
                    return None
                return int(number.value) if number.value > 0 else None
            finally:
                cf.CFRelease(value)
        finally:
            cf.CFRelease(url)
    except (OSError, ValueError, AttributeError):
        return None


BACKUP_EXCLUDE_XATTR = "com.apple.metadata:com_apple_backup_excludeItem"


def backup_exclusion() -> bytes:
    """The value `tmutil addexclusion` writes: a binary plist of the string com.apple.backupd."""
    return plistlib.dumps("com.apple.backupd", fmt=plistlib.FMT_BINARY)


def exclude_from_backups(path: str) -> bool:
    """Have Time Machine skip path (models are gigabytes each, and pulled again in minutes):
    the sticky exclusion tmutil makes, as an extended attribute, without forking tmutil.
    False where not macOS, or where the file system refuses it."""
    if sys.platform != "darwin":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setxattr.restype = ctypes.c_int
        libc.setxattr.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint32,
            ctypes.c_int,
        ]
        value = backup_exclusion()
        done = libc.setxattr(path.encode(), BACKUP_EXCLUDE_XATTR.encode(), value, len(value), 0, 0)
    except (OSError, AttributeError):
        return False
    return done == 0
