"""How much of a model file is in memory, measured, and putting it back.

A mapped model's weights are clean file pages: the OS reclaims an idle model's pages first
when its owner needs memory, and the next request pays the page-ins. `FileResidency` maps the
file read-only without touching it and asks `mincore` (Linux and macOS) which of its pages are
in the page cache, which every runner of the file shares. `restore` reads missing runs back
(pread, after a WILLNEED hint), optionally at a capped rate and stopping when told to.

Linux answers mincore about the page cache only to the file's owner, root, or a process that
may write the file; to anyone else it says every page is resident. Such a file's residency is
unknown here (None), never a made-up 100%.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import re
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("meshd.engine")

PAGE = mmap.PAGESIZE
CHUNK_PAGES = 65536  # pages asked of mincore at once (a 64 KiB vector)
# A measurement asks about this many pages at most: beyond, windows spread over the file (a
# different part of each window every time), so a multi-GB file costs what 32 MiB does.
SAMPLE_PAGES = 8192
SAMPLE_WINDOW = 256
_GOLDEN = 0.6180339887498949
READ_BYTES = 1 << 20  # one pread while restoring
MERGE_GAP = 1 << 20  # missing runs closer than this are read as one (a resident page is cheap)
_LOW_BIT = bytes(b & 1 for b in range(256))  # macOS sets other flags beside "in core"
_MISSING = re.compile(b"\x00+")
Ranges = Sequence[tuple[int, int]]  # (offset, length) parts of a file


@dataclass(frozen=True)
class Residency:
    """One measurement: bytes in memory, of the bytes measured (the file, or its parts a model
    reads through its mapping)."""

    resident: int
    size: int

    @property
    def share(self) -> float:
        return self.resident / self.size if self.size else 1.0

    @property
    def missing(self) -> int:
        return self.size - self.resident


@dataclass(frozen=True)
class Restored:
    """What a restore did: bytes read back, seconds spent reading (not waiting), and whether it
    stopped before the end because it was told to."""

    read: int
    reading_seconds: float
    stopped: bool


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_long,
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return libc


def page_cache_visible(path: Path, platform: str = sys.platform) -> bool:
    """Whether mincore tells this process the truth about path's page cache (see above)."""
    if platform != "linux" or os.geteuid() == 0:
        return True
    try:
        return os.stat(path).st_uid == os.geteuid() or os.access(path, os.W_OK)
    except OSError:
        return False


