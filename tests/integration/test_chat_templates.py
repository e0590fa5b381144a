"""Models chat whatever their file holds: its own template, a built-in one for its family, or one
named in meshd.toml; and a model that cannot chat says so, everywhere a model is listed. With
real llama.cpp, and the README's OpenAI snippet run as written against the demo model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from conftest import NodeThread
from helpers import meshd
from tinygguf import write_tiny_gguf

from meshd.client import MeshClient
from meshd.errors import InvalidRequest

README = Path(__file__).resolve().parents[2] / "README.md"
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def bare_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files without a chat template: one whose vocabulary holds ChatML's turn tokens, one
    with no turn tokens at all."""
    folder = tmp_path_factory.mktemp("bare")
    return {
        "chatml": write_tiny_gguf(
            folder / "chatml.gguf", chat_template="", extra_tokens=CHATML_TOKENS
        ),
        "plain": write_tiny_gguf(folder / "plain.gguf", chat_template=""),
    }


def _openai(node: NodeThread) -> openai.OpenAI:
    assert node.node is not None and node.node.http is not None
    return openai.OpenAI(base_url=f"{node.node.http.url}/v1", api_key="unused-on-loopback")


def test_a_file_without_a_template_chats_with_its_family_s(
    start_node: Callable[..., NodeThread], bare_models: dict[str, Path], tiny_model: Path
) -> None:
    node = start_node(models={**bare_models, "own": tiny_model})
    sdk = _openai(node)
    listed = {m.id: m.model_dump() for m in sdk.models.list().data}
    assert listed["chatml"]["chat_template"] == "chatml (built in)" and listed["chatml"]["chat"]
    assert listed["own"]["chat_template"] == "gguf" and listed["own"]["chat"]
    assert listed["plain"]["chat_template"] == "" and listed["plain"]["chat"] is False
    answer = sdk.chat.completions.create(
        model="chatml",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    # "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n": the turn markers are one
    # token each, so the prompt is a handful of tokens, not their letters one by one.
    assert answer.usage.prompt_tokens < len("<|im_start|>user\nHello<|im_end|>\n")
    with pytest.raises(openai.BadRequestError, match="chat_template") as refused:
        sdk.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
    assert refused.value.body["param"] == "messages"  # type: ignore[index]
    assert sdk.completions.create(model="plain", prompt="Hello", max_tokens=2).usage


def test_meshd_toml_names_the_template(
    start_node: Callable[..., NodeThread], bare_models: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "named"
    home.mkdir()
    (home / "ours.jinja").write_text(
        "{{ raise_exception('rendered by ours.jinja') if messages[0].content == 'boom' }}"
        "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    )
    (home / "meshd.toml").write_text(
        f'[models.plain]\nfile = "{bare_models["plain"]}"\nchat_template = "ours.jinja"\n'
    )
    node = start_node(models={}, name="named")
    with MeshClient(node.address) as mesh:
        (info,) = mesh.models()
        assert info.chat_template == f"file {home / 'ours.jinja'}"
        done = mesh.complete("plain", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert done.tokens == 2
        with pytest.raises(InvalidRequest, match=r"rendered by ours\.jinja"):
            mesh.complete("plain", messages=[{"role": "user", "content": "boom"}], max_tokens=2)
    listed = json.loads(meshd("models", "--json", home=home).stdout)
    assert listed[0]["chat_template"] == f"file {home / 'ours.jinja'}"


def _readme_snippet() -> str:
    """The README's OpenAI example, as a person copies it."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (snippet,) = [b for b in blocks if "from openai import OpenAI" in b]
    return snippet


def test_the_readme_s_openai_snippet_chats_with_the_demo_model(
    start_node: Callable[..., NodeThread], tmp_path: Path
) -> None:
    from meshd.demo_model import DEMO_MODEL_NAME, demo_model_path

    snippet = _readme_snippet()
    assert "http://127.0.0.1:7071/v1" in snippet and f'model="{DEMO_MODEL_NAME}"' in snippet
    node = start_node(models={DEMO_MODEL_NAME: demo_model_path(tmp_path / "demo")}, context=1024)
    assert node.node is not None and node.node.http is not None
    code = snippet.replace("http://127.0.0.1:7071", node.node.http.url)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "ChatCompletion(" in run.stdout and "role='assistant'" in run.stdout, run.stdout
    assert "finish_reason=" in run.stdout
