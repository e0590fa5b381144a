"""Generate through a real daemon and real llama.cpp: streaming, sampling, stops, chat, async."""

from __future__ import annotations

from collections.abc import Callable

from meshd.client import AsyncMeshClient, MeshClient
from meshd.types import ChatMessage, FinishReason

PROMPT = "The capital of France is"


def test_generate_streams_chunks_until_max_tokens(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        # Enough tokens to outlast the relay: chunks that pile up are merged, not lost.
        chunks = list(mesh.generate("tiny", PROMPT, max_tokens=400, temperature=0))
    assert len(chunks) > 1, "a completion must arrive in several chunks"
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.tokens == 400
    assert last.prompt_tokens > 1
    assert all(c.served_by == node.node.peer_id for c in chunks)
    counts = [c.tokens for c in chunks]
    assert counts == sorted(counts), "token counts only grow"
    assert "".join(c.text for c in chunks).strip()


def test_greedy_and_seeded_sampling_repeat(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        greedy = [mesh.complete("tiny", PROMPT, max_tokens=16, temperature=0).text for _ in "ab"]
        seeded = [mesh.complete("tiny", PROMPT, max_tokens=16, seed=42).text for _ in "ab"]
        other = {mesh.complete("tiny", PROMPT, max_tokens=16, seed=s).text for s in range(6)}
    assert greedy[0] == greedy[1]
    assert seeded[0] == seeded[1]
    assert len(other) > 1, "different seeds should give different samples"


def test_stop_sequence_cuts_the_text(start_node: Callable) -> None:
    node = start_node()
    with MeshClient(node.address) as mesh:
        full = mesh.complete("tiny", PROMPT, max_tokens=40, temperature=0).text
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        cut = mesh.complete("tiny", PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert stop and stop in full
    assert cut.finish_reason is FinishReason.STOP
    assert cut.text == full[: full.index(stop)]


def test_chat_uses_the_models_template(start_node: Callable) -> None:
    node = start_node()
    messages = [ChatMessage("system", "Be brief."), {"role": "user", "content": "Hello"}]
    with MeshClient(node.address) as mesh:
        chat = mesh.complete("tiny", messages=messages, max_tokens=8, temperature=0)
        plain = mesh.complete("tiny", "Hello", max_tokens=8, temperature=0)
    assert chat.tokens == 8
    # The template wraps the turns in role markers: far more prompt tokens than the bare text.
    assert chat.prompt_tokens > plain.prompt_tokens + 10


async def test_async_client_streams_the_same_text(start_node: Callable) -> None:
    node = start_node()
    async with AsyncMeshClient(node.address) as mesh:
        chunks = [c async for c in mesh.generate("tiny", PROMPT, max_tokens=12, temperature=0)]
        warm = await mesh.warm("tiny")
        models = await mesh.models()
        assert await mesh.health()
    with MeshClient(node.address) as sync_mesh:
        expected = sync_mesh.complete("tiny", PROMPT, max_tokens=12, temperature=0).text
    assert "".join(c.text for c in chunks) == expected
    assert warm.state == "warm"
    assert [m.name for m in models] == ["tiny"]


def test_two_daemons_in_one_process_are_independent(start_node: Callable, tiny_model) -> None:
    first = start_node(models={"a": tiny_model})
    second = start_node(models={"b": tiny_model})
    assert first.node.peer_id != second.node.peer_id
    with MeshClient(first.address) as one, MeshClient(second.address) as two:
        assert [m.name for m in one.models()] == ["a"]
        assert [m.name for m in two.models()] == ["b"]
        assert two.complete("b", PROMPT, max_tokens=4).tokens == 4
