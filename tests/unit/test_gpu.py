"""meshd/runner/gpu.py: how many layers go to the GPU, and the setting that says it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import load_settings
from meshd.errors import ConfigError
from meshd.runner.gpu import ALL_LAYERS, AUTO, offload_layers


def test_every_layer_on_the_gpu_by_default_where_the_build_has_one() -> None:
    assert offload_layers(AUTO, build_offloads=True) == ALL_LAYERS
    assert offload_layers(12, build_offloads=True) == 12
    assert offload_layers(0, build_offloads=True) == 0  # the owner keeps it on the CPU


def test_none_where_the_build_has_no_gpu_backend() -> None:
    assert offload_layers(AUTO, build_offloads=False) == 0
    assert offload_layers(12, build_offloads=False) == 0


def test_the_setting(tmp_path: Path) -> None:
    assert load_settings(tmp_path, environ={}).gpu_layers == AUTO
    assert load_settings(tmp_path, {"gpu_layers": "auto"}, environ={}).gpu_layers == AUTO
    assert load_settings(tmp_path, environ={"MESHD_GPU_LAYERS": "8"}).gpu_layers == 8
    with pytest.raises(ConfigError, match="gpu_layers"):
        load_settings(tmp_path, {"gpu_layers": "-3"}, environ={})
