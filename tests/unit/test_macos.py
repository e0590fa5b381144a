"""meshd/macos.py against a stand-in sysctlbyname: a real C-callable function that answers as
macOS does (4-byte ints, -1 for an unknown name)."""

from __future__ import annotations

import ctypes

import pytest

from meshd import macos

SYSCTL = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.c_void_p,
    ctypes.c_size_t,
)


class FakeLibc:
    """What an M4 Mac mini's sysctl says (4 performance cores of 10), or another Mac's."""

    def __init__(self, values: dict[str, int]) -> None:
        self.asked: list[str] = []

        def sysctlbyname(name: bytes, old: int, size: object, new: object, new_size: int) -> int:
            self.asked.append(name.decode())
            if name.decode() not in values:
                return -1
            answer = ctypes.c_int32(values[name.decode()])
            ctypes.memmove(old, ctypes.byref(answer), 4)
            size[0] = 4  # type: ignore[index]
            return 0

        self.sysctlbyname = SYSCTL(sysctlbyname)


M4_MINI = {"hw.perflevel0.physicalcpu": 4, "hw.physicalcpu": 10}


def test_performance_cores_are_read_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc(M4_MINI)
    assert macos.sysctl_int("hw.perflevel0.physicalcpu", "darwin", libc) == 4
    assert macos.sysctl_int("hw.physicalcpu", "darwin", libc) == 10
    assert macos.sysctl_int("hw.perflevel1.physicalcpu", "darwin", libc) is None
    assert macos.sysctl_int("hw.physicalcpu", "linux", libc) is None, "only asked on macOS"
    monkeypatch.setattr(macos.sys, "platform", "darwin")
    monkeypatch.setattr(macos.ctypes, "CDLL", lambda *a, **k: libc)
    assert macos.performance_cores() == 4
    libc_intel = FakeLibc({"hw.physicalcpu": 6})  # an Intel Mac has no perflevels
    monkeypatch.setattr(macos.ctypes, "CDLL", lambda *a, **k: libc_intel)
    assert macos.performance_cores() is None


def test_pressure_and_rosetta(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc({"kern.memorystatus_vm_pressure_level": 4, "sysctl.proc_translated": 1})
    monkeypatch.setattr(macos.sys, "platform", "darwin")
    monkeypatch.setattr(macos.ctypes, "CDLL", lambda *a, **k: libc)
    assert macos.memory_pressure_level() == 4
    assert macos.under_rosetta() is True
    native = FakeLibc({"sysctl.proc_translated": 0})
    monkeypatch.setattr(macos.ctypes, "CDLL", lambda *a, **k: native)
    assert macos.under_rosetta() is False
    monkeypatch.setattr(macos.ctypes, "CDLL", lambda *a, **k: FakeLibc({}))  # Intel: no key
    assert macos.under_rosetta() is False


def test_nothing_is_asked_off_macos() -> None:
    assert macos.performance_cores() is None or macos.sys.platform == "darwin"
    assert macos.memory_pressure_level() is None or macos.sys.platform == "darwin"


def test_the_backup_exclusion_is_what_tmutil_writes() -> None:
    import plistlib

    value = macos.backup_exclusion()
    assert value.startswith(b"bplist00")
    assert plistlib.loads(value) == "com.apple.backupd"
    assert macos.BACKUP_EXCLUDE_XATTR == "com.apple.metadata:com_apple_backup_excludeItem"


def test_off_macos_nothing_is_written(tmp_path: object) -> None:
    assert macos.exclude_from_backups(str(tmp_path)) is (macos.sys.platform == "darwin")
