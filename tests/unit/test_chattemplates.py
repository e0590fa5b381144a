"""Which chat template a model gets, and what meshd.toml may name."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from meshd.chattemplates import (
    BUILT_IN,
    MARKERS,
    MAX_TEMPLATE_BYTES,
    OWN,
    ChatTemplate,
    choose_template,
    parse_chat_template,
)
from meshd.config import load_settings
from meshd.errors import ConfigError


def test_the_file_s_own_template_wins_over_a_built_in_one() -> None:
    assert choose_template(None, True, "gemma3", {"<start_of_turn>"}) is OWN


def test_a_configured_template_wins_over_everything() -> None:
    mine = ChatTemplate("file /t.jinja", "{{ messages }}")
    assert choose_template(mine, True, "gemma3", {"<start_of_turn>"}) is mine


@pytest.mark.parametrize(
    ("architecture", "markers", "chosen"),
    [
        ("gemma3", {"<start_of_turn>"}, "gemma"),
        ("gemma", {"<start_of_turn>"}, "gemma"),
        ("qwen2", {"<|im_start|>"}, "chatml"),
        ("llama", {"<|start_header_id|>"}, "llama3"),
        ("llama", {"<|im_start|>"}, "chatml"),  # SmolLM: llama weights, ChatML turns
        ("phi3", {"<|assistant|>"}, "phi3"),
        ("qwen2", {"<|im_start|>", "<|start_header_id|>"}, "chatml"),  # its family first
        ("mystery", {"<|start_header_id|>"}, "llama3"),  # a family it knows by its tokens
    ],
)
def test_a_file_without_a_template_gets_its_family_s(
    architecture: str, markers: set[str], chosen: str
) -> None:
    got = choose_template(None, False, architecture, markers)
    assert got == ChatTemplate(f"{chosen} (built in)", BUILT_IN[chosen])


def test_no_template_where_the_vocabulary_lacks_the_turn_tokens() -> None:
    """A Gemma file whose vocabulary has no <start_of_turn> would read the markers as text."""
    assert choose_template(None, False, "gemma3", set()) is None
    assert choose_template(None, False, "llama", {"<s>", "</s>"}) is None


def _render(name: str, messages: list[dict[str, str]], generation: bool = True) -> str:
    env = ImmutableSandboxedEnvironment()
    template = env.from_string(BUILT_IN[name])
    return template.render(
        messages=messages, bos_token="<bos>", eos_token="<eos>", add_generation_prompt=generation
    )


def test_the_built_in_templates_render_their_family_s_turns() -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert _render("gemma", chat) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert _render("chatml", chat[1:2]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _render("llama3", chat[:2]) == (
        "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert _render("phi3", chat[1:2]) == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    for name in BUILT_IN:
        assert MARKERS[name] in _render(name, chat), name


def test_a_system_prefix_renders_as_the_start_of_every_later_chat() -> None:
    """Prefix warming renders the system message followed by a marker turn and keeps what comes
    before the marker: that must be where every chat with the same system message starts."""
    system = {"role": "system", "content": "You are the help desk."}
    for name in BUILT_IN:
        marked = _render(name, [system, {"role": "user", "content": "\ue000"}], False)
        prefix = marked.partition("\ue000")[0]
        later = _render(name, [system, {"role": "user", "content": "Where is my order?"}])
        assert later.startswith(prefix) and len(prefix) > len("<bos>"), name


def test_meshd_toml_names_a_built_in_template_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (tmp_path / "meshd.toml").write_text(
        '[models.a]\nfile = "a.gguf"\nchat_template = "gemma"\n'
        '[models.b]\nfile = "b.gguf"\nchat_template = "t.jinja"\n'
        '[models]\nc = "c.gguf"\n'
    )
    models = {m.name: m for m in load_settings(tmp_path, environ={}).models}
    assert models["a"].chat_template == ChatTemplate("gemma (built in)", BUILT_IN["gemma"])
    assert models["a"].path == tmp_path / "a.gguf"
    b = models["b"].chat_template
    assert b is not None and b.source == f"file {tmp_path / 't.jinja'}" and "m.content" in b.text
    assert models["c"].chat_template is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('file = "a.gguf"\nchat_template = "vicuna"', "must be one of gemma, chatml"),
        ('file = "a.gguf"\nchat_template = 3', "chat_template must be a string"),
        ('chat_template = "gemma"', "needs file ="),
        ('file = "a.gguf"\ntemplate = "gemma"', "unknown key 'template'"),
        ('file = "a.gguf"\nchat_template = "big.jinja"', "is over 65,536 bytes"),
        ('file = "a.gguf"\nchat_template = "latin1.jinja"', "is not UTF-8"),
        ('file = "a.gguf"\nchat_template = "empty.jinja"', "is empty"),
    ],
)
def test_a_bad_chat_template_is_one_clear_line(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "big.jinja").write_bytes(b"x" * (MAX_TEMPLATE_BYTES + 1))
    (tmp_path / "latin1.jinja").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.jinja").write_text("  \n")
    (tmp_path / "meshd.toml").write_text(f"[models.a]\n{entry}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(tmp_path, environ={})
    assert "\n" not in str(caught.value)


def test_a_template_file_is_read_from_the_home(tmp_path: Path) -> None:
    (tmp_path / "x.jinja").write_text("{{ messages[0].content }}")
    assert parse_chat_template("x.jinja", tmp_path).text == "{{ messages[0].content }}"
    with pytest.raises(ConfigError):
        parse_chat_template("x.jinja", tmp_path / "elsewhere")
