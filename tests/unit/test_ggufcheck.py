"""The GGUF validator: real files pass, hostile ones are refused with a reason, nothing crashes."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meshd.errors import InvalidModelFile
from meshd.ggufcheck import inspect_gguf

F32 = 0
FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # the file fixtures are read-only


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv_string(key: str, value: str) -> bytes:
    return _str(key) + struct.pack("<I", 8) + _str(value)


def _kv_u32(key: str, value: int) -> bytes:
    return _str(key) + struct.pack("<II", 4, value)


MINIMAL_KVS = _kv_string("general.architecture", "llama") + _kv_u32("llama.block_count", 1)


def craft(
    path: Path,
    *,
    kvs: bytes | None = None,
    kv_count: int | None = None,
    tensors: list[tuple[str, list[int], int, int]] = (),  # type: ignore[assignment]
    tensor_count: int | None = None,
    data: bytes = b"",
    magic: bytes = b"GGUF",
    version: int = 3,
) -> Path:
    """A GGUF byte by byte, so that every field can be made wrong on purpose."""
    if kvs is None:
        kvs, kv_count = MINIMAL_KVS, 2
    body = b""
    for name, dims, ggml_type, offset in tensors:
        body += _str(name) + struct.pack("<I", len(dims))
        body += b"".join(struct.pack("<Q", d) for d in dims)
        body += struct.pack("<IQ", ggml_type, offset)
    header = magic + struct.pack(
        "<IQQ", version, len(tensors) if tensor_count is None else tensor_count, kv_count or 0
    )
    raw = header + kvs + body
    raw += b"\0" * (-len(raw) % 32) + data
    path.write_bytes(raw)
    return path


def test_the_tiny_test_model_passes_with_its_facts(tiny_model: Path) -> None:
    facts = inspect_gguf(tiny_model)
    assert facts.architecture == "llama"
    assert facts.layers == 2 and facts.embedding == 64 and facts.kv_heads == 2
    assert facts.has_chat_template
    assert facts.vocab_size > 256 and facts.parameters > 100_000
    assert facts.file_size == tiny_model.stat().st_size


def test_a_crafted_well_formed_file_passes(tmp_path: Path) -> None:
    path = craft(tmp_path / "ok.gguf", tensors=[("w", [8, 2], F32, 0)], data=b"\0" * 64)
    assert inspect_gguf(path).parameters == 16


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("bad magic", {"magic": b"GGML"}, "bad magic"),
        ("old version", {"version": 1}, "unsupported GGUF version"),
        (
            "tensor past the end",
            {"tensors": [("w", [1024, 1024], F32, 0)], "data": b"\0" * 64},
            "past the end of the file",
        ),
        (
            "offset past the end",
            {"tensors": [("w", [8], F32, 2**40)], "data": b"\0" * 64},
            "past the end",
        ),
        ("offset overflowing 64 bits", {"tensors": [("w", [8], F32, 2**64 - 32)]}, "past the end"),
        ("huge dims", {"tensors": [("w", [2**62, 2**62], F32, 0)]}, "past the end"),
        ("misaligned", {"tensors": [("w", [8], F32, 3)], "data": b"\0" * 64}, "aligned"),
        ("too many dims", {"tensors": [("w", [1] * 9, F32, 0)]}, "9 dimensions"),
        (
            "unknown tensor type",
            {"tensors": [("w", [8], 999, 0)], "data": b"\0" * 64},
            "unknown type 999",
        ),
        ("absurd tensor count", {"tensor_count": 2**60}, "absurd tensor count"),
        ("absurd metadata count", {"kvs": b"", "kv_count": 2**40}, "absurd metadata count"),
        (
            "absurd string length",
            {"kvs": struct.pack("<Q", 2**50) + b"x" * 40, "kv_count": 1},
            "absurd string length",
        ),
        (
            "unknown value type",
            {"kvs": _str("k") + struct.pack("<I", 77) + b"\0" * 40, "kv_count": 1},
            "unknown metadata value type 77",
        ),
        (
            "deeply nested arrays",
            {
                "kvs": _str("k")
                + struct.pack("<I", 9)
                + (struct.pack("<IQ", 9, 1)) * 3
                + struct.pack("<IQ", 4, 1)
                + b"\0" * 40,
                "kv_count": 1,
            },
            "nested",
        ),
        (
            "no architecture",
            {"kvs": _kv_string("general.name", "x"), "kv_count": 1},
            "no general.architecture",
        ),
    ],
)
def test_hostile_files_are_refused_with_the_reason(
    tmp_path: Path, name: str, kwargs: dict, reason: str
) -> None:
    path = craft(tmp_path / "hostile.gguf", **kwargs)
    with pytest.raises(InvalidModelFile, match=reason):
        inspect_gguf(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a model\n", b"GGUF", b"\0" * 4096])
def test_non_gguf_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile, match=r"x\.gguf: "):
        inspect_gguf(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="cannot read"):
        inspect_gguf(tmp_path / "absent.gguf")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_truncation_is_refused(tiny_model: Path, tmp_path: Path, data: st.DataObject) -> None:
    raw = tiny_model.read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    path = tmp_path / "cut.gguf"
    path.write_bytes(raw[:cut])
    with pytest.raises(InvalidModelFile):
        inspect_gguf(path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_headers_never_crash_the_parser(
    tiny_model: Path, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(tiny_model.read_bytes())
    header_end = 12_000  # metadata and tensor infos of the tiny model live in front
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, header_end))
        raw[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "flipped.gguf"
    path.write_bytes(bytes(raw))
    with contextlib.suppress(InvalidModelFile):  # refused with a reason is fine
        inspect_gguf(path)  # anything else escaping is a bug
