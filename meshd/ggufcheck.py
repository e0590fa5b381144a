"""Validate a GGUF file before llama.cpp opens it, and read the facts meshd needs from it.

The parser trusts nothing: every count is checked against the bytes that remain, arrays may
nest only a little, and every tensor's offset + size (overflow-free in Python) must lie inside
the file. A file that passes has a well-formed header and data section; a file that fails raises
InvalidModelFile naming the first problem.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from meshd.chattemplates import MARKERS
from meshd.errors import InvalidModelFile
from meshd.ggufarch import check_architecture

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_ARRAY_DEPTH = 2
MAX_KEY_BYTES = 64 * 1024
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
SHORT_ARRAY = 1024  # numeric arrays up to this long are kept (per-layer values); longer: length
TOKENS_KEY = "tokenizer.ggml.tokens"
# value type -> (struct format, size); 8 = string and 9 = array are variable.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


_MARKERS = tuple(MARKERS.values())


@dataclass(frozen=True)
class GGUFFacts:
    """What a valid GGUF says about itself."""

    architecture: str
    name: str
    quantization: str
    parameters: int
    context_length: int
    layers: int
    embedding: int
    heads: int
    kv_heads: int
    key_length: int
    value_length: int
    vocab_size: int
    has_chat_template: bool
    tensor_count: int
    file_size: int
    chat_markers: frozenset[str] = frozenset()  # chat formats' turn tokens in the vocabulary

    def kv_cache_bytes(self, context: int) -> int:
        """Bytes of an f16 KV cache for one slot of `context` tokens."""
        per_token = self.layers * self.kv_heads * (self.key_length + self.value_length) * 2
        return per_token * context


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def remaining(self) -> int:
        return self.size - self.pos

    def unpack(self, fmt: str, width: int) -> Any:
        if self.remaining() < width:
            raise InvalidModelFile(f"truncated: needs {width} bytes at offset {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def count(self, what: str, min_item_bytes: int) -> int:
        """A uint64 count that the remaining bytes could possibly hold."""
        n = int(self.unpack("<Q", 8))
        if n * min_item_bytes > self.remaining():
            raise InvalidModelFile(f"absurd {what} count {n} at offset {self.pos - 8}")
        return n

    def string(self, limit: int | None = None) -> str:
        n = self.count("string length", 1)
        if limit is not None and n > limit:
            raise InvalidModelFile(f"string of {n} bytes at offset {self.pos - 8} is too long")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise InvalidModelFile(f"string at offset {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        """A metadata value; a short numeric array comes back as a tuple, others as their
        length only."""
        if vtype in _SCALARS:
            return self.unpack(*_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise InvalidModelFile(f"unknown metadata value type {vtype} at offset {self.pos}")
        if depth >= MAX_ARRAY_DEPTH:
            raise InvalidModelFile(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
        item_type = int(self.unpack("<I", 4))
        width = _SCALARS[item_type][1] if item_type in _SCALARS else 8
        n = self.count("array length", width)
        if item_type in _SCALARS and depth == 0 and n <= SHORT_ARRAY:
            fmt = "<" + _SCALARS[item_type][0][1] * n
            values = struct.unpack_from(fmt, self.buf, self.pos)
            self.pos += n * width
            return values
        if item_type in _SCALARS:
            self.pos += n * width
        elif item_type == _STRING:
            self.skip_strings(n)
        else:
            for _ in range(n):
                self.value(item_type, depth + 1)
        return n

    def read_vocabulary(self) -> tuple[str | None, frozenset[str]]:
        """Read a string array (its type and length first): the first string seen twice, and
        which of the chat formats' turn markers (meshd.chattemplates.MARKERS) it holds."""
        if int(self.unpack("<I", 4)) != _STRING:
            raise InvalidModelFile(f"{TOKENS_KEY} is not an array of strings")
        n = self.count("array length", 8)
        buf, seen = self.buf, set[bytes]()
        for _ in range(n):
            length = int(self.unpack("<Q", 8))
            pos = self.pos
            if length > self.remaining():
                raise InvalidModelFile(f"truncated: string array runs past offset {pos}")
            piece = bytes(buf[pos : pos + length])
            self.pos += length
            if piece in seen:  # the file is refused: no need to read the rest
                return piece.decode(errors="replace"), frozenset()
            seen.add(piece)
        return None, frozenset(m for m in _MARKERS if m.encode() in seen)

    def skip_strings(self, n: int) -> None:
        """Step over n strings: a vocabulary holds hundreds of thousands, so this loop is tight."""
        buf, pos, size, length_at = self.buf, self.pos, self.size, _U64.unpack_from
        try:
            for _ in range(n):
                pos += 8 + length_at(buf, pos)[0]
                if pos > size:
                    break
        except struct.error:
            raise InvalidModelFile(f"truncated: string array runs past offset {pos}") from None
        if pos > size:
            raise InvalidModelFile(f"truncated: string array ends at {pos}, past the file")
        self.pos = pos


