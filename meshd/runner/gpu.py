"""How many of a model's layers go to the GPU: a pure choice, so that it is tested without one."""

from __future__ import annotations

ALL_LAYERS = -1  # llama.cpp's n_gpu_layers for "every layer"
AUTO = -1  # the gpu_layers setting's default: all where the build can offload, else none


def offload_layers(setting: int, build_offloads: bool) -> int:
    """The n_gpu_layers to load with: none on a build without a GPU backend (CPU only), else
    what the setting says, all by default (llama-cpp-python's own default is 0, which leaves
    Metal unused on a Mac even where llama.cpp was built for it)."""
    if not build_offloads:
        return 0
    return ALL_LAYERS if setting == AUTO else setting
