"""Warm means resident: a runner's mapping paged out for real (process_madvise(MADV_PAGEOUT),
as memory pressure would), then measured, kept, warmed back and routed around."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import eventually, meshd
from meshes import FAST
from tinygguf import write_tiny_gguf

from meshd.client import MeshClient
from meshd.engine.residency import drop_from_cache, page_out
from meshd.types import ModelInfo, ModelState

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="paging a runner's mapping out takes process_madvise(MADV_PAGEOUT): Linux, as root",
)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """Two ~10 MB models in files of their own: paging them out touches no other test's."""
    folder = tmp_path / "models"
    folder.mkdir()
    written = {
        name: write_tiny_gguf(folder / f"{name}.gguf", embedding=256, layers=4, seed=seed)
        for seed, name in enumerate(("kept", "left"))
    }
    os.sync()  # the OS pages out clean pages only
    return written


@pytest.fixture
def start(start_node: Callable) -> Callable:
    """start_node, with a keeper that measures every 0.2 s instead of 2 s: quicker tests, the
    same keeper."""

    def started(**kwargs: object) -> object:
        node = start_node(**kwargs)
        node.engine.keeper.every = 0.2
        return node

    return started


def _info(mesh: MeshClient, name: str) -> ModelInfo:
    return next(m for m in mesh.models() if m.name == name)


def _share(mesh: MeshClient, name: str) -> float:
    share = _info(mesh, name).resident_share
    assert share is not None, "residency is measurable as root"
    return share


def _page_out(mesh: MeshClient, name: str) -> None:
    info = _info(mesh, name)
    assert info.runner_pid
    page_out(info.runner_pid, Path(info.path))  # what the runner maps
    drop_from_cache(Path(info.path))  # and what it does not (read back, not yet touched)


def _checks_after(node: object, more: int) -> Callable[[], bool]:
    keeper = node.engine.keeper  # type: ignore[attr-defined]
    target = keeper.checks + more
    return lambda: keeper.checks >= target


def test_the_keeper_restores_a_leased_model_and_leaves_an_unleased_one_paged_out(
    start: Callable, models: dict[str, Path]
) -> None:
    node = start(models=models)
    with MeshClient(node.address) as mesh:
        mesh.warm("kept", lease=600, wait=True)
        mesh.complete("left", "Hello", max_tokens=2)  # loaded by a request: no lease
        for name in ("kept", "left"):
            eventually(lambda name=name: _share(mesh, name) > 0.99, timeout=30)
            info = _info(mesh, name)
            assert 0 < info.mapped_bytes <= info.size_bytes
        restores = node.engine.keeper.restores
        for name in ("kept", "left"):
            _page_out(mesh, name)

        def left_paged_out_in_cli() -> bool:
            listed = json.loads(meshd("models", "--json", "--addr", node.address).stdout)
            left = next(m for m in listed if m["name"] == "left")
            return 0 <= left["resident_bytes"] < 0.5 * left["mapped_bytes"]

        eventually(left_paged_out_in_cli, timeout=30)
        eventually(lambda: _share(mesh, "kept") > 0.99, timeout=60)
        assert node.engine.keeper.restores > restores
        eventually(_checks_after(node, 3), timeout=60)
        assert _share(mesh, "left") < 0.5, "an unleased model is left to the OS"
        assert _info(mesh, "left").state is ModelState.WARM  # still loaded, and says so
        table = meshd("models", "--addr", node.address, columns=80).stdout
        assert "paged out" in table
        assert "`meshd warm left` does it now" in " ".join(table.split())
        assert all(len(line) <= 80 for line in table.splitlines())
        answer = mesh.complete("left", "Hello", max_tokens=2)  # it still answers
        assert answer.tokens == 2


def test_the_keeper_does_not_fight_the_owner_for_memory(
    start: Callable, models: dict[str, Path]
) -> None:
    node = start(models={"kept": models["kept"]})
    keeper = node.engine.keeper
    with MeshClient(node.address) as mesh:
        mesh.warm("kept", lease=600, wait=True)
        eventually(lambda: _share(mesh, "kept") > 0.99, timeout=30)
        keeper.owner_needs_memory = lambda: True  # a memory pressure sample
        _page_out(mesh, "kept")
        eventually(lambda: _share(mesh, "kept") < 0.5, timeout=30)
        eventually(_checks_after(node, 3), timeout=60)
        assert _share(mesh, "kept") < 0.5, "under memory pressure nothing is read back"
        keeper.owner_needs_memory = lambda: False  # the pressure is over
        eventually(lambda: _share(mesh, "kept") > 0.99, timeout=60)