class FileResidency:
    """A read-only, never-touched mapping of one file, to ask which of its pages are resident.
    Not thread-safe: one caller at a time (the engine's keeper)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._libc = _libc()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size
        self._address = 0
        if self.size:
            address = self._libc.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, self._fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                err = ctypes.get_errno()
                os.close(self._fd)
                raise OSError(err, f"cannot map {path}: {os.strerror(err)}")
            self._address = address
        self._vector = ctypes.create_string_buffer(CHUNK_PAGES)
        self._phase = 0.0  # where the sample windows start, moved on at every sample

    def close(self) -> None:
        """Unmap and close (idempotent)."""
        if self._address:
            self._libc.munmap(self._address, self.size)
            self._address = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileResidency:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _spans(self, ranges: Ranges | None) -> list[tuple[int, int]]:
        """(first page, pages) of the file's ranges (all of it for None), in chunks."""
        whole = [(0, self.size)] if ranges is None else ranges
        spans = []
        for offset, length in whole:
            end = min(offset + length, self.size)
            first, last = offset // PAGE, -(-end // PAGE)
            for at in range(first, last, CHUNK_PAGES):
                spans.append((at, min(CHUNK_PAGES, last - at)))
        return spans

    def _vectors(self, ranges: Ranges | None) -> Iterator[tuple[int, bytes]]:
        """(first page, one byte per page: 1 resident, 0 not), chunk by chunk."""
        for first, count in self._spans(ranges):
            length = min(count * PAGE, self.size - first * PAGE)
            if self._libc.mincore(self._address + first * PAGE, length, self._vector) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore on {self.path}: {os.strerror(err)}")
            yield first, self._vector.raw[:count].translate(_LOW_BIT)

    def measure(self, ranges: Ranges | None = None, most: int = 0) -> Residency:
        """Bytes of the file (or of its ranges) in memory now, counted in whole pages; with
        `most`, estimated from that many pages at most when there are more."""
        if not self.size:
            return Residency(0, 0)
        spans = self._spans(ranges)
        total = sum(min(count * PAGE, self.size - first * PAGE) for first, count in spans)
        pages = sum(count for _, count in spans)
        if most and pages > most:
            asked = self._sample(spans, pages, most)
            found = sum(vector.count(1) for _, vector in self._vectors(asked))
            measured = sum(length for _, length in asked) // PAGE
            return Residency(min(round(total * found / max(measured, 1)), total), total)
        resident = sum(vector.count(1) for _, vector in self._vectors(ranges))
        return Residency(min(resident * PAGE, total), total)

    def _sample(self, spans: list[tuple[int, int]], pages: int, most: int) -> list[tuple[int, int]]:
        """Windows of SAMPLE_WINDOW pages spread evenly over the spans' pages, as byte ranges."""
        windows = max(most // SAMPLE_WINDOW, 1)
        stride = pages / windows
        self._phase = (self._phase + _GOLDEN) % 1.0
        starts = [int((i + self._phase) * stride) for i in range(windows)]
        asked, seen = [], 0
        for first, count in spans:
            while starts and starts[0] < seen + count:
                page = first + starts.pop(0) - seen
                length = min(SAMPLE_WINDOW, first + count - page)
                asked.append((page * PAGE, length * PAGE))
            seen += count
        return asked

    def missing_runs(self, ranges: Ranges | None = None) -> list[tuple[int, int]]:
        """(offset, length) of the file's parts (of its ranges) not in memory, nearby ones
        merged."""
        runs: list[tuple[int, int]] = []
        if not self.size:
            return runs
        for first, vector in self._vectors(ranges):
            for match in _MISSING.finditer(vector):
                start = (first + match.start()) * PAGE
                end = min((first + match.end()) * PAGE, self.size)
                if runs and start - (runs[-1][0] + runs[-1][1]) < MERGE_GAP:
                    runs[-1] = (runs[-1][0], end - runs[-1][0])
                else:
                    runs.append((start, end - start))
        return runs

    def restore(
        self,
        rate: float = 0.0,
        stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        ranges: Ranges | None = None,
    ) -> Restored:
        """Read the missing parts (of ranges) back into memory, at most `rate` bytes/s (0: as
        fast as the disk goes), checking `stop` before every read. Blocking: run it in a
        thread."""
        done, reading, began = 0, 0.0, clock()
        buffer = bytearray(READ_BYTES)
        for offset, length in self.missing_runs(ranges):
            _will_need(self._fd, offset, length)
            for at in range(offset, offset + length, READ_BYTES):
                if stop():
                    return Restored(done, reading, True)
                started = clock()
                got = _pread_into(self._fd, buffer, min(READ_BYTES, offset + length - at), at)
                reading += clock() - started
                done += got
                if rate > 0:
                    ahead = done / rate - (clock() - began)
                    if ahead > 0:
                        sleep(ahead)
        return Restored(done, reading, False)


def _will_need(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start reading a range (Linux); a hint, so failure is ignored."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def _pread_into(fd: int, buffer: bytearray, length: int, offset: int) -> int:
    view = memoryview(buffer)[:length]
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return int(preadv(fd, [view], offset))
    data = os.pread(fd, length, offset)
    view[: len(data)] = data
    return len(data)


class ResidencyProbe:
    """Measures one model file's residency, following the file when it is replaced; safe to
    call from several threads (one measurement at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: FileResidency | None = None
        self._stamp: tuple[int, int, int] | None = None

    def measure(self, ranges: Ranges | None = None) -> Residency | None:
        """The file's residency now (of its ranges, when given); None when it is missing or
        mincore cannot tell (blocking: mincore walks every page asked about)."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                self._close()
                return None
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not page_cache_visible(self.path):
                self._close()
                return None
            try:
                if self._file is None or stamp != self._stamp:
                    self._close()
                    self._file, self._stamp = FileResidency(self.path), stamp
                return self._file.measure(ranges, SAMPLE_PAGES)
            except OSError as error:
                log.debug("residency of %s: %s", self.path, error)
                self._close()
                return None

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._stamp = None, None

    def close(self) -> None:
        """Let the file go (a replaced file's space is freed only once nothing maps it)."""
        with self._lock:
            self._close()


MIN_RATE_SAMPLE_BYTES = 16 * 2**20  # fewer bytes read than this say little about the disk


class ReadRate:
    """How fast this peer reads model files from disk: the median of recent measurements."""

    def __init__(self) -> None:
        self._rates: deque[float] = deque(maxlen=16)

    def add(self, read: int, seconds: float) -> None:
        """One measurement: `read` bytes from disk in `seconds`."""
        if read >= MIN_RATE_SAMPLE_BYTES and seconds > 0:
            self._rates.append(read / seconds)

    @property
    def bytes_per_second(self) -> float:
        """0 while unmeasured."""
        return statistics.median(self._rates) if self._rates else 0.0


def drop_from_cache(path: Path) -> None:
    """Evict a file's unmapped pages from the page cache (Linux; tests and benchmarks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_PIDFD_OPEN, _PROCESS_MADVISE, _MADV_PAGEOUT = 434, 440, 21  # the same on x86-64 and arm64


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def page_out(pid: int, path: Path) -> int:
    """Make the OS reclaim process pid's mapping of path now, as memory pressure would (Linux
    5.10+, root; tests and benchmarks). Returns the bytes of mapping advised."""
    target = str(path.resolve())
    ranges = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append(_IoVec(start, end - start))
    if not ranges:
        raise OSError(f"process {pid} does not map {target}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    try:
        vectors = (_IoVec * len(ranges))(*ranges)
        advised = libc.syscall(_PROCESS_MADVISE, pidfd, vectors, len(ranges), _MADV_PAGEOUT, 0)
        if advised < 0:
            raise OSError(ctypes.get_errno(), f"process_madvise: {os.strerror(ctypes.get_errno())}")
        return int(advised)
    finally:
        os.close(pidfd)
