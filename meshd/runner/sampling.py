"""A request's sampler: a llama.cpp sampler chain, built as llama-cpp-python builds its own
(top-k, top-p, min-p, temperature, then a seeded draw), so that a sequence samples from its own
row of a batch's logits. At temperature 0 the token is the row's argmax, read straight from the
logits (numpy) rather than through a chain that first copies every logit of the vocabulary
into candidates: for Gemma's 262k tokens that copy was most of the runner's time between
decodes. The first of equal maxima wins, as in llama.cpp's greedy sampler."""

from __future__ import annotations

import random
from typing import Any

import llama_cpp
import numpy as np

from meshd.types import Sampling


class Sampler:
    """One sequence's sampler (a chain, or the argmax at temperature 0); close() frees it."""

    def __init__(self, sampling: Sampling, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.chain: Any = None
        if sampling.temperature <= 0:
            return  # greedy: the argmax of the row
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        for sampler in (
            llama_cpp.llama_sampler_init_top_k(sampling.top_k),
            llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(0.0, 1),
            llama_cpp.llama_sampler_init_temp(sampling.temperature),
            llama_cpp.llama_sampler_init_dist(seed),
        ):
            llama_cpp.llama_sampler_chain_add(chain, sampler)
        self.chain = chain

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from row `index` of the last decode's logits (accepted into the
        chain's state)."""
        if self.chain is None:
            row = llama_cpp.llama_get_logits_ith(ctx, index)
            return int(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            llama_cpp.llama_sampler_free(chain)
