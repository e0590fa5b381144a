"""A pinned prefix kept on disk as llama.cpp state: one sequence's KV cells and its tokens.

Runs in a runner process only. `<name>.state` is what `llama_state_seq_save_file` writes;
`<name>.json` beside it says which model file, context size and prefix text it belongs to
(the key the daemon computes). A state whose key differs, that fails to load, or whose tokens
are not the prefix's is ignored: the prefix is evaluated again and saved over it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

log = logging.getLogger("meshd.runner.savedstate")


@dataclass(frozen=True)
class SavedState:
    """Where a pinned prefix's state lives, and the key it must carry to be used."""

    path: Path  # <name>.state; the key is in <name>.json
    key: str

    @property
    def meta(self) -> Path:
        return self.path.with_suffix(".json")

    @classmethod
    def from_wire(cls, data: object) -> SavedState | None:
        if not isinstance(data, dict):
            return None
        path, key = data.get("path"), data.get("key")
        if not isinstance(path, str) or not isinstance(key, str) or not path:
            return None
        return cls(Path(path), key)


def restore(model: Any, seq: int, saved: SavedState, tokens: list[int]) -> bool:
    """Load the saved state into sequence seq of the model's context if it is this prefix's;
    True when it was (the sequence then holds exactly tokens), else the sequence is empty."""
    try:
        meta = json.loads(saved.meta.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("key") != saved.key:
        log.info("%s belongs to another model file or prefix: evaluating again", saved.path.name)
        return False
    capacity = model.n_ctx()
    out = (llama_cpp.llama_token * capacity)()
    count = ctypes.c_size_t(0)
    llama_cpp.llama_memory_seq_rm(model.memory, seq, -1, -1)
    read = llama_cpp.llama_state_seq_load_file(
        model.ctx, str(saved.path).encode(), seq, out, capacity, ctypes.byref(count)
    )
    if not read or list(out[: count.value]) != tokens:
        llama_cpp.llama_memory_seq_rm(model.memory, seq, -1, -1)
        log.warning("%s could not be restored: evaluating the prefix again", saved.path.name)
        return False
    return True


def save(model: Any, seq: int, saved: SavedState, tokens: list[int]) -> None:
    """Write sequence seq's state for tokens, then its key (a partial file is never used)."""
    saved.path.parent.mkdir(parents=True, exist_ok=True)
    partial = saved.path.with_suffix(".state.part")
    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    written = llama_cpp.llama_state_seq_save_file(
        model.ctx, str(partial).encode(), seq, array, len(tokens)
    )
    if not written:
        partial.unlink(missing_ok=True)
        log.warning("could not save %s", saved.path.name)
        return
    saved.meta.unlink(missing_ok=True)  # the old key goes first: never a new state, old key
    os.replace(partial, saved.path)
    saved.meta.write_text(json.dumps({"key": saved.key, "tokens": len(tokens)}))
