"""What stays warm: Warm and its lease, keep-alive expiry, pins, the memory budget and LRU."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import eventually

from meshd.client import MeshClient
from meshd.errors import InsufficientMemory
from meshd.types import ModelState


def _states(mesh: MeshClient) -> dict[str, ModelState]:
    return {m.name: m.state for m in mesh.models()}


def test_models_start_cold_and_warm_returns_before_the_load(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        assert _states(mesh) == {"tiny": ModelState.COLD}
        result = mesh.warm("tiny", lease=60)
        assert result.state in (ModelState.LOADING, ModelState.WARM)
        assert result.warm_until >= time.time() + 59
        eventually(lambda: _states(mesh)["tiny"] is ModelState.WARM)
        waited = mesh.warm("tiny", wait=True)
        assert waited.state is ModelState.WARM and waited.ready_in == 0


def test_idle_model_is_unloaded_after_keep_alive(start_node: Callable) -> None:
    node = start_node(keep_alive="0.5s")
    with MeshClient(node.address) as mesh:
        assert mesh.complete("tiny", "Hi", max_tokens=2).tokens == 2
        assert _states(mesh)["tiny"] is ModelState.WARM
        eventually(lambda: _states(mesh)["tiny"] is ModelState.COLD, timeout=30)
        assert mesh.complete("tiny", "Hi", max_tokens=2).tokens == 2, "reloads on demand"


def test_lease_outlives_keep_alive_then_lapses(start_node: Callable) -> None:
    node = start_node(keep_alive="0.2s")
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", lease=600, wait=True)
        time.sleep(1.0)  # five keep-alives, and a reaper pass after each
        assert _states(mesh)["tiny"] is ModelState.WARM, "the lease holds it past keep-alive"
        node.engine.hosts["tiny"].lease_until = time.time() - 1  # as if 10 minutes had passed
        eventually(lambda: _states(mesh)["tiny"] is ModelState.COLD, timeout=30)


def test_pinned_model_warms_at_start_and_never_expires(start_node: Callable, tiny_model) -> None:
    node = start_node(
        models={"pinned": tiny_model, "loose": tiny_model}, pins=["pinned"], keep_alive="0.2s"
    )
    with MeshClient(node.address) as mesh:
        eventually(lambda: _states(mesh)["pinned"] is ModelState.WARM)
        mesh.warm("loose", lease=0, wait=True)
        eventually(lambda: _states(mesh)["loose"] is ModelState.COLD, timeout=30)
        assert _states(mesh)["pinned"] is ModelState.WARM
        assert [m.pinned for m in mesh.models()] == [True, False]


def test_model_over_the_memory_budget_is_refused_before_loading(start_node: Callable) -> None:
    node = start_node(memory_budget="1MiB")
    with MeshClient(node.address) as mesh:
        with pytest.raises(InsufficientMemory, match="memory budget is 1 MiB"):
            mesh.complete("tiny", "Hi", max_tokens=2)
        assert _states(mesh)["tiny"] is not ModelState.WARM
        assert not node.engine.hosts["tiny"].loaded, "llama.cpp never loaded it"
        assert mesh.health()


def test_least_recently_used_idle_model_is_evicted_to_fit(
    start_node: Callable, tiny_model: Path
) -> None:
    models = {"a": tiny_model, "b": tiny_model, "c": tiny_model}
    node = start_node(models=models)
    with MeshClient(node.address) as mesh:
        mesh.warm("a", wait=True)
        mesh.warm("b", wait=True)
        mesh.complete("a", "Hi", max_tokens=2)  # b is now the least recently used
        hosts = node.engine.hosts
        # Room for what a and b hold now, plus c, minus a little: one of them has to go.
        held = hosts["a"].projected_memory() + hosts["b"].projected_memory()
        node.engine.memory_budget = held + hosts["c"].projected_memory() - 1
        mesh.warm("c", wait=True)
        assert _states(mesh) == {"a": ModelState.WARM, "b": ModelState.COLD, "c": ModelState.WARM}


def test_a_warm_never_evicts_a_model_someone_asked_for_recently(
    start_node: Callable, tiny_model: Path
) -> None:
    """A warm guesses at a later request (a web page may send it); the owner's model that a
    request used within the keep-alive stays. A request may evict it."""
    node = start_node(models={"mine": tiny_model, "theirs": tiny_model})
    hosts = node.engine.hosts
    with MeshClient(node.address) as mesh:
        assert mesh.complete("mine", "Hi", max_tokens=2).tokens == 2
        node.engine.memory_budget = hosts["mine"].projected_memory() + 1024  # room for one
        with pytest.raises(InsufficientMemory, match="a warm does not evict mine"):
            mesh.warm("theirs", wait=True)
        assert _states(mesh) == {"mine": ModelState.WARM, "theirs": ModelState.COLD}
        assert mesh.complete("theirs", "Hi", max_tokens=2).tokens == 2  # a request may
        assert _states(mesh) == {"mine": ModelState.COLD, "theirs": ModelState.WARM}


def test_a_model_loaded_without_mmap_is_never_called_paged_out(start_node: Callable) -> None:
    """Its weights are the runner's own memory, not file pages: residency does not apply."""
    node = start_node(use_mmap=False)
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        node.call(node.engine.keeper.check())
        (info,) = mesh.models()
        assert info.state is ModelState.WARM and info.resident_bytes == -1
        assert info.resident_share is None
        (mine,) = next(p for p in mesh.mesh_status().peers if p.local).info.models
        assert not mine.paged_out
