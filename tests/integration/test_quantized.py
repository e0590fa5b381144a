"""Real tokens through quantized CPU kernels: the tests' own Q8_0 and Q4_0 models, and the demo
model (Q4_K_M, installed with the test extra). An F32 model never reaches these kernels, which
is how a build with instructions the CPU traps on once went unnoticed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tinygguf import write_tiny_gguf

from meshd.client import MeshClient
from meshd.demo_model import demo_model_path
from meshd.types import ModelState


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_a_quantized_model_generates_through_a_runner(
    start_node: Callable, tmp_path: Path, quant: str
) -> None:
    path = write_tiny_gguf(tmp_path / f"tiny-{quant}.gguf", quant=quant)
    node = start_node(models={"q": path})
    with MeshClient(node.address) as mesh:
        first = mesh.complete("q", "The capital of France is", max_tokens=16, temperature=0)
        again = mesh.complete("q", "The capital of France is", max_tokens=16, temperature=0)
        assert first.tokens == 16 and first.text
        assert again.text == first.text, "greedy decoding is repeatable"
        (info,) = mesh.models()
        assert info.quantization == quant
        assert info.state is ModelState.WARM and info.restarts == 0


def test_the_demo_model_answers_through_a_runner(start_node: Callable, tmp_path: Path) -> None:
    path = demo_model_path(tmp_path / "demo")
    node = start_node(models={"gemma": path}, context=256)
    with MeshClient(node.address) as mesh:
        result = mesh.complete("gemma", "The capital of France is", max_tokens=4, temperature=0)
        assert result.tokens >= 1 and result.text.strip()
        (info,) = mesh.models()
        assert info.quantization == "Q4_K_M" and info.restarts == 0
