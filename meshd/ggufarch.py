"""Architecture facts llama.cpp asserts on while loading: a file that breaks one would abort the
process that loads it (GGML_ASSERT), so it is refused at pull and at load with the reason.

Pure functions over the metadata that ggufcheck parsed (scalars as numbers, short numeric
arrays as tuples, long arrays as their length).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from meshd.errors import InvalidModelFile

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
# Architectures without attention heads (state-space and RWKV models).
RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
EPSILON_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")
ROPE_SCALING_TYPES = frozenset({"none", "linear", "yarn", "longrope"})


def check_architecture(meta: Mapping[str, Any], arch: str) -> None:
    """Raise InvalidModelFile naming the first fact llama.cpp would abort on."""
    layers = _whole(meta, f"{arch}.block_count")
    if layers is None:
        raise InvalidModelFile(f"no {arch}.block_count in the metadata")
    if not 1 <= layers <= MAX_LAYERS:
        raise InvalidModelFile(f"{arch}.block_count is {layers}; it must be 1 to {MAX_LAYERS}")
    nextn = _whole(meta, f"{arch}.nextn_predict_layers")
    if nextn is not None and nextn > layers:
        raise InvalidModelFile(
            f"{arch}.nextn_predict_layers is {nextn}, more than the {layers} layers"
        )
    for key in (f"{arch}.embedding_length", f"{arch}.context_length"):
        value = _whole(meta, key)
        if value is not None and value < 1:
            raise InvalidModelFile(f"{key} is {value}; it must be at least 1")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise InvalidModelFile(
            f"{arch}.rope.scaling.type is {str(scaling)[:40]!r}; "
            f"llama.cpp knows {', '.join(sorted(ROPE_SCALING_TYPES))}"
        )
    _check_heads(meta, arch)
    _check_epsilons(meta, arch)
    _check_experts(meta, arch)


def _check_heads(meta: Mapping[str, Any], arch: str) -> None:
    if arch in RECURRENT:
        return
    heads = _largest(meta, f"{arch}.attention.head_count")
    kv_heads = _largest(meta, f"{arch}.attention.head_count_kv")
    if heads is not None and heads < 1:
        raise InvalidModelFile(f"{arch}.attention.head_count is {heads}; it must be at least 1")
    if kv_heads is not None and heads is not None and not 1 <= kv_heads <= heads:
        raise InvalidModelFile(
            f"{arch}.attention.head_count_kv is {kv_heads}; it must be 1 to head_count ({heads})"
        )


def _check_epsilons(meta: Mapping[str, Any], arch: str) -> None:
    for suffix in EPSILON_KEYS:
        key = f"{arch}.{suffix}"
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise InvalidModelFile(f"{key} is {value!r}; it must be a finite number above 0")


def _check_experts(meta: Mapping[str, Any], arch: str) -> None:
    experts = _whole(meta, f"{arch}.expert_count") or 0
    used = _largest(meta, f"{arch}.expert_used_count") or 0
    groups = _whole(meta, f"{arch}.expert_group_count") or 0
    groups_used = _whole(meta, f"{arch}.expert_group_used_count") or 0
    if experts > MAX_EXPERTS:
        raise InvalidModelFile(f"{arch}.expert_count is {experts}; at most {MAX_EXPERTS}")
    if used > experts:
        raise InvalidModelFile(
            f"{arch}.expert_used_count is {used}, more than expert_count ({experts})"
        )
    if experts == 0:
        if groups:
            raise InvalidModelFile(f"{arch}.expert_group_count is {groups} without experts")
        return
    if used == 0:
        raise InvalidModelFile(f"{arch}.expert_count is {experts} but expert_used_count is 0")
    if groups >= experts:
        raise InvalidModelFile(
            f"{arch}.expert_group_count is {groups}; it must be below expert_count ({experts})"
        )
    if groups > 1 and (experts % groups or not 0 < groups_used < groups):
        raise InvalidModelFile(
            f"{arch}: {experts} experts in {groups} groups with {groups_used} used "
            "is not a valid grouping"
        )


def _whole(meta: Mapping[str, Any], key: str) -> int | None:
    """A whole-number scalar, None when absent; a value of another kind is refused."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidModelFile(f"{key} is {str(value)[:40]}, not a whole number")
    return value


def _largest(meta: Mapping[str, Any], key: str) -> int | None:
    """A whole number, or the largest of a per-layer tuple of them."""
    value = meta.get(key)
    if isinstance(value, tuple):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InvalidModelFile(f"{key} is not a list of whole numbers")
        return int(max(value))
    return _whole(meta, key)
