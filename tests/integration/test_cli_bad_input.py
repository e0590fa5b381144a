"""Every command with bad arguments, as a careless hand types them: one line, a non-zero exit,
never a traceback, and nothing done before the input was checked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import meshd

from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring

LONG = "x" * 300


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, Path]]:
    """A founder's home with its daemon running, and the odd places a hand may point at."""
    root = tmp_path_factory.mktemp("careless")
    home = root / "home"
    Keyring(home).init_mesh("friends")
    broken = root / "broken"
    broken.mkdir()
    (broken / "meshd.toml").write_text("listen = [\n")
    a_file = root / "a-file"
    a_file.write_text("not a home\n")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    damaged = root / "damaged"
    (damaged / "store").mkdir(parents=True)
    (damaged / "store" / "manifest.json").write_text('{"models": {"x": 5}}')
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false"}
    with DaemonProcess(home, [f"tiny={tiny_model}"], env=env):
        yield {
            "home": home,
            "broken": broken,
            "file": a_file,
            "fifo": fifo,
            "damaged": damaged,
            "empty": root / "nobody-home",
            "root": root,
        }


# (arguments, which home; None: the running daemon's)
CASES: list[tuple[tuple[str, ...], str]] = [
    (("generate", "tiny", "Hello", "--seed", "-1"), "home"),
    (("generate", "tiny", "Hello", "--max-tokens", "99999999999"), "home"),
    (("generate", "tiny", "Hello", "--max-tokens", "0"), "home"),
    (("generate", "tiny", "Hello", "--temperature", "nan"), "home"),
    (("generate", "", "Hello"), "home"),
    (("generate", LONG, "Hello"), "home"),
    (("generate", "no-such-model", "Hello"), "home"),
    (("warm", "tiny", "--lease", "inf"), "home"),
    (("warm", "tiny", "--lease", "99999d"), "home"),
    (("warm", LONG), "home"),
    (("warm", "tiny", "--replicas", "0"), "home"),
    (("warm", "tiny", "--replicas", "99"), "home"),
    (("warm", "tiny", "--prefix-file", "{root}/no-such-file"), "home"),
    (("warm", "tiny", "--prefix-file", "{fifo}"), "home"),
    (("warm", "tiny", "--prefix-file", "{file}", "--system-file", "{file}"), "home"),
    (("models", "--verify"), "damaged"),
    (("models",), "file"),
    (("health",), "broken"),
    (("status",), "broken"),
    (("status", "--addr", "garbage"), "home"),
    (("status", "--addr", "127.0.0.1:1"), "home"),
    (("health",), "empty"),
    (("pull", "http://[::1"), "home"),
    (("pull", "http://:80/model.gguf"), "home"),
    (("pull", "/nonexistent/model.gguf"), "home"),
    (("pull", "{root}"), "home"),
    (("pull", "{fifo}"), "home"),
    (("pull", "{file}", "--name", "../../x"), "home"),
    (("pull", "tiny", "--from", "garbage"), "home"),
    (("rm", "no-such-model"), "home"),
    (("rm", "../x"), "home"),
    (("init", "--name", ""), "empty"),
    (("init", "--name", "a" * 65), "empty"),
    (("init", "--name", "again"), "home"),
    (("invite", "--ttl", "999999999d"), "home"),
    (("invite", "--ttl", "0"), "home"),
    (("invite", "--address", "a b"), "home"),
    (("invite", "--client", "--name", ""), "home"),
    (("invite",), "empty"),
    (("join", "garbage"), "empty"),
    (("join", "MESHD-AAAA"), "empty"),
    (("revoke", LONG), "home"),
    (("revoke", "x"), "empty"),
    (("serve", "--log-level", "garbage"), "empty"),
    (("serve", "--listen", "garbage"), "empty"),
    (("serve", "--model", "nonsense"), "empty"),
    (("serve", "--threads", "-2"), "empty"),
    (("serve",), "broken"),
    (("serve",), "home"),  # a second daemon on the same home
    (("doctor",), "file"),
    (("demo", "--max-tokens", "-1"), "empty"),
    (("pause", "--for", "soon"), "empty"),
    (("pause", "--for", "0"), "empty"),
    (("ca", "restore", "/nonexistent/ca.backup", "--passphrase-file", "{file}"), "home"),
    (("ca", "restore", "{file}", "--passphrase-file", "{file}"), "home"),
    (("ca", "backup", "--out", "{file}", "--passphrase-file", "{file}"), "home"),
    (("logs", "-n", "-1"), "home"),
    (("logs",), "empty"),
    (("open", "--print"), "empty"),
    (("service", "install", "--at-boot"), "file"),
    (("invite", "--api-key"), "home"),
]


@pytest.mark.parametrize(("args", "where"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_and_a_failure(
    places: dict[str, Path], args: tuple[str, ...], where: str
) -> None:
    args = tuple(a.format(**places) for a in args)
    out = meshd(*args, home=places[where])
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    message = out.stderr.strip()
    assert message and (message.startswith("error:") or "Error" in message), message
    assert LONG not in message, "input is quoted short"


def test_a_refused_ttl_opens_no_invite(places: dict[str, Path]) -> None:
    out = meshd("invite", "--ttl", "999999999d", home=places["home"])
    assert out.returncode == 1
    log = (places["home"] / "daemon.log").read_text()
    assert "join listener open" not in log


def test_a_refused_init_leaves_nothing_behind(places: dict[str, Path]) -> None:
    home = places["root"] / "never-made"
    assert meshd("init", "--name", "", home=home).returncode == 1
    assert not home.exists()
