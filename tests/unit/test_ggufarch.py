"""meshd/ggufarch.py: the architecture facts llama.cpp asserts on, each at its limit and past it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tinygguf import write_tiny_gguf

from meshd.errors import InvalidModelFile
from meshd.ggufarch import MAX_EXPERTS, MAX_LAYERS, check_architecture
from meshd.ggufcheck import inspect_gguf

BASE = {"llama.block_count": 2, "llama.embedding_length": 64, "llama.context_length": 128}


def check(**changes: Any) -> None:
    meta = {**BASE, **{k.replace("__", "."): v for k, v in changes.items()}}
    meta = {k: v for k, v in meta.items() if v is not None}
    check_architecture(meta, "llama")


def refused(reason: str, **changes: Any) -> None:
    with pytest.raises(InvalidModelFile, match=reason):
        check(**changes)


def test_a_plain_model_passes() -> None:
    check()


class TestLayers:
    def test_none_or_zero_layers(self) -> None:
        refused("no llama.block_count", llama__block_count=None)
        refused("block_count is 0; it must be 1 to 512", llama__block_count=0)

    def test_one_and_the_most_layers_pass(self) -> None:
        check(llama__block_count=1)
        check(llama__block_count=MAX_LAYERS)

    def test_one_layer_too_many(self) -> None:
        refused("block_count is 513", llama__block_count=MAX_LAYERS + 1)

    def test_a_layer_count_that_is_not_a_whole_number(self) -> None:
        refused("not a whole number", llama__block_count=2.0)
        refused("not a whole number", llama__block_count=True)
        refused("not a whole number", llama__block_count="2")

    def test_prediction_layers_within_the_layers(self) -> None:
        check(llama__nextn_predict_layers=2)
        refused("nextn_predict_layers is 3, more than the 2 layers", llama__nextn_predict_layers=3)


class TestSizes:
    @pytest.mark.parametrize("key", ["embedding_length", "context_length"])
    def test_zero_is_refused_and_one_passes(self, key: str) -> None:
        refused(f"llama.{key} is 0; it must be at least 1", **{f"llama__{key}": 0})
        check(**{f"llama__{key}": 1})


class TestHeads:
    def test_zero_heads(self) -> None:
        refused("head_count is 0", llama__attention__head_count=0)

    def test_kv_heads_between_one_and_the_heads(self) -> None:
        check(llama__attention__head_count=4, llama__attention__head_count_kv=1)
        check(llama__attention__head_count=4, llama__attention__head_count_kv=4)
        refused("head_count_kv is 0", llama__attention__head_count=4,
                llama__attention__head_count_kv=0)  # fmt: skip
        refused("head_count_kv is 5", llama__attention__head_count=4,
                llama__attention__head_count_kv=5)  # fmt: skip

    def test_per_layer_heads_use_the_largest(self) -> None:
        check(llama__attention__head_count=(4, 8), llama__attention__head_count_kv=(2, 8))
        refused("head_count_kv is 9", llama__attention__head_count=(4, 8),
                llama__attention__head_count_kv=(2, 9))  # fmt: skip
        refused("not a list of whole numbers", llama__attention__head_count=())

    def test_recurrent_models_have_no_heads(self) -> None:
        meta = {"mamba.block_count": 2, "mamba.attention.head_count": 0}
        check_architecture(meta, "mamba")


class TestEpsilons:
    @pytest.mark.parametrize("key", ["layer_norm_rms_epsilon", "layer_norm_epsilon"])
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1e-5, "1e-5"])
    def test_bad_epsilons(self, key: str, value: object) -> None:
        refused("must be a finite number above 0", **{f"llama__attention__{key}": value})

    def test_a_tiny_epsilon_passes(self) -> None:
        check(llama__attention__layer_norm_rms_epsilon=1e-30)


class TestExperts:
    def test_dense_model(self) -> None:
        check(llama__expert_count=0, llama__expert_used_count=0)

    def test_experts_in_use(self) -> None:
        check(llama__expert_count=8, llama__expert_used_count=8)
        check(llama__expert_count=MAX_EXPERTS, llama__expert_used_count=1)

    def test_too_many_experts(self) -> None:
        refused("expert_count is 1025", llama__expert_count=MAX_EXPERTS + 1,
                llama__expert_used_count=1)  # fmt: skip

    def test_more_used_than_there_are(self) -> None:
        refused("expert_used_count is 9, more than expert_count \\(8\\)",
                llama__expert_count=8, llama__expert_used_count=9)  # fmt: skip
        refused("expert_used_count is 1, more than expert_count \\(0\\)",
                llama__expert_used_count=1)  # fmt: skip

    def test_experts_of_which_none_are_used(self) -> None:
        refused("expert_used_count is 0", llama__expert_count=8)

    def test_per_layer_used_counts(self) -> None:
        check(llama__expert_count=8, llama__expert_used_count=(2, 8))
        refused("expert_used_count is 9", llama__expert_count=8, llama__expert_used_count=(2, 9))

    def test_groups(self) -> None:
        check(llama__expert_count=8, llama__expert_used_count=2, llama__expert_group_count=4,
              llama__expert_group_used_count=3)  # fmt: skip
        check(llama__expert_count=8, llama__expert_used_count=2, llama__expert_group_count=1)
        refused("expert_group_count is 8; it must be below expert_count",
                llama__expert_count=8, llama__expert_used_count=2,
                llama__expert_group_count=8)  # fmt: skip
        refused("not a valid grouping", llama__expert_count=8, llama__expert_used_count=2,
                llama__expert_group_count=3, llama__expert_group_used_count=1)  # fmt: skip
        refused("not a valid grouping", llama__expert_count=8, llama__expert_used_count=2,
                llama__expert_group_count=4, llama__expert_group_used_count=4)  # fmt: skip
        refused("not a valid grouping", llama__expert_count=8, llama__expert_used_count=2,
                llama__expert_group_count=4, llama__expert_group_used_count=0)  # fmt: skip

    def test_groups_without_experts(self) -> None:
        refused("expert_group_count is 2 without experts", llama__expert_group_count=2)


class TestRopeScaling:
    @pytest.mark.parametrize("kind", ["none", "linear", "yarn", "longrope"])
    def test_known_kinds(self, kind: str) -> None:
        check(llama__rope__scaling__type=kind)

    def test_an_unknown_kind(self) -> None:
        refused("rope.scaling.type is 'bogus'", llama__rope__scaling__type="bogus")


class TestWholeFiles:
    def test_a_file_with_no_layers_is_refused(self, tmp_path: Path) -> None:
        path = write_tiny_gguf(tmp_path / "none.gguf", layers=0)
        with pytest.raises(InvalidModelFile, match="block_count is 0"):
            inspect_gguf(path)

    def test_a_vocabulary_with_a_repeated_token_is_refused(self, tmp_path: Path) -> None:
        path = write_tiny_gguf(tmp_path / "twice.gguf", extra_tokens=["▁mesh"])
        with pytest.raises(InvalidModelFile, match="token '▁mesh' appears twice"):
            inspect_gguf(path)

    def test_quantized_files_pass_with_their_facts(self, tmp_path: Path) -> None:
        facts = inspect_gguf(write_tiny_gguf(tmp_path / "q.gguf", quant="Q4_0"))
        assert facts.quantization == "Q4_0" and facts.layers == 2 and facts.vocab_size > 256


class TestExactly:
    """The messages say exactly what is wrong, and cut what a file says to 40 characters."""

    def _message(self, **changes: Any) -> str:
        with pytest.raises(InvalidModelFile) as caught:
            check(**changes)
        return str(caught.value)

    def test_prediction_layers_may_be_absent_with_one_layer(self) -> None:
        check(llama__block_count=1)
        check(llama__block_count=1, llama__nextn_predict_layers=1)

    def test_one_head_is_enough(self) -> None:
        check(llama__attention__head_count=1)
        check(llama__attention__head_count=1, llama__attention__head_count_kv=1)

    def test_a_long_rope_scaling_is_quoted_to_forty_characters(self) -> None:
        assert self._message(llama__rope__scaling__type="b" * 100) == (
            f"llama.rope.scaling.type is {'b' * 40!r}; llama.cpp knows linear, longrope, none, yarn"
        )

    def test_a_value_that_is_not_whole_is_quoted_to_forty_characters(self) -> None:
        assert self._message(llama__block_count=2.5) == (
            "llama.block_count is 2.5, not a whole number"
        )
        assert self._message(llama__block_count="c" * 100) == (
            f"llama.block_count is {'c' * 40}, not a whole number"
        )

    def test_a_bool_in_a_per_layer_list_is_not_a_number(self) -> None:
        assert self._message(llama__attention__head_count=(True, 2)) == (
            "llama.attention.head_count is not a list of whole numbers"
        )

    def test_two_groups_are_checked_too(self) -> None:
        assert self._message(
            llama__expert_count=8, llama__expert_used_count=2, llama__expert_group_count=2
        ) == ("llama: 8 experts in 2 groups with 0 used is not a valid grouping")

    def test_one_group_used_of_four(self) -> None:
        check(llama__expert_count=8, llama__expert_used_count=2, llama__expert_group_count=4,
              llama__expert_group_used_count=1)  # fmt: skip
