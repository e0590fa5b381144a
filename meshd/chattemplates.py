"""Chat templates for models whose GGUF has none: the built-in ones by name, a Jinja file named
in meshd.toml, and which one a model gets. Pure: the runner renders them (sandboxed Jinja)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshd.errors import ConfigError
from meshd.fsutil import read_small_file

MAX_TEMPLATE_BYTES = 64 * 1024  # a chat template file; real ones are a few KiB

# The formats of the model families meshd knows, in the Hugging Face Jinja dialect the runner
# renders (meshd.runner.chatrender: messages, bos_token, eos_token, add_generation_prompt).
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif -%}"
)
PHI3 = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)
BUILT_IN = {"gemma": GEMMA, "chatml": CHATML, "llama3": LLAMA3, "phi3": PHI3}

# A vocabulary token that only its format uses: a template whose markers the model does not
# know as tokens would be read as plain text, so a built-in is chosen only where they are.
MARKERS = {
    "llama3": "<|start_header_id|>",
    "chatml": "<|im_start|>",
    "gemma": "<start_of_turn>",
    "phi3": "<|assistant|>",
}
BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "phi3": "phi3",
    "llama": "llama3",
}


@dataclass(frozen=True)
class ChatTemplate:
    """The template a model chats with: where it comes from, and its text ("" for the GGUF's
    own, which the runner reads from the file)."""

    source: str  # "gguf", "gemma (built in)" or "file /path/t.jinja"
    text: str = ""


OWN = ChatTemplate("gguf")


def parse_chat_template(value: str, base: Path | None) -> ChatTemplate:
    """What `chat_template = ...` names in meshd.toml: a built-in format, or a Jinja file
    (relative to the home); ConfigError otherwise."""
    value = value.strip()
    if value in BUILT_IN:
        return ChatTemplate(f"{value} (built in)", BUILT_IN[value])
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not value or not path.exists():
        names = ", ".join(BUILT_IN)
        raise ConfigError(f"chat_template must be one of {names} or a Jinja file, got {value!r}")
    data = read_small_file(path, MAX_TEMPLATE_BYTES, "chat template")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"chat template {path} is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(f"chat template {path} is empty")
    return ChatTemplate(f"file {path}", text)


def choose_template(
    configured: ChatTemplate | None,
    has_own: bool,
    architecture: str,
    markers: Iterable[str],
) -> ChatTemplate | None:
    """The template a model chats with: the one meshd.toml names, else the GGUF's own, else a
    built-in one whose turn markers the vocabulary holds (its architecture's first, then any),
    else none: the model takes prompts only."""
    if configured is not None:
        return configured
    if has_own:
        return OWN
    held = set(markers)
    family = BY_ARCHITECTURE.get(architecture)
    candidates = ([family] if family else []) + list(MARKERS)
    for name in candidates:
        if MARKERS[name] in held:
            return ChatTemplate(f"{name} (built in)", BUILT_IN[name])
    return None