def _tensor_bytes(name: str, dims: list[int], ggml_type: int) -> int:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise InvalidModelFile(f"tensor {name!r} has unknown type {ggml_type}") from None
    elements = 1
    for dim in dims:
        elements *= dim
    if dims and dims[0] % block:
        raise InvalidModelFile(f"tensor {name!r}: row of {dims[0]} is not whole blocks")
    return elements // block * type_size


def _read_tensors(cur: _Cursor, count: int) -> list[tuple[str, int, int, int]]:
    """(name, offset, bytes, elements) for each tensor info."""
    tensors = []
    for _ in range(count):
        name = cur.string(limit=MAX_KEY_BYTES)
        n_dims = int(cur.unpack("<I", 4))
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidModelFile(f"tensor {name!r} has {n_dims} dimensions")
        dims = [int(cur.unpack("<Q", 8)) for _ in range(n_dims)]
        ggml_type = int(cur.unpack("<I", 4))
        offset = int(cur.unpack("<Q", 8))
        elements = 1
        for dim in dims:
            elements *= dim
        tensors.append((name, offset, _tensor_bytes(name, dims, ggml_type), elements))
    return tensors


def _check_data(
    tensors: list[tuple[str, int, int, int]], data_start: int, size: int, alignment: int
) -> None:
    for name, offset, nbytes, _ in tensors:
        if offset % alignment:
            raise InvalidModelFile(f"tensor {name!r} offset {offset} is not {alignment}-aligned")
        end = data_start + offset + nbytes
        if end > size:
            raise InvalidModelFile(
                f"tensor {name!r} ends at byte {end}, past the end of the file ({size} bytes)"
            )


def _quantization(meta: dict[str, Any]) -> str:
    file_type = meta.get("general.file_type")
    if not isinstance(file_type, int):
        return "unknown"
    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"type {file_type}"


def _facts(
    meta: dict[str, Any],
    tensors: list[tuple[str, int, int, int]],
    size: int,
    markers: frozenset[str] = frozenset(),
) -> GGUFFacts:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile("no general.architecture in the metadata")

    def number(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, tuple) and value:  # per layer: size for the largest
            value = max(value)
        return int(value) if isinstance(value, int | float) else default

    check_architecture(meta, arch)
    embedding, heads = number("embedding_length"), number("attention.head_count", 1) or 1
    head_dim = embedding // heads
    return GGUFFacts(
        architecture=arch,
        name=str(meta.get("general.name", "")),
        quantization=_quantization(meta),
        parameters=sum(t[3] for t in tensors),
        context_length=number("context_length"),
        layers=number("block_count"),
        embedding=embedding,
        heads=heads,
        kv_heads=number("attention.head_count_kv", heads) or heads,
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
        vocab_size=int(meta.get("tokenizer.ggml.tokens", 0)),
        has_chat_template="tokenizer.chat_template" in meta,
        tensor_count=len(tensors),
        file_size=size,
        chat_markers=markers,
    )


def inspect_gguf(path: Path) -> GGUFFacts:
    """Validate the GGUF at path and return its facts; InvalidModelFile says what is wrong."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size < 24:
                raise InvalidModelFile(f"not a GGUF file ({size} bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, size)
    except InvalidModelFile as exc:
        raise InvalidModelFile(f"{path.name}: {exc}") from None
    except OSError as exc:
        raise InvalidModelFile(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(buf: mmap.mmap, size: int) -> GGUFFacts:
    if buf[:4] != MAGIC:
        raise InvalidModelFile("not a GGUF file (bad magic)")
    cur = _Cursor(buf, size)
    cur.pos = 4
    version = int(cur.unpack("<I", 4))
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFile(f"unsupported GGUF version {version}")
    tensor_count = cur.count("tensor", 24)
    kv_count = cur.count("metadata", 12)
    meta: dict[str, Any] = {}
    markers: frozenset[str] = frozenset()
    for _ in range(kv_count):
        key = cur.string(limit=MAX_KEY_BYTES)
        vtype = int(cur.unpack("<I", 4))
        if key == TOKENS_KEY and vtype == _ARRAY:
            start = cur.pos
            repeated, markers = cur.read_vocabulary()
            if repeated is not None:  # llama.cpp asserts every token string is unique
                raise InvalidModelFile(f"token {repeated[:40]!r} appears twice in the vocabulary")
            meta[key] = _U64.unpack_from(buf, start + 4)[0]
            continue
        meta[key] = cur.value(vtype)
    tensors = _read_tensors(cur, tensor_count)
    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFile(f"bad general.alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    _check_data(tensors, data_start, size, alignment)
    return _facts(meta, tensors, size, markers)
