"""`meshd pull`, `meshd rm` and `meshd models --verify` as a person runs them, faults included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_store_consistent, digest_of, meshd
from httpserver import FileServer
from hypothesis import HealthCheck, given, settings, strategies as st

from meshd.store import ModelStore


def test_pull_rm_and_verify(tmp_path: Path, tiny_model: Path) -> None:
    out = meshd("pull", str(tiny_model), "--name", "t", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["model"]["digest"] == digest_of(tiny_model.read_bytes())
    assert record["already_present"] is False
    again = meshd("pull", str(tiny_model), "--name", "t2", home=tmp_path)
    assert "already in the store" in again.stdout
    verified = meshd("models", "--verify", "--addr", "127.0.0.1:9", home=tmp_path)
    assert "verified 2 stored model(s)" in verified.stderr
    assert meshd("rm", "t", home=tmp_path).returncode == 0
    gone = meshd("rm", "t", home=tmp_path)
    assert gone.returncode == 1 and "no model named 't'" in gone.stderr


def test_verify_names_a_tampered_file_and_exits_1(tmp_path: Path, tiny_model: Path) -> None:
    meshd("pull", str(tiny_model), "--name", "t", home=tmp_path)
    store = ModelStore(tmp_path)
    blob = store.blob_path(store.get("t").digest)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0x10
    blob.write_bytes(bytes(data))
    out = meshd("models", "--verify", home=tmp_path)
    assert out.returncode == 1
    assert "t: the stored file was changed after import" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/file.gguf"], "no such file"),
        (["x", "--from", "127.0.0.1:9"], "cannot reach meshd at 127.0.0.1:9"),
        (["x", "--from", "127.0.0.1:9", "--name", "../../etc/x"], "bad model name"),
        (["hf://justone"], "hf:// takes org/repo"),
        (["http://127.0.0.1:9/x.gguf"], "http://127.0.0.1:9/x.gguf"),
        (["/etc/hostname", "--sha256", "sha256:XYZ"], "not a digest"),
    ],
)
def test_bad_pulls_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = meshd("pull", *args, home=tmp_path)
    assert out.returncode == 1
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "store" / "blobs").exists()


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kill_after=st.floats(min_value=0.05, max_value=1.5))
def test_sigkill_at_any_point_then_pull_again(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, kill_after: float
) -> None:
    home = tmp_path_factory.mktemp("home")
    server = FileServer(tiny_model.read_bytes())
    server.behaviour.piece_delay_s = 0.02
    try:
        env = {**os.environ, "MESHD_HOME": str(home)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshd.cli", "pull", server.url, "--name", "m"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        store = ModelStore(home)
        assert_store_consistent(store)  # whatever has a final name is whole and verified
        server.behaviour.piece_delay_s = 0.0
        out = meshd("pull", server.url, "--name", "m", "--json", home=home)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["digest"] == digest_of(server.content)
    assert_store_consistent(store)


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_mid_download_is_clear_and_leaves_no_final_file(
    small_disk: Path, tiny_model: Path
) -> None:
    server = FileServer(tiny_model.read_bytes())
    server.behaviour.no_length = True  # the size is unknown, so the space check cannot help
    try:
        out = meshd("pull", server.url, "--name", "m", home=small_disk)
    finally:
        server.close()
    assert out.returncode == 1
    assert "disk full" in out.stderr or "not enough disk space" in out.stderr, out.stderr
    store = ModelStore(small_disk)
    assert store.models() == []
    assert_store_consistent(store)


def test_a_name_pulled_again_leaves_no_orphan_and_gc_removes_old_ones(
    tmp_path: Path, tiny_model: Path
) -> None:
    from tinygguf import write_tiny_gguf

    home = tmp_path / "home"
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=7)
    assert meshd("pull", str(tiny_model), "--name", "m", home=home).returncode == 0
    first = ModelStore(home).get("m")
    assert meshd("pull", str(other), "--name", "m", home=home).returncode == 0
    store = ModelStore(home)
    assert store.get("m").digest != first.digest
    assert not store.blob_path(first.digest).exists(), "the file no name points to is gone"
    assert store.orphans() == []
    # An orphan left by a crash (or an older meshd): listed by --verify, removed by gc.
    stray = store.blobs / ("sha256-" + "0" * 64)
    stray.write_bytes(b"x" * 1000)
    verified = meshd("models", "--verify", home=home)
    assert "meshd gc" in verified.stderr and str(stray) in verified.stderr  # then: no daemon
    collected = meshd("gc", "--json", home=home)
    assert collected.returncode == 0
    assert json.loads(collected.stdout) == [{"path": str(stray), "bytes": 1000}]
    assert not stray.exists() and store.get("m").digest != first.digest
    assert "0 file(s) removed" in meshd("gc", home=home).stdout
    assert_store_consistent(store)
