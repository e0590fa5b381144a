"""The `meshd` command as a person types it, against a real daemon process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import NodeThread
from helpers import eventually, meshd
from meshes import FAST

from meshd.process import DaemonProcess


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("cli-home")
    with DaemonProcess(home, [f"tiny={tiny_model}"]) as running:
        yield running


def test_generate_streams_text_and_reports_stats(daemon: DaemonProcess) -> None:
    out = meshd(
        "generate", "tiny", "The capital of France is", "-n", "16", "--seed", "1", home=daemon.home
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "16 tokens" in out.stderr and "served by peer-" in out.stderr


def test_generate_json_is_one_record(daemon: DaemonProcess) -> None:
    out = meshd("generate", "tiny", "Hi", "-n", "5", "--json", "--addr", daemon.address)
    record = json.loads(out.stdout)
    assert record["tokens"] == 5 and record["finish_reason"] == "length"
    assert record["ttft_ms"] > 0 and record["text"]


def test_chat_flag_uses_the_template(daemon: DaemonProcess) -> None:
    out = meshd("generate", "tiny", "Hello", "--chat", "-n", "4", "--json", home=daemon.home)
    assert json.loads(out.stdout)["prompt_tokens"] > 10


def test_warm_models_and_health(daemon: DaemonProcess) -> None:
    warm = meshd("warm", "tiny", "--lease", "10m", "--wait", "--json", home=daemon.home)
    assert json.loads(warm.stdout)["state"] == "warm"
    models = json.loads(meshd("models", "--json", home=daemon.home).stdout)
    assert models[0]["name"] == "tiny" and models[0]["state"] == "warm"
    assert models[0]["warm_until"] > 0 and models[0]["size_bytes"] > 0
    table = meshd("models", home=daemon.home)
    assert "tiny" in table.stdout and "warm" in table.stdout
    import llama_cpp  # what this machine's build can offload decides where the model runs

    offloads = bool(llama_cpp.llama_supports_gpu_offload())
    assert models[0]["gpu_layers"] == (-1 if offloads else 0)
    wide = meshd("models", "--wide", home=daemon.home).stdout
    assert ("all layers" if offloads else "cpu") in wide
    health = meshd("health", "--json", home=daemon.home)
    assert health.returncode == 0
    assert json.loads(health.stdout) == {
        "address": daemon.socket,  # the CLI reaches its own daemon over the Unix socket
        "serving": True,
        "warm": ["tiny"],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "nope", "hi"], "no model named 'nope'"),
        (["generate", "tiny", "hi", "-n", "0"], "max_tokens must be between 1 and 4096"),
        (["generate", "tiny", ""], "prompt is empty"),
        (["generate", "tiny", "hi", "--temperature", "nan"], "temperature"),
        (["warm", "tiny", "--lease", "soon"], "not a duration"),
        (["warm", "nope"], "no model named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    daemon: DaemonProcess, args: list[str], message: str
) -> None:
    out = meshd(*args, home=daemon.home)
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    for command in (["health"], ["models"], ["generate", "tiny", "hi"]):
        out = meshd(*command, "--addr", "127.0.0.1:9", home=tmp_path)
        assert out.returncode == 1
        assert "cannot reach meshd at 127.0.0.1:9" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_serve_refuses_bad_flags(tmp_path: Path) -> None:
    out = meshd("serve", "--model", "justaname", home=tmp_path)
    assert out.returncode == 1 and "NAME=PATH" in out.stderr
    out = meshd("serve", "--model", "x=/m.gguf", "--pin", "y", home=tmp_path)
    assert out.returncode == 1 and "pinned model(s) not configured: y" in out.stderr
    out = meshd("serve", "--model", "x=/m.gguf", "--keep-alive", "forever", home=tmp_path)
    assert out.returncode == 1 and "not a duration" in out.stderr


def test_help_and_version() -> None:
    out = meshd("--help")
    assert out.returncode == 0
    for command in ("serve", "generate", "warm", "models", "health", "demo"):
        assert command in out.stdout
    assert meshd("--version").stdout.startswith("meshd ")


def test_service_status_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    out = meshd("service", "status", "--json", home=tmp_path)
    assert out.returncode == 1
    record = json.loads(out.stdout)
    assert record["installed"] is False and record["path"].startswith(str(tmp_path / "cfg"))
    assert "meshd service install" in meshd("service", "status", home=tmp_path).stdout


def test_no_daemon_says_so_and_how_to_start_one(tmp_path: Path) -> None:
    for command in (["health"], ["status"], ["models"], ["warm", "tiny"]):
        out = meshd(*command, home=tmp_path)
        assert out.returncode == 1
        assert out.stderr.strip() == (
            f"error: no meshd daemon is running from {tmp_path}: start one with `meshd serve` "
            "(or `meshd service install`), or ask another with --addr HOST:PORT"
        )


def test_client_commands_read_the_same_config_and_fail_on_a_broken_one(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text("slots = [unclosed\n")
    out = meshd("status", home=tmp_path)
    assert out.returncode == 1 and "cannot read" in out.stderr and "meshd.toml" in out.stderr
    assert "Traceback" not in out.stderr


def _fits(text: str, width: int = 80) -> bool:
    return all(len(line.rstrip()) <= width for line in text.splitlines())


def test_tables_fit_an_80_column_terminal(
    start_node: Callable[..., NodeThread], tiny_model: Path, tmp_path: Path
) -> None:
    """One line a row at 80 columns, what does not fit on a line of its own, the rest with
    --wide; --json unchanged."""
    broken = tmp_path / "missing-model-file-with-a-long-name.gguf"
    a = start_node(models={"tiny": tiny_model, "broken-model": broken}, **FAST)
    b = start_node(models={"tiny": tiny_model}, peers=[a.address], name="friend", **FAST)
    assert a.node is not None and b.node is not None
    home = a.settings.home
    assert meshd("warm", "tiny", "--wait", home=home).returncode == 0
    eventually(lambda: b.node is not None and len(b.node.table.live(time.monotonic())) == 1)
    assert meshd("pause", "--for", "1h", home=b.settings.home).returncode == 0
    eventually(lambda: "paused" in meshd("status", home=home).stdout, timeout=30)

    models = meshd("models", home=home, columns=80)
    assert models.returncode == 0 and _fits(models.stdout), models.stdout
    rows = [line for line in models.stdout.splitlines() if line.startswith(("tiny", "broken"))]
    assert len(rows) == 3, models.stdout  # two rows, and the failure's own line
    assert rows[0].split()[:2] == ["tiny", "warm"] and rows[0].split()[-3:-1] == ["1", "(0"]
    assert "gguf" in rows[0], "the chat column says where its template comes from"
    assert rows[1].split()[:2] == ["broken-model", "failed"]
    assert rows[2].startswith("broken-model: cannot read")
    assert str(broken) in models.stdout.replace("\n", ""), "the whole reason, folded to fit"

    status = meshd("status", home=home, columns=80)
    assert status.returncode == 0 and _fits(status.stdout), status.stdout
    peers = [line for line in status.stdout.splitlines() if line.startswith("peer-")]
    assert len(peers) == 3, status.stdout  # two peers, and why one is paused
    assert "this peer" in peers[0] and "live paused" in peers[1]
    assert peers[2].startswith(f"{b.node.peer_id}: paused by its owner until")

    wide = meshd("models", "--wide", home=home, columns=80)
    assert "DIGEST" in wide.stdout and "QUANT" in wide.stdout and b.node.peer_id in wide.stdout
    assert "ADDRESS" in meshd("status", "-w", home=home, columns=80).stdout
    listed = json.loads(meshd("models", "--json", home=home, columns=80).stdout)
    assert {m["name"] for m in listed} == {"tiny", "broken-model"}


def test_help_fits_a_terminal_and_shows_defaults() -> None:
    """Defaults come from the settings, and no text in brackets is lost to markup."""
    serve = meshd("serve", "--help", columns=80).stdout
    assert _fits(serve)
    assert " ." not in serve, "a help text lost a bracketed default"
    assert "[default: (4)]" in serve and "[default: (0.0.0.0:7070)]" in serve
    assert "[default: (30m)]" in serve and "[default: (127.0.0.1:7071)]" in serve
    for command in (["pause"], ["invite"], ["service", "install"], ["ca", "restore"], ["status"]):
        text = meshd(*command, "--help", columns=80).stdout
        assert _fits(text) and " ." not in text and "[default: ()]" not in text, command
    assert "--wide" in meshd("models", "--help", columns=80).stdout
