"""A request's sampler: a llama.cpp sampler chain, built as llama-cpp-python builds its own
(top-k, top-p, min-p, temperature, then a seeded draw; greedy at temperature 0), so that a
sequence samples from its own row of a batch's logits."""

from __future__ import annotations

import random
from typing import Any

import llama_cpp

from meshd.types import Sampling


class Sampler:
    """One sequence's sampler chain; free it with close()."""

    def __init__(self, sampling: Sampling) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
            add = [
                llama_cpp.llama_sampler_init_top_k(sampling.top_k),
                llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1),
                llama_cpp.llama_sampler_init_min_p(0.0, 1),
                llama_cpp.llama_sampler_init_temp(sampling.temperature),
                llama_cpp.llama_sampler_init_dist(seed),
            ]
            for sampler in add:
                llama_cpp.llama_sampler_chain_add(chain, sampler)
        self.chain: Any = chain

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from row `index` of the last decode's logits (accepted into the
        chain's state)."""
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            llama_cpp.llama_sampler_free(chain)
