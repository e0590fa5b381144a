"""Models live in runner processes: the daemon maps no llama.cpp, a spare runner is ready ahead
of the first load, and two runners of one file share its pages."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import eventually

from meshd.client import MeshClient
from meshd.process import DaemonProcess


def maps_llama(pid: int) -> bool:
    return any("libllama" in m.path for m in psutil.Process(pid).memory_maps(grouped=True))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")
def test_the_daemon_maps_no_llama_cpp_and_each_model_has_its_runner(
    tmp_path: Path, tiny_model: Path
) -> None:
    models = [f"a={tiny_model}", f"b={tiny_model}"]
    with DaemonProcess(tmp_path / "home", models) as daemon, MeshClient(daemon.address) as mesh:
        mesh.warm("a", wait=True)
        mesh.warm("b", wait=True)
        runners = {m.name: m.runner_pid for m in mesh.models()}
        assert daemon.proc is not None
        assert not maps_llama(daemon.proc.pid), "llama.cpp stays out of the daemon"
        assert len(set(runners.values())) == 2
        for pid in runners.values():
            assert psutil.Process(pid).ppid() == daemon.proc.pid
            assert maps_llama(pid)
            assert psutil.Process(pid).nice() == 5, "inference yields the CPU"
        rss = {m.name: m.runner_rss for m in mesh.models()}
        assert all(r > 10 * 2**20 for r in rss.values()), rss


def test_the_first_load_takes_the_spare_runner(start_node: Callable) -> None:
    node = start_node()
    supply = node.engine.supply
    eventually(lambda: supply.spare is not None)
    spare_pid = supply.spare.pid
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        (info,) = mesh.models()
        assert info.runner_pid == spare_pid
        eventually(lambda: supply.spare is not None and supply.spare.pid != spare_pid)


def test_without_a_spare_a_load_starts_its_own_runner(start_node: Callable) -> None:
    node = start_node(spare_runner=False)
    with MeshClient(node.address) as mesh:
        assert mesh.complete("tiny", "Hi", max_tokens=3).tokens == 3
        assert node.engine.supply.spare is None
        assert mesh.models()[0].runner_pid > 0


def test_a_llama_cpp_parameter_that_does_not_exist_is_refused_not_ignored() -> None:
    import llama_cpp

    from meshd.runner.context import set_fields

    params = llama_cpp.llama_model_default_params()
    set_fields(params, n_gpu_layers=3)
    assert params.n_gpu_layers == 3
    with pytest.raises(TypeError, match="no field 'use_mmap'"):
        set_fields(params, use_mmap=False)  # renamed load_mode upstream
