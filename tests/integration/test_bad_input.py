"""Bad requests and bad model files get a clear, typed error, and the daemon keeps serving."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.client import MeshClient
from meshd.errors import InvalidRequest, ModelNotFound, ModelUnavailable, RequestTooLarge
from meshd.types import ModelState


def _still_serves(mesh: MeshClient, model: str = "tiny") -> None:
    assert mesh.health()
    assert mesh.complete(model, "Hello", max_tokens=3).tokens == 3


def test_unknown_model_is_not_found_and_names_what_the_peer_has(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        with pytest.raises(ModelNotFound, match=r"no model named 'llama-9000'.*has: tiny"):
            mesh.complete("llama-9000", "Hello", max_tokens=3)
        with pytest.raises(ModelNotFound):
            mesh.warm("llama-9000")
        _still_serves(mesh)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"prompt": "word " * 400}, "prompt"),  # longer than the 512-token context
        ({"prompt": None, "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ],
)
def test_out_of_range_fields_are_invalid_and_named(
    start_node: Callable, kwargs: dict, field: str
) -> None:
    node = start_node()
    request = {"prompt": "Hello", "max_tokens": 8, **kwargs}
    with MeshClient(node.address) as mesh:
        with pytest.raises(InvalidRequest) as caught:
            mesh.complete("tiny", **request)
        assert caught.value.field == field
        assert field in str(caught.value)
        _still_serves(mesh)


def test_prompt_over_the_byte_cap_is_refused_before_any_work(start_node: Callable) -> None:
    node = start_node(max_prompt_bytes="1KiB")
    with MeshClient(node.address) as mesh:
        with pytest.raises(InvalidRequest, match="at most 1024"):
            mesh.complete("tiny", "x" * 2000, max_tokens=3)
        assert not node.engine.hosts["tiny"].loaded, "refused before the model was loaded"
        _still_serves(mesh)


def test_message_over_the_size_limit_is_refused(start_node: Callable) -> None:
    node = start_node(max_message_bytes="64KiB", max_prompt_bytes="1MiB")
    with MeshClient(node.address) as mesh:
        with pytest.raises(RequestTooLarge):
            mesh.complete("tiny", "x" * 100_000, max_tokens=3)
        _still_serves(mesh)


def _hostile_files(folder: Path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "text": b"this is a README, not a model\n",
        "badmagic": b"GGML" + raw[4:],
        "empty": b"",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.gguf"
        paths[name].write_bytes(content)
    return paths


def test_bad_model_files_are_refused_and_the_good_model_still_serves(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    hostile = _hostile_files(tmp_path, tiny_model)
    node = start_node(models={"tiny": tiny_model, **hostile})
    with MeshClient(node.address) as mesh:
        listed = {m.name: m for m in mesh.models()}
        for name in hostile:
            assert listed[name].state is ModelState.FAILED
            assert listed[name].error.startswith(f"{name}.gguf: ")
            with pytest.raises(ModelUnavailable, match=f"{name}.gguf"):
                mesh.complete(name, "Hello", max_tokens=3)
            with pytest.raises(ModelUnavailable):
                mesh.warm(name)
            assert not node.engine.hosts[name].loaded, "llama.cpp never opened it"
        assert "truncated" in listed["truncated"].error or "past the end" in (
            listed["truncated"].error
        )
        _still_serves(mesh)


def test_a_file_corrupted_after_start_is_refused_at_load(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "later.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    node = start_node(models={"tiny": tiny_model, "later": copy})
    copy.write_bytes(copy.read_bytes()[:1000])  # damaged on disk while the daemon runs
    with MeshClient(node.address) as mesh:
        with pytest.raises(ModelUnavailable, match=r"later\.gguf"):
            mesh.complete("later", "Hello", max_tokens=3)
        _still_serves(mesh)


@pytest.mark.parametrize("lease", [math.nan, math.inf, -math.inf, -1.0, 1e308, 8 * 86400.0])
def test_a_lease_out_of_range_is_invalid(start_node: Callable, lease: float) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        with pytest.raises(InvalidRequest) as caught:
            mesh.warm("tiny", lease=lease)
        assert caught.value.field == "lease_seconds"
        assert mesh.warm("tiny", lease=3600).warm_until < time.time() + 3601
        _still_serves(mesh)


def test_a_huge_model_name_is_invalid_and_not_echoed(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        for call in (
            lambda: mesh.complete("x" * 100_000, "Hello", max_tokens=2),
            lambda: mesh.warm("x" * 100_000),
        ):
            with pytest.raises(InvalidRequest) as caught:
                call()
            assert caught.value.field == "model" and len(str(caught.value)) < 200
        _still_serves(mesh)
