"""The `meshd` command as a person types it, against a real daemon process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import meshd

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
