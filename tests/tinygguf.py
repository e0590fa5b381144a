"""Write a tiny llama-architecture GGUF with random weights that real llama.cpp runs.

A small SentencePiece vocabulary with byte fallback (so any text tokenizes), a chat template,
and the end-of-sequence row of the output matrix set to zero so that greedy and top-k
sampling never end early: tests get exactly the tokens they ask for.

`quant="Q8_0"` or `"Q4_0"` stores the layer matrices quantized by `gguf.quants`, so the tests
run llama.cpp's quantized CPU kernels (the ones a real model uses), not only F32 ones.
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType, quants

FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "Q8_0": LlamaFileType.MOSTLY_Q8_0,
              "Q4_0": LlamaFileType.MOSTLY_Q4_0}  # fmt: skip

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "capital",
    "France",
    "Paris",
    "once",
    "upon",
    "time",
    "hello",
    "world",
    "model",
    "mesh",
    "warm",
]


def _vocab(extra: list[str]) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁", *(string.ascii_letters + string.digits + string.punctuation)]
    pieces += ["▁" + w for w in WORDS] + extra
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * (len(pieces) - len(extra))
    # An extra <|…|> token is a control token, as a chat format's turn markers are.
    special = [t.startswith("<|") and t.endswith("|>") for t in extra]
    types += [gguf.TokenType.CONTROL if s else gguf.TokenType.NORMAL for s in special]
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: Path,
    *,
    embedding: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    context_length: int = 4096,
    seed: int = 0,
    quant: str = "F32",
    tokenizer: str = "llama",
    chat_template: str = CHAT_TEMPLATE,
    quantized_norms: bool = False,
    extra_tokens: list[str] | None = None,
) -> Path:
    """Write the model to path and return it.

    quantized_norms stores the norm weights as Q8_0: a well-formed file that passes every
    check, yet ggml's CPU backend aborts the process on the first token it evaluates
    ("binary_op: unsupported types"). Tests use it as the model file that kills llama.cpp.
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(extra_tokens or [])
    vocab, ff, head_dim = len(tokens), embedding * 2, embedding // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("meshd-tiny-test")
    writer.add_context_length(context_length)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(FILE_TYPES[quant])
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    if chat_template:  # "": a file with no template, as many base models are
        writer.add_chat_template(chat_template)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def matrix(name: str, data: np.ndarray) -> None:
        """A layer matrix, quantized when the model is."""
        if quant == "F32":
            writer.add_tensor(name, data)
            return
        qtype = GGMLQuantizationType[quant]
        writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    output = weights(vocab, embedding, scale=1.0)
    # <unk>, <s>, </s> and the byte tokens never win: generation runs to max_tokens and
    # produces readable pieces (byte fallback still serves the prompt side).
    output[: 3 + 256] = 0.0
    # Nor do extra control tokens (a chat format's turn markers), which llama.cpp may take
    # for the end of generation.
    output[np.array(types) == int(gguf.TokenType.CONTROL)] = 0.0
    writer.add_tensor("token_embd.weight", weights(vocab, embedding, scale=1.0))

    def norm(name: str) -> None:
        ones = np.ones(embedding, dtype=np.float32)
        if quantized_norms:
            q8 = GGMLQuantizationType.Q8_0
            writer.add_tensor(name, quants.quantize(ones.reshape(1, -1), q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, ones)

    norm("output_norm.weight")
    writer.add_tensor("output.weight", output)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", weights(embedding, embedding))
        matrix(f"blk.{i}.attn_k.weight", weights(kv_heads * head_dim, embedding))
        matrix(f"blk.{i}.attn_v.weight", weights(kv_heads * head_dim, embedding))
        matrix(f"blk.{i}.attn_output.weight", weights(embedding, embedding))
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", weights(ff, embedding))
        matrix(f"blk.{i}.ffn_up.weight", weights(ff, embedding))
        matrix(f"blk.{i}.ffn_down.weight", weights(embedding, ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
