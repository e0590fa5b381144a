"""Continuous batching on real llama.cpp: several requests in one context, one decode per step.

Each concurrent greedy stream gives exactly the tokens it gives alone; a cancelled one leaves
the others streaming; a long prompt is prefilled in chunks between the running streams' tokens;
a warmed prefix serves every concurrent request; a killed runner ends every stream typed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tinygguf import write_tiny_gguf

from meshd.client import MeshClient
from meshd.demo_model import demo_model_path
from meshd.errors import Cancelled, RunnerFailed

PROMPTS = [
    "The capital of France is",
    "Once upon a time there was",
    "A list of colours: red, green,",
    "The quick brown fox",
]


def _alone_then_together(mesh: MeshClient, model: str, max_tokens: int) -> tuple[list, list]:
    alone = [mesh.complete(model, p, max_tokens=max_tokens, temperature=0).text for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(
            pool.map(
                lambda p: mesh.complete(model, p, max_tokens=max_tokens, temperature=0).text,
                PROMPTS,
            )
        )
    return alone, together


@pytest.mark.parametrize("quant", ["F32", "Q8_0", "Q4_0"])
def test_concurrent_greedy_streams_give_what_they_give_alone(
    start_node: Callable, tmp_path: Path, quant: str
) -> None:
    path = write_tiny_gguf(tmp_path / f"tiny-{quant}.gguf", quant=quant)
    node = start_node(models={"m": path}, slots=4)
    with MeshClient(node.address) as mesh:
        alone, together = _alone_then_together(mesh, "m", 24)
    assert all(alone), alone
    assert together == alone


def test_the_demo_model_batches_without_mixing_streams(
    start_node: Callable, tmp_path: Path
) -> None:
    """The demo model (Q4_K_M) through the batch: four streams of one prompt give one answer,
    and a stream beside others starts as it does alone. (llama.cpp's repacked Q4_K kernels
    compute four rows at a time and one row another way, so later tokens of a greedy stream
    computed beside others may differ from the same stream alone, as in llama-server.)"""
    path = demo_model_path(tmp_path / "demo")
    node = start_node(models={"gemma": path}, slots=4, context=128, threads=2)
    prompt = PROMPTS[2]
    with MeshClient(node.address) as mesh:
        alone = mesh.complete("gemma", prompt, max_tokens=1, temperature=0).text
        with ThreadPoolExecutor(4) as pool:
            same = list(
                pool.map(
                    lambda p: mesh.complete("gemma", p, max_tokens=12, temperature=0).text,
                    [prompt] * 4,
                )
            )
            mixed = list(
                pool.map(
                    lambda p: mesh.complete("gemma", p, max_tokens=1, temperature=0).text,
                    PROMPTS,
                )
            )
    assert len(set(same)) == 1 and same[0].strip(), same
    assert same[0].startswith(alone)
    assert mixed[2] == alone


def test_cancelling_one_stream_leaves_the_others_streaming(start_node: Callable) -> None:
    node = start_node(slots=4)
    started = threading.Barrier(4)

    def stream(i: int) -> tuple[int, str]:
        with MeshClient(node.address) as mesh:
            chunks = mesh.generate("tiny", PROMPTS[i], max_tokens=120, temperature=0)
            got = 0
            for chunk in chunks:
                got += 1
                if got == 1:
                    started.wait(timeout=120)
                if i == 0 and got == 2:
                    chunks.close()  # leaving the loop cancels it on the peer
                    return got, "cancelled"
                if chunk.finish_reason is not None:
                    return chunk.tokens, chunk.finish_reason.value
        return got, "ended without a finish"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(stream, range(4)))
    assert results[0] == (2, "cancelled")
    for tokens, finish in results[1:]:
        assert finish in ("length", "eos"), results
        assert finish == "eos" or tokens == 120


def test_a_long_prompt_is_prefilled_between_the_streams_tokens(start_node: Callable) -> None:
    """Three streams run; a long prompt arrives. Its prefill takes many chunks of `batch`
    tokens, and each step also decodes every stream's next token: the streams keep producing
    while it prefills, instead of waiting for all of it."""
    node = start_node(slots=4, batch=32, context=2048)
    tokens = [0, 0, 0]  # each stream's tokens so far
    marks: dict[str, list[int]] = {}
    lock = threading.Lock()
    streaming = threading.Barrier(4)

    def stream(i: int) -> None:
        with MeshClient(node.address) as mesh:
            for chunk in mesh.generate("tiny", PROMPTS[i], max_tokens=1500, temperature=0):
                with lock:
                    first, tokens[i] = tokens[i] == 0, chunk.tokens
                if first:
                    streaming.wait(timeout=120)
                if chunk.finish_reason is not None or "answered" in marks:
                    return

    def long_prompt() -> None:
        streaming.wait(timeout=120)
        words = " ".join(["alpha beta gamma delta"] * 20)  # ~440 tokens: ~15 steps of 32
        with MeshClient(node.address) as mesh:
            with lock:
                marks["sent"] = list(tokens)
            for _chunk in mesh.generate("tiny", words, max_tokens=1, temperature=0):
                with lock:
                    marks["answered"] = list(tokens)
                return

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream, i) for i in range(3)] + [pool.submit(long_prompt)]
        for future in futures:
            future.result(timeout=300)
    during = [
        after - before for before, after in zip(marks["sent"], marks["answered"], strict=True)
    ]
    assert all(n >= 8 for n in during), f"streams stalled while the prompt prefilled: {during}"


def test_a_warmed_prefix_serves_every_concurrent_request(start_node: Callable) -> None:
    """The prefix is warmed into one sequence; the four requests that start with it run on
    four sequences at once, and each starts from those cells (shared, not computed again)."""
    system = "You are a terse assistant. " * 20
    questions = [f"{system}Question {i}: what is {i} plus {i}?" for i in range(4)]
    with MeshClient(start_node(slots=1, context=1024).address) as alone:
        expected = [alone.complete("tiny", q, max_tokens=12, temperature=0).text for q in questions]
    node = start_node(slots=4, context=1024)
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", prefix=system, wait=True)
        with ThreadPoolExecutor(4) as pool:
            together = list(
                pool.map(
                    lambda q: mesh.complete("tiny", q, max_tokens=12, temperature=0), questions
                )
            )
    assert [r.text for r in together] == expected
    cached = [r.cached_tokens for r in together]
    assert min(cached) > 40, cached


def test_a_runner_killed_mid_batch_ends_every_stream_typed(start_node: Callable) -> None:
    node = start_node(slots=4, context=4096)
    ready = threading.Barrier(4)

    def stream(i: int) -> str:
        try:
            with MeshClient(node.address) as mesh:
                for n, _chunk in enumerate(
                    mesh.generate("tiny", PROMPTS[i], max_tokens=4000, temperature=0)
                ):
                    if n == 0:
                        ready.wait(timeout=120)
        except RunnerFailed:
            return "RunnerFailed"
        except Cancelled:
            return "Cancelled"
        return "finished"

    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, i) for i in range(3)]
        ready.wait(timeout=120)
        with MeshClient(node.address) as mesh:
            (info,) = mesh.models()
        os.kill(info.runner_pid, signal.SIGKILL)
        outcomes = [s.result(timeout=120) for s in streams]
    assert outcomes == ["RunnerFailed"] * 3


def test_the_greedy_argmax_is_llama_cpps_greedy_sampler(tiny_model: Path) -> None:
    """At temperature 0 the runner reads the argmax from the logits itself; it picks what
    llama.cpp's own greedy sampler picks, step after step."""
    import llama_cpp

    from meshd.runner.context import LoadedModel
    from meshd.runner.sampling import Sampler
    from meshd.types import Sampling

    model = LoadedModel(
        tiny_model, context=128, sequences=1, threads=1, batch=64, use_mmap=True, gpu_layers=0
    )
    ours = Sampler(Sampling(temperature=0), llama_cpp.llama_vocab_n_tokens(model.vocab))
    theirs = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(theirs, llama_cpp.llama_sampler_init_greedy())
    tokens = model.tokenize(b"The capital of France is", True)
    picked = []
    for _ in range(16):
        array = (llama_cpp.llama_token * len(tokens))(*tokens)  # alive while it decodes
        batch = llama_cpp.llama_batch_get_one(array, len(tokens))
        assert llama_cpp.llama_decode(model.ctx, batch) == 0
        token = ours.sample(model.ctx, -1)
        assert token == llama_cpp.llama_sampler_sample(theirs, model.ctx, -1)
        picked.append(token)
        tokens = [token]
    llama_cpp.llama_sampler_free(theirs)
    model.close()
    assert len(set(picked)) > 1, "a model that says one token proves nothing"
