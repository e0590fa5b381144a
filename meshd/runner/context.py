"""One model in a runner: its weights (mapped once) and one llama.cpp context holding every
concurrent sequence, with one set of llama.cpp threads for all of them.

The KV cache has one stream of `context` cells per sequence (not unified): each sequence's
attention runs over its own cells only, so a request computes exactly what it computes alone,
whatever runs beside it (a unified cache interleaves the sequences' cells and changes the
floating-point sums), and llama.cpp documents it as the faster layout for sequences that do
not share a long prefix. A prefix that another sequence holds is copied stream to stream
(meshd.runner.batching), not computed again. No sequence ever holds more than `context`, so a
decode never runs out of cells.

`LoadedModel` also answers what prompt rendering needs (tokenize, special tokens, the chat
template), in the shape meshd.runner.generation expects.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

from meshd.runner.llamalog import route_llama_logs


class LoadedModel:
    """Weights and the one context of a runner."""

    def __init__(
        self,
        path: Path,
        *,
        context: int,
        sequences: int,
        threads: int,
        batch: int,
        use_mmap: bool,
        gpu_layers: int,
        chat_template: str = "",
    ) -> None:
        route_llama_logs()
        self.path = path
        # The parts of the file a token reads through the mapping (set once loaded; None: all
        # of it, as far as anyone can tell).
        self.pages_used: list[tuple[int, int]] | None = None
        self._stack = contextlib.ExitStack()
        model_params = llama_cpp.llama_model_default_params()
        mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        set_fields(model_params, load_mode=mode, n_gpu_layers=gpu_layers)
        self._model = self._stack.enter_context(
            contextlib.closing(
                internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
            )
        )
        batch = max(batch, sequences)  # a step holds at least one token of every sequence
        params = llama_cpp.llama_context_default_params()
        set_fields(
            params,
            n_ctx=context * sequences,
            n_seq_max=sequences,
            kv_unified=False,  # a stream per sequence: see above
            n_batch=batch,
            n_ubatch=batch,
            n_threads=threads,
            n_threads_batch=threads,
            no_perf=True,
        )
        self._ctx = self._stack.enter_context(
            contextlib.closing(
                internals.LlamaContext(model=self._model, params=params, verbose=False)
            )
        )
        self.ctx = self._ctx.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = self._model.vocab
        self.context, self.sequences, self.batch = context, sequences, batch
        self.n_swa = int(llama_cpp.llama_model_n_swa(self._model.model))  # 0: no sliding window
        self.metadata = self._model.metadata()
        # The Jinja chat template chats render with: the file's own, or the one meshd chose
        # for a model whose file has none; "" when the model takes prompts only.
        self.chat_template = chat_template or self.metadata.get("tokenizer.chat_template", "")
        self.chat_renderer: Any = None  # compiled from chat_template at the first chat

    def n_ctx(self) -> int:
        """The most tokens one sequence may hold (prompt and answer)."""
        return self.context

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        tokens: list[int] = self._model.tokenize(text, add_bos, special)
        return tokens

    def token_bos(self) -> int:
        return self._model.token_bos()

    def token_eos(self) -> int:
        return self._model.token_eos()

    def close(self) -> None:
        self._stack.close()


def set_fields(params: ctypes.Structure, **values: object) -> None:
    """Set fields of a llama.cpp parameter struct, refusing a name the struct does not have:
    a ctypes struct takes any attribute and passes only its fields to C, so a field renamed
    upstream (use_mmap became load_mode) would be silently ignored."""
    fields = {name for name, *_ in type(params)._fields_}
    for name, value in values.items():
        if name not in fields:
            raise TypeError(f"llama.cpp's {type(params).__name__} has no field {name!r}")
        setattr(params, name, value)
