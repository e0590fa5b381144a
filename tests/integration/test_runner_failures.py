"""A runner that dies or hangs fails only its own streams: real runner processes, real signals.

Each daemon here serves two models, each in its own runner: "victim" is killed, stopped or fed
a bad file or template; "other" must keep streaming, and the daemon must keep answering.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import eventually
from tinygguf import write_tiny_gguf

from meshd.client import MeshClient
from meshd.errors import (
    DeadlineExceeded,
    InvalidRequest,
    MeshdError,
    ModelUnavailable,
    RunnerFailed,
)
from meshd.types import Chunk, ModelInfo, ModelState

FATAL = [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT]
# 10^10 iterations inside the sandbox's range limit: a template that never finishes.
LOOPING_TEMPLATE = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
)


def info(mesh: MeshClient, name: str) -> ModelInfo:
    return {m.name: m for m in mesh.models()}[name]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def deliver(pid: int, sig: signal.Signals) -> None:
    """Send a fatal signal to a stopped runner and let it run into it."""
    os.kill(pid, sig)
    with contextlib.suppress(ProcessLookupError):  # SIGKILL needs no waking
        os.kill(pid, signal.SIGCONT)


def assert_daemon_unharmed(mesh: MeshClient) -> None:
    # A daemon whose loop the failure blocked would not answer at all: the deadline catches it.
    assert mesh.health(timeout=30)
    assert mesh.complete("other", "Hello", max_tokens=5, temperature=0).tokens == 5


@pytest.fixture
def two_models(start_node: Callable, tiny_model: Path) -> Callable[..., tuple]:
    def start(**flags: object) -> tuple:
        node = start_node(models={"victim": tiny_model, "other": tiny_model}, **flags)
        mesh = MeshClient(node.address)
        mesh.warm("victim", wait=True)
        mesh.warm("other", wait=True)
        return node, mesh

    return start


@pytest.mark.parametrize("sig", FATAL, ids=lambda s: s.name)
def test_a_runner_killed_mid_stream_fails_only_its_stream(two_models, sig) -> None:
    _, mesh = two_models(context=4096)
    with mesh:
        pid = info(mesh, "victim").runner_pid
        assert pid and pid != os.getpid()
        stream = mesh.generate("victim", "Once", max_tokens=4000, temperature=0)
        first = next(stream)
        os.kill(pid, signal.SIGSTOP)
        deliver(pid, sig)
        with pytest.raises(RunnerFailed) as failure:
            for _ in stream:
                pass
        message = str(failure.value)
        assert f"runner killed by {sig.name}" in message
        assert "is partial" in message and first.tokens >= 1
        assert_daemon_unharmed(mesh)
        victim = info(mesh, "victim")
        assert victim.state is ModelState.FAILED
        assert f"runner killed by {sig.name}" in victim.error
        assert gone(pid)
        again = mesh.complete("victim", "Once", max_tokens=4, temperature=0)
        assert again.tokens == 4, "the next request starts a new runner"
        assert info(mesh, "victim").restarts == 1
        assert info(mesh, "victim").runner_pid not in (0, pid)


@pytest.mark.parametrize("sig", FATAL, ids=lambda s: s.name)
def test_a_runner_killed_before_the_first_token(two_models, sig) -> None:
    node, mesh = two_models()
    with mesh:
        pid = info(mesh, "victim").runner_pid
        os.kill(pid, signal.SIGSTOP)
        outcome: list[object] = []

        def ask() -> None:
            try:
                with MeshClient(node.address) as client:
                    outcome.append(client.complete("victim", "Hi", max_tokens=3))
            except MeshdError as exc:
                outcome.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        eventually(lambda: node.engine.hosts["victim"].active == 1)  # it reached the runner
        deliver(pid, sig)
        asker.join(30)
        error = outcome[0]
        assert isinstance(error, RunnerFailed), error
        assert f"runner killed by {sig.name}" in str(error)
        assert "partial" not in str(error), "no text went out"
        assert_daemon_unharmed(mesh)


def test_a_runner_that_stops_producing_tokens_is_killed(two_models) -> None:
    node, mesh = two_models(context=4096, runner_stall_timeout="1s")
    with mesh:
        pid = info(mesh, "victim").runner_pid
        stream = mesh.generate("victim", "Once", max_tokens=4000, temperature=0)
        next(stream)
        os.kill(pid, signal.SIGSTOP)
        # While the runner is frozen, the other model still answers.
        with MeshClient(node.address) as other:
            assert other.complete("other", "Hello", max_tokens=5).tokens == 5
        with pytest.raises(RunnerFailed, match="sent nothing for 1 s while serving"):
            for _ in stream:
                pass
        assert gone(pid), "the hung runner was killed"
        assert "killed" in info(mesh, "victim").error
        assert_daemon_unharmed(mesh)


def test_a_chat_template_that_loops_is_stopped(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    looping = write_tiny_gguf(tmp_path / "loop.gguf", chat_template=LOOPING_TEMPLATE)
    node = start_node(models={"victim": looping, "other": tiny_model}, runner_stall_timeout="1s")
    with MeshClient(node.address) as mesh:
        with pytest.raises(RunnerFailed, match="sent nothing for 1 s"):
            mesh.complete("victim", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert_daemon_unharmed(mesh)
        # The same model still serves plain prompts: only the template was at fault.
        assert mesh.complete("victim", "Hi", max_tokens=3).tokens == 3


def test_a_chat_template_that_loops_is_stopped_by_its_deadline_and_the_runner_lives(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    """The template's own deadline stops it: the request gets a clear answer, the slot is
    free again, and the runner (and what it has loaded) lives on."""
    looping = write_tiny_gguf(tmp_path / "loop.gguf", chat_template=LOOPING_TEMPLATE)
    node = start_node(models={"victim": looping}, slots=1)
    with MeshClient(node.address) as mesh:
        mesh.warm("victim", wait=True)
        pid = info(mesh, "victim").runner_pid
        with pytest.raises(InvalidRequest, match="chat template ran past"):
            mesh.complete("victim", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert info(mesh, "victim").runner_pid == pid and info(mesh, "victim").restarts == 0
        # A caller's own deadline frees the slot sooner: the render sees the cancellation.
        with pytest.raises(DeadlineExceeded):
            mesh.complete(
                "victim", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, timeout=0.5
            )
        assert mesh.complete("victim", "Hi", max_tokens=3).tokens == 3  # the one slot is free
        assert info(mesh, "victim").runner_pid == pid


def test_a_runner_past_its_memory_limit_is_killed_with_the_reason(start_node: Callable) -> None:
    node = start_node(runner_memory_limit="16MiB")  # less than Python and llama.cpp take
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny")  # the watchdog finds it over the limit within a second of its start
        reason = "over its memory limit of 16 MiB (runner_memory_limit)"
        eventually(lambda: reason in info(mesh, "tiny").error, timeout=30)
        assert info(mesh, "tiny").state == "failed" and info(mesh, "tiny").runner_pid == 0
        assert mesh.health()


def _load_failures_until_given_up(mesh: MeshClient, name: str) -> str:
    """Ask for the model until the daemon stops trying it; returns the last refusal."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            mesh.complete(name, "Hi", max_tokens=2)
        except ModelUnavailable as exc:
            if "3 times in a row" in str(exc):
                return str(exc)
        time.sleep(0.2)
    pytest.fail("the model was never given up on")


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_a_model_file_that_aborts_llama_cpp(
    start_node: Callable, tiny_model: Path, tmp_path: Path, pinned: bool
) -> None:
    bad = write_tiny_gguf(tmp_path / "bad.gguf", quantized_norms=True)
    node = start_node(
        models={"victim": bad, "other": tiny_model}, pins=["victim"] if pinned else []
    )  # the daemon starts even when a pinned model cannot load
    with MeshClient(node.address) as mesh:
        refusal = _load_failures_until_given_up(mesh, "victim")
        assert "runner killed by SIGABRT (aborted)" in refusal
        assert "unsupported types" in refusal, "llama.cpp's own words say why"
        victim = info(mesh, "victim")
        assert victim.state is ModelState.FAILED and victim.runner_pid == 0
        assert_daemon_unharmed(mesh)
        tries = info(mesh, "victim").restarts
        with pytest.raises(ModelUnavailable, match="until its file changes"):
            mesh.complete("victim", "Hi", max_tokens=2)
        assert info(mesh, "victim").restarts == tries, "a given-up model starts no runner"
        # `meshd warm` asks again on purpose: one more try (a pinned model gets its three again).
        with pytest.raises(ModelUnavailable, match="SIGABRT"):
            mesh.warm("victim", wait=True)
        restarts = info(mesh, "victim").restarts
        assert restarts == tries + 1 or (pinned and restarts > tries + 1)


