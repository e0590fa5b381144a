"""meshd/ggufcheck.py, exactly: every refusal's words and offsets, every fact a file yields,
each bound at its limit and one past it. Files are built byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tinygguf import write_tiny_gguf

from meshd.errors import InvalidModelFile
from meshd.ggufcheck import GGUFFacts, inspect_gguf

HEADER_BYTES = 24  # magic, version, tensor count, metadata count
U32, F32_VALUE, STRING, ARRAY = 4, 6, 8, 9
F32, Q8_0 = 0, 8


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", U32, value)


def kv_str(key: str, value: str) -> bytes:
    return s(key) + struct.pack("<I", STRING) + s(value)


def kv_array(key: str, item_type: int, items: list[bytes]) -> bytes:
    return s(key) + struct.pack("<IIQ", ARRAY, item_type, len(items)) + b"".join(items)


LLAMA = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1)]


def tensor(name: str, dims: list[int], ggml_type: int = F32, offset: int = 0) -> bytes:
    packed = b"".join(struct.pack("<Q", d) for d in dims)
    return s(name) + struct.pack("<I", len(dims)) + packed + struct.pack("<IQ", ggml_type, offset)


def build(
    path: Path,
    kvs: list[bytes] = LLAMA,
    tensors: list[bytes] = (),  # type: ignore[assignment]
    data: bytes = b"",
    *,
    kv_count: int | None = None,
    tensor_count: int | None = None,
    pad: bool = True,
) -> Path:
    head = b"GGUF" + struct.pack(
        "<IQQ",
        3,
        len(tensors) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    raw = head + b"".join(kvs) + b"".join(tensors)
    if pad:
        raw += b"\0" * (-len(raw) % 32)
    path.write_bytes(raw + data)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(InvalidModelFile) as caught:
        inspect_gguf(path)
    return str(caught.value).removeprefix(f"{path.name}: ")


class TestHeader:
    def test_24_bytes_is_a_header_and_23_is_not(self, tmp_path: Path) -> None:
        header = build(tmp_path / "h.gguf", kvs=[], pad=False)
        assert header.stat().st_size == HEADER_BYTES
        assert refusal(header) == "no general.architecture in the metadata"
        short = tmp_path / "short.gguf"
        short.write_bytes(header.read_bytes()[:23])
        assert refusal(short) == "not a GGUF file (23 bytes)"

    def test_bad_magic(self, tmp_path: Path) -> None:
        path = build(tmp_path / "m.gguf")
        path.write_bytes(b"GGML" + path.read_bytes()[4:])
        assert refusal(path) == "not a GGUF file (bad magic)"

    def test_absurd_counts_name_their_offset(self, tmp_path: Path) -> None:
        assert refusal(build(tmp_path / "t.gguf", tensor_count=2**60)) == (
            f"absurd tensor count {2**60} at offset 8"
        )
        assert refusal(build(tmp_path / "k.gguf", kv_count=2**40)) == (
            f"absurd metadata count {2**40} at offset 16"
        )

    def test_a_missing_file_says_why(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.gguf"
        with pytest.raises(InvalidModelFile) as caught:
            inspect_gguf(path)
        assert str(caught.value) == f"cannot read {path}: No such file or directory"


class TestMetadata:
    def test_a_key_of_64_kib_passes_and_one_byte_more_is_too_long(self, tmp_path: Path) -> None:
        fits = [*LLAMA, kv_u32("k" * 65536, 1)]
        assert inspect_gguf(build(tmp_path / "fits.gguf", fits)).layers == 1
        long = [kv_u32("k" * 65537, 1)]
        assert refusal(build(tmp_path / "long.gguf", long)) == (
            "string of 65537 bytes at offset 24 is too long"
        )

    def test_a_key_that_is_not_utf8(self, tmp_path: Path) -> None:
        path = build(tmp_path / "u.gguf", [s(b"\xff\xfe") + struct.pack("<II", U32, 1)])
        assert refusal(path) == "string at offset 32 is not UTF-8"

    def test_an_unknown_value_type_names_its_offset(self, tmp_path: Path) -> None:
        path = build(tmp_path / "v.gguf", [s("k") + struct.pack("<I", 77) + bytes(8)])
        assert refusal(path) == "unknown metadata value type 77 at offset 37"

    def test_a_value_cut_short(self, tmp_path: Path) -> None:
        path = build(tmp_path / "c.gguf", [s("k") + struct.pack("<I", U32) + b"\1\0"], pad=False)
        assert refusal(path) == "truncated: needs 4 bytes at offset 37"

    def test_a_bad_alignment(self, tmp_path: Path) -> None:
        path = build(tmp_path / "a.gguf", [*LLAMA, kv_u32("general.alignment", 3)])
        assert refusal(path) == "bad general.alignment 3"

    def test_arrays_may_nest_once(self, tmp_path: Path) -> None:
        inner = struct.pack("<IQ", U32, 2) + struct.pack("<II", 1, 2)
        nested = s("k") + struct.pack("<IIQ", ARRAY, ARRAY, 1) + inner
        assert inspect_gguf(build(tmp_path / "n.gguf", [*LLAMA, nested])).layers == 1

    def test_what_follows_a_long_number_array_is_read(self, tmp_path: Path) -> None:
        floats = [struct.pack("<f", 0.5)] * 2000
        kvs = [*LLAMA, kv_array("scores", F32_VALUE, floats), kv_str("general.name", "after")]
        assert inspect_gguf(build(tmp_path / "f.gguf", kvs)).name == "after"

    def test_what_follows_a_string_array_is_read(self, tmp_path: Path) -> None:
        kvs = [*LLAMA, kv_array("merges", STRING, [s("a b"), s(""), s("cd e")]),
               kv_str("general.name", "after")]  # fmt: skip
        assert inspect_gguf(build(tmp_path / "s.gguf", kvs)).name == "after"

    def test_a_string_array_running_past_the_file(self, tmp_path: Path) -> None:
        kvs = [kv_array("merges", STRING, [struct.pack("<Q", 100) + b"x" * 10])]
        path = build(tmp_path / "p.gguf", kvs, pad=False)
        first_string = HEADER_BYTES + 8 + len("merges") + 4 + 4 + 8
        assert first_string == 54
        assert refusal(path) == "truncated: string array ends at 162, past the file"

    def test_a_string_array_ending_exactly_at_the_end_of_the_file(self, tmp_path: Path) -> None:
        path = build(tmp_path / "e.gguf", [kv_array("merges", STRING, [s("ab")])], pad=False)
        assert refusal(path) == "no general.architecture in the metadata"


class TestVocabulary:
    def test_the_vocabulary_size_is_the_token_count(self, tmp_path: Path) -> None:
        tokens = kv_array("tokenizer.ggml.tokens", STRING, [s("a"), s("b"), s("c")])
        assert inspect_gguf(build(tmp_path / "v.gguf", [*LLAMA, tokens])).vocab_size == 3

    def test_a_repeated_token_is_quoted_to_forty_characters(self, tmp_path: Path) -> None:
        word = "w" * 50
        tokens = kv_array("tokenizer.ggml.tokens", STRING, [s("a"), s(word), s("b"), s(word)])
        assert refusal(build(tmp_path / "r.gguf", [*LLAMA, tokens])) == (
            f"token {'w' * 40!r} appears twice in the vocabulary"
        )

    def test_a_repeated_token_that_is_not_utf8(self, tmp_path: Path) -> None:
        tokens = kv_array("tokenizer.ggml.tokens", STRING, [s(b"\xff"), s(b"\xff")])
        assert refusal(build(tmp_path / "x.gguf", [*LLAMA, tokens])) == (
            "token '\ufffd' appears twice in the vocabulary"
        )

    def test_tokens_that_are_not_strings(self, tmp_path: Path) -> None:
        tokens = kv_array("tokenizer.ggml.tokens", U32, [struct.pack("<I", 1)])
        assert refusal(build(tmp_path / "n.gguf", [*LLAMA, tokens])) == (
            "tokenizer.ggml.tokens is not an array of strings"
        )

    def test_a_token_running_past_the_file(self, tmp_path: Path) -> None:
        tokens = kv_array("tokenizer.ggml.tokens", STRING, [struct.pack("<Q", 100) + b"x"])
        path = build(tmp_path / "p.gguf", [tokens], pad=False)
        after_length = HEADER_BYTES + 8 + len("tokenizer.ggml.tokens") + 4 + 4 + 8 + 8
        assert refusal(path) == f"truncated: string array runs past offset {after_length}"

    def test_a_token_ending_exactly_at_the_end_of_the_file(self, tmp_path: Path) -> None:
        tokens = kv_array("tokenizer.ggml.tokens", STRING, [s("ab")])
        path = build(tmp_path / "e.gguf", [tokens], pad=False)
        assert refusal(path) == "no general.architecture in the metadata"


class TestTensors:
    def test_four_dimensions_pass_and_five_do_not(self, tmp_path: Path) -> None:
        ok = build(tmp_path / "4.gguf", tensors=[tensor("w", [2, 2, 2, 2])], data=bytes(64))
        assert inspect_gguf(ok).parameters == 16
        five = build(tmp_path / "5.gguf", tensors=[tensor("w", [1] * 5)])
        assert refusal(five) == "tensor 'w' has 5 dimensions"

    def test_zero_or_a_huge_number_of_dimensions(self, tmp_path: Path) -> None:
        zero = s("w") + struct.pack("<I", 0)
        assert refusal(build(tmp_path / "0.gguf", tensors=[zero + bytes(16)])) == (
            "tensor 'w' has 0 dimensions"
        )
        huge = s("w") + struct.pack("<I", 2**32 - 1)
        assert refusal(build(tmp_path / "h.gguf", tensors=[huge + bytes(16)])) == (
            "tensor 'w' has 4294967295 dimensions"
        )

    def test_a_dimension_of_two_to_the_64_is_past_the_end(self, tmp_path: Path) -> None:
        path = build(tmp_path / "d.gguf", tensors=[tensor("w", [2**64 - 1])], data=bytes(64))
        data_start = path.stat().st_size - 64
        assert refusal(path) == (
            f"tensor 'w' ends at byte {data_start + 4 * (2**64 - 1)}, past the end of the file "
            f"({path.stat().st_size} bytes)"
        )

    def test_a_tensor_name_of_64_kib_passes_and_one_byte_more_does_not(
        self, tmp_path: Path
    ) -> None:
        ok = build(tmp_path / "ok.gguf", tensors=[tensor("n" * 65536, [8])], data=bytes(64))
        assert inspect_gguf(ok).tensor_count == 1
        long = build(tmp_path / "long.gguf", kvs=[], tensors=[tensor("n" * 65537, [8])])
        assert refusal(long) == "string of 65537 bytes at offset 24 is too long"

    def test_an_unknown_type_names_the_tensor(self, tmp_path: Path) -> None:
        path = build(tmp_path / "t.gguf", tensors=[tensor("w", [8], 2**32 - 1)], data=bytes(64))
        assert refusal(path) == "tensor 'w' has unknown type 4294967295"

    def test_a_row_of_partial_blocks_names_its_length(self, tmp_path: Path) -> None:
        path = build(tmp_path / "r.gguf", tensors=[tensor("w", [33, 2], Q8_0)], data=bytes(128))
        assert refusal(path) == "tensor 'w': row of 33 is not whole blocks"

    def test_a_misaligned_offset(self, tmp_path: Path) -> None:
        path = build(tmp_path / "a.gguf", tensors=[tensor("w", [8], F32, 3)], data=bytes(64))
        assert refusal(path) == "tensor 'w' offset 3 is not 32-aligned"


class TestFacts:
    def test_the_tiny_model_exactly(self, tiny_model: Path) -> None:
        facts = inspect_gguf(tiny_model)
        vocab, embedding, layers, ff = facts.vocab_size, 64, 2, 128
        assert facts == GGUFFacts(
            architecture="llama",
            name="meshd-tiny-test",
            quantization="F32",
            parameters=facts.parameters,
            context_length=4096,
            layers=layers,
            embedding=embedding,
            heads=4,
            kv_heads=2,
            key_length=16,
            value_length=16,
            vocab_size=vocab,
            has_chat_template=True,
            tensor_count=3 + 9 * layers,
            file_size=tiny_model.stat().st_size,
        )
        kv = 2 * 16  # two kv heads of 16
        per_layer = 2 * embedding + embedding * embedding * 2 + 2 * embedding * kv + 3 * ff * 64
        assert facts.parameters == 2 * vocab * embedding + embedding + layers * per_layer
        assert vocab == 3 + 256 + 1 + 94 + 19

    def test_quantized_files_say_so(self, tmp_path: Path) -> None:
        facts = inspect_gguf(write_tiny_gguf(tmp_path / "q.gguf", quant="Q8_0"))
        assert facts.quantization == "Q8_0"

    @pytest.mark.parametrize(("file_type", "expected"), [(None, "unknown"), (999, "type 999")])
    def test_a_missing_or_unknown_file_type(
        self, tmp_path: Path, file_type: int | None, expected: str
    ) -> None:
        kvs = LLAMA if file_type is None else [*LLAMA, kv_u32("general.file_type", file_type)]
        assert inspect_gguf(build(tmp_path / "t.gguf", kvs)).quantization == expected

    def test_defaults_when_the_file_says_little(self, tmp_path: Path) -> None:
        facts = inspect_gguf(
            build(tmp_path / "d.gguf", [*LLAMA, kv_u32("llama.embedding_length", 64)])
        )
        assert (facts.name, facts.heads, facts.kv_heads) == ("", 1, 1)
        assert (facts.key_length, facts.value_length, facts.context_length) == (64, 64, 0)
        assert (facts.vocab_size, facts.has_chat_template) == (0, False)

    def test_explicit_head_sizes_and_per_layer_heads(self, tmp_path: Path) -> None:
        heads = kv_array(
            "llama.attention.head_count", U32, [struct.pack("<I", 4), struct.pack("<I", 8)]
        )
        kvs = [
            *LLAMA,
            kv_u32("llama.embedding_length", 64),
            kv_u32("llama.context_length", 77),
            heads,
            kv_u32("llama.attention.head_count_kv", 2),
            kv_u32("llama.attention.key_length", 24),
            kv_u32("llama.attention.value_length", 40),
        ]
        facts = inspect_gguf(build(tmp_path / "e.gguf", kvs))
        assert (facts.heads, facts.kv_heads, facts.context_length) == (8, 2, 77)
        assert (facts.key_length, facts.value_length) == (24, 40)
        assert facts.kv_cache_bytes(10) == 1 * 2 * (24 + 40) * 2 * 10


class TestBounds:
    def test_alignment_of_one_passes_and_zero_does_not(self, tmp_path: Path) -> None:
        one = build(tmp_path / "1.gguf", [*LLAMA, kv_u32("general.alignment", 1)])
        assert inspect_gguf(one).layers == 1
        zero = build(tmp_path / "0.gguf", [*LLAMA, kv_u32("general.alignment", 0)])
        assert refusal(zero) == "bad general.alignment 0"

    def test_arrays_nested_three_deep_are_refused(self, tmp_path: Path) -> None:
        innermost = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
        middle = struct.pack("<IQ", ARRAY, 1) + innermost
        nested = s("k") + struct.pack("<IIQ", ARRAY, ARRAY, 1) + middle
        assert refusal(build(tmp_path / "n.gguf", [*LLAMA, nested])) == (
            "arrays nested more than 2 deep"
        )

    def test_a_per_layer_list_of_1024_values_is_kept(self, tmp_path: Path) -> None:
        heads = [struct.pack("<I", 4)] * 1024
        kvs = [*LLAMA, kv_array("llama.attention.head_count", U32, heads)]
        assert inspect_gguf(build(tmp_path / "h.gguf", kvs)).heads == 4
