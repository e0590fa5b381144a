"""The runner's mapping of its model file: which parts a token reads, putting them back in the
page table, and locking them in memory.

Not every byte of a GGUF is used from the mapping: on a CPU, llama.cpp repacks some weight
types into memory of its own at load (then the file's copy of those tensors is never read
again), and the vocabulary is read once. What the daemon measures (and the keeper keeps
resident) is what a token reads. On Linux the runner finds it out: it lets go of its page
table entries for the file (MADV_DONTNEED: the pages stay in the page cache), decodes one
token, and reads back from /proc/self/pagemap which pages that token touched. Elsewhere the
answer is None: the whole file counts.

Once the daemon has read evicted pages back into the page cache, `populate` maps them into the
runner's page table again (MADV_POPULATE_READ), so the next token does not take a fault per
page. `lock` locks those parts in memory (mlock), for `lock_memory`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy

PAGE = mmap.PAGESIZE
MADV_DONTNEED, MADV_POPULATE_READ = 4, 22
PRESENT = 1 << 63
MAX_RANGES = 4096  # sent to the daemon at most; closer ranges are merged to stay under it


def _mappings(path: Path) -> list[tuple[int, int, int]]:
    """(start address, end address, file offset) of this process's mappings of path."""
    target = str(path.resolve())
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end, int(fields[2], 16)))
    return found


def pages_used(path: Path, one_token: Callable[[], None]) -> list[tuple[int, int]] | None:
    """(file offset, length) of the parts of path that one_token() reads through this process's
    mapping, merged and at most MAX_RANGES; None where that cannot be told."""
    if sys.platform != "linux":
        return None
    try:
        mappings = _mappings(path)
        if not mappings:
            return []  # nothing is read through a mapping (e.g. use_mmap off)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, end, _ in mappings:
            if libc.madvise(start, end - start, MADV_DONTNEED) != 0:
                return None  # e.g. locked pages
        one_token()
        runs: list[tuple[int, int]] = []
        with open("/proc/self/pagemap", "rb") as pagemap:
            for start, end, offset in mappings:
                runs += _present_runs(pagemap, start, end, offset)
    except OSError:
        return None
    return merge(sorted(runs), MAX_RANGES)


def _present_runs(pagemap: object, start: int, end: int, offset: int) -> list[tuple[int, int]]:
    """File ranges of the pages of [start, end) present in this process's page table."""
    assert hasattr(pagemap, "seek") and hasattr(pagemap, "read")
    pages = (end - start) // PAGE
    pagemap.seek(start // PAGE * 8)
    entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
    runs: list[tuple[int, int]] = []
    for index, entry in enumerate(entries):
        if entry & PRESENT:
            at = offset + index * PAGE
            if runs and runs[-1][0] + runs[-1][1] == at:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((at, PAGE))
    return runs


def merge(runs: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """Sorted runs merged where they touch, then across the smallest gaps so that at most
    `most` remain."""
    merged: list[tuple[int, int]] = []
    for at, length in runs:
        if merged and at <= merged[-1][0] + merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], at + length - last[0]))
        else:
            merged.append((at, length))
    if len(merged) <= most:
        return merged
    gaps = sorted(merged[i + 1][0] - sum(merged[i]) for i in range(len(merged) - 1))
    bridge = gaps[len(merged) - most - 1]  # gaps up to this are closed
    closed: list[tuple[int, int]] = [merged[0]]
    for at, length in merged[1:]:
        last = closed[-1]
        if at - (last[0] + last[1]) <= bridge:
            closed[-1] = (last[0], at + length - last[0])
        else:
            closed.append((at, length))
    return closed


def _spans(path: Path, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """(address, length) of this process's mapping of path that hold ranges of the file (all of
    the mapping for None), page-aligned."""
    spans = []
    for start, end, offset in _mappings(path):
        if ranges is None:
            spans.append((start, end - start))
            continue
        for at, length in ranges:
            low = max(at, offset) // PAGE * PAGE
            high = min(at + length, offset + end - start)
            if high > low:
                spans.append((start + low - offset, high - low))
    return spans


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def populate(path: Path, ranges: list[tuple[int, int]] | None) -> None:
    """Map the parts of path a token reads into this process's page table again, from the page
    cache (reading what is not there), and touch each page once, as a token would: the first
    touch of a page costs the CPU a page walk, which the next token then does not pay."""
    if sys.platform != "linux":
        return
    libc = _libc()
    for address, length in _spans(path, ranges):
        libc.madvise(address, length, MADV_POPULATE_READ)  # fails before Linux 5.14: touched
        pages = numpy.ctypeslib.as_array((ctypes.c_ubyte * length).from_address(address))
        int(pages[::PAGE].sum())


def lock(path: Path, ranges: list[tuple[int, int]] | None) -> str:
    """Lock the parts of path a token reads in memory; "" when done, else why not."""
    try:
        spans = _spans(path, ranges) if sys.platform == "linux" else []
    except OSError as error:
        return f"cannot find the model's mapping: {error}"
    if not spans:
        return "the weights are not read through a mapping here (use_mmap off?)"
    libc = _libc()
    for address, length in spans:
        if libc.mlock(address, length) != 0:
            return f"mlock failed: {os.strerror(ctypes.get_errno())}"
    return ""