def test_warm_on_a_paged_out_model_says_ready_only_once_it_is_resident(
    start: Callable, models: dict[str, Path]
) -> None:
    node = start(models={"kept": models["kept"]})
    node.engine.keeper.owner_needs_memory = lambda: True  # the keeper stays out of it
    with MeshClient(node.address) as mesh:
        mesh.warm("kept", wait=True)
        eventually(lambda: _share(mesh, "kept") > 0.99, timeout=30)
        _page_out(mesh, "kept")
        eventually(lambda: _share(mesh, "kept") < 0.5, timeout=30)
        quick = mesh.warm("kept")  # returns at once: not ready yet, and says how long
        assert quick.state is ModelState.LOADING and quick.ready_in > 0
        eventually(lambda: _share(mesh, "kept") > 0.99, timeout=30)
        _page_out(mesh, "kept")
        eventually(lambda: _share(mesh, "kept") < 0.5, timeout=30)
        ready = mesh.warm("kept", wait=True)
        assert ready.state is ModelState.WARM and ready.ready_in == 0
        assert _share(mesh, "kept") > 0.99, "ready means resident"


def test_routing_prefers_the_peer_where_the_model_is_resident(
    start: Callable, models: dict[str, Path]
) -> None:
    # ~80 MB: its page-in (~0.2 s at the rate assumed before one is measured) outweighs any
    # heartbeat RTT a busy machine measures. Two machines: two files, two page caches.
    big = write_tiny_gguf(models["kept"].with_name("big.gguf"), embedding=512, layers=8)
    copy = big.with_name("copy.gguf")
    shutil.copyfile(big, copy)
    os.sync()
    far = start(models={"m": big}, **FAST)
    near = start(models={"m": copy}, peers=[far.address], **FAST)
    near.engine.keeper.owner_needs_memory = lambda: True  # near leaves its pages to the OS
    with MeshClient(near.address) as mesh, MeshClient(far.address) as other:
        mesh.warm("m", wait=True)
        other.warm("m", wait=True)
        eventually(lambda: _share(mesh, "m") > 0.99 and _share(other, "m") > 0.99, timeout=30)
        local = mesh.complete("m", "Hello", max_tokens=2)
        assert local.served_by == near.node.peer_id  # all else equal, local wins
        _page_out(mesh, "m")

        def near_sees_itself_paged_out_and_far_close() -> bool:
            peers = mesh.mesh_status().peers
            mine = next(p for p in peers if p.local).info.models
            # The heartbeat RTT to far is smoothed from its first sample, which a busy machine
            # (two runners loading) can make long: wait until it is small beside the page-in.
            return any(m.name == "m" and m.paged_out for m in mine) and any(
                not p.local and p.alive and p.rtt < 0.05 for p in peers
            )

        eventually(near_sees_itself_paged_out_and_far_close, timeout=60)
        routed = mesh.complete("m", "Hello", max_tokens=2)
        assert routed.served_by == far.node.peer_id
        assert "paged out on this peer" in routed.routing_reason


def test_lock_memory_keeps_the_weights_where_a_page_out_cannot_take_them(
    start: Callable, models: dict[str, Path]
) -> None:
    node = start(models={"kept": models["kept"]}, lock_memory=True)
    with MeshClient(node.address) as mesh:
        mesh.warm("kept", wait=True)
        info = _info(mesh, "kept")
        assert info.lock_memory
        status = Path(f"/proc/{info.runner_pid}/status").read_text()
        locked_kib = int(next(line for line in status.splitlines() if "VmLck" in line).split()[1])
        assert locked_kib * 1024 >= info.mapped_bytes * 0.9
        with pytest.raises(OSError):  # the kernel refuses to page locked memory out
            page_out(info.runner_pid, Path(info.path))
        drop_from_cache(Path(info.path))
        eventually(_checks_after(node, 2), timeout=30)
        assert _share(mesh, "kept") > 0.99
        assert "locked" in meshd("models", "--addr", node.address).stdout