def test_a_failed_model_is_tried_again_after_its_file_changes(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    path = write_tiny_gguf(tmp_path / "model.gguf", quantized_norms=True)
    node = start_node(models={"victim": path, "other": tiny_model})
    with MeshClient(node.address) as mesh:
        _load_failures_until_given_up(mesh, "victim")
        write_tiny_gguf(tmp_path / "fixed.gguf").replace(path)  # the owner fixed the file
        assert mesh.complete("victim", "Hi", max_tokens=3).tokens == 3
        assert info(mesh, "victim").state is ModelState.WARM


def test_the_mesh_retries_elsewhere_when_a_runner_dies_before_the_first_token(
    start_node: Callable, tiny_model: Path
) -> None:
    fast = {"heartbeat_interval": "0.2s", "dead_after": "1s"}
    a = start_node(models={"m": tiny_model}, **fast)
    b = start_node(models={"m": tiny_model}, peers=[a.address], **fast)
    with MeshClient(a.address) as mesh:
        eventually(lambda: len(mesh.mesh_status().peers) == 2)
        eventually(lambda: all(p.alive for p in mesh.mesh_status().peers))
        mesh.warm("m", wait=True)
        pid = info(mesh, "m").runner_pid
        os.kill(pid, signal.SIGSTOP)
        chunks: list[Chunk] = []

        def ask() -> None:
            with MeshClient(a.address) as client:
                chunks.extend(client.generate("m", "Hi", max_tokens=4))

        asker = threading.Thread(target=ask)
        asker.start()
        eventually(lambda: a.engine.hosts["m"].active == 1)
        deliver(pid, signal.SIGKILL)
        asker.join(30)
        assert chunks, "the request was answered"
        assert {c.served_by for c in chunks} == {b.node.peer_id}
        assert chunks[-1].tokens == 4


def test_a_briefly_missing_file_is_tried_again_and_the_mesh_still_knows_the_model(
    start_node: Callable, tiny_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(tiny_model.read_bytes())
    fast = {"heartbeat_interval": "0.2s", "dead_after": "1s"}
    a = start_node(models={}, **fast)
    b = start_node(models={"m": path}, peers=[a.address], **fast)
    with MeshClient(a.address) as mesh, MeshClient(b.address) as on_b:
        aside = path.rename(tmp_path / "aside.gguf")  # an unmounted disk, a sync in progress
        with pytest.raises(ModelUnavailable, match="cannot read"):
            on_b.warm("m", wait=True)
        assert info(on_b, "m").state is ModelState.FAILED

        def a_sees_m_on_b() -> bool:
            peers = [p for p in mesh.mesh_status().peers if p.info.peer_id == b.node.peer_id]
            return any(p.alive and "m" in {x.name for x in p.info.models} for p in peers)

        eventually(a_sees_m_on_b)  # a failed model that will be tried again stays listed
        aside.rename(path)
        answer = mesh.complete("m", "Hi", max_tokens=3)
        assert answer.tokens == 3 and answer.served_by == b.node.peer_id
