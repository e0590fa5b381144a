"""The model store and pull from a file and from HTTP: verified, resumable, never partial."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_store_consistent, digest_of
from httpserver import FileServer, https_for_loopback
from hypothesis import HealthCheck, given, settings, strategies as st

from meshd import errors
from meshd.pull import HttpSource, LocalSource, Probe, PullResult, hf_url, pull
from meshd.store import ModelStore, parse_digest

FIXTURES_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def server(tiny_model: Path) -> Iterator[FileServer]:
    running = FileServer(tiny_model.read_bytes())
    yield running
    running.close()


def test_import_a_local_file(tmp_path: Path, tiny_model: Path) -> None:
    store = ModelStore(tmp_path)
    result = pull(store, LocalSource(tiny_model), name="tiny")
    model = result.model
    assert model.digest == digest_of(tiny_model.read_bytes())
    assert store.blob_path(model.digest).read_bytes() == tiny_model.read_bytes()
    assert (model.architecture, model.quantization) == ("llama", "F32")
    assert model.parameters > 100_000 and model.size == tiny_model.stat().st_size
    assert list(store.partial.glob("*.part")) == []
    assert_store_consistent(store)


def test_two_names_share_one_file_until_both_are_removed(tmp_path: Path, tiny_model: Path) -> None:
    store = ModelStore(tmp_path)
    pull(store, LocalSource(tiny_model), name="a")
    again = pull(store, LocalSource(tiny_model), name="b")
    assert again.already_present
    assert len(list(store.blobs.iterdir())) == 1
    store.remove("a")
    assert store.blob_path(again.model.digest).exists()
    store.remove("b")
    assert not store.blob_path(again.model.digest).exists()
    with pytest.raises(errors.ModelNotFound):
        store.remove("b")


@pytest.mark.parametrize(
    "bad",
    ["../../etc/x", "/etc/passwd", "a/b", "..", ".hidden", "x" * 65, "sp ace", ""],
)
def test_bad_names_are_refused_and_nothing_is_written(
    tmp_path: Path, tiny_model: Path, bad: str
) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(errors.InvalidRequest, match="bad model name"):
        pull(store, LocalSource(tiny_model), name=bad)
    assert (
        sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and ".lock" not in p.name) == []
    )


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:../x",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "md5:" + "a" * 64,
        "a" * 64,
        "sha256:" + "g" * 64,
    ],
)
def test_bad_digests_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="not a digest"):
        parse_digest(bad)
    with pytest.raises((errors.InvalidRequest, errors.ModelNotFound)):
        ModelStore(tmp_path).find(bad)  # as a digest it is malformed; as a name, unknown


def test_a_hostile_file_is_refused_before_it_gets_a_name(tmp_path: Path, tiny_model: Path) -> None:
    hostile = tmp_path / "evil.gguf"
    hostile.write_bytes(tiny_model.read_bytes()[:-4096])  # last tensor now ends past the file
    store = ModelStore(tmp_path / "home")
    with pytest.raises(errors.InvalidModelFile, match="past the end") as refused:
        pull(store, LocalSource(hostile), name="evil")
    assert str(refused.value).startswith(str(hostile)) and ".part" not in str(refused.value)
    assert store.models() == []
    assert not store.blobs.exists() or list(store.blobs.iterdir()) == []
    assert list(store.partial.glob("*.part")) == []


def test_http_pull_with_expected_digest(tmp_path: Path, server: FileServer) -> None:
    store = ModelStore(tmp_path)
    seen: list[int] = []
    result = pull(
        store,
        HttpSource(server.url),
        digest=digest_of(server.content),
        progress=lambda done, total: seen.append(done),
    )
    assert result.model.digest == digest_of(server.content)
    assert result.model.name == "model"  # from the URL's file name
    assert seen[-1] == len(server.content)
    assert_store_consistent(store)
    assert list(store.partial.iterdir()) == [], "a finished download leaves no lock behind"


def test_https_pulls_verify_against_the_systems_trust_store(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS is verified with the operating system's CA store (truststore), so a Python that
    ships no roots of its own still pulls; a server the store does not vouch for is refused."""
    import truststore

    ca_file, tls = https_for_loopback(tmp_path)
    assert isinstance(HttpSource("https://example.invalid/m.gguf").context, truststore.SSLContext)
    server = FileServer(tiny_model.read_bytes(), tls=tls)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        with pytest.raises(errors.DownloadFailed, match="CERTIFICATE_VERIFY_FAILED"):
            pull(ModelStore(tmp_path / "a"), HttpSource(server.url), name="m")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the system store now holds the CA
        done = pull(ModelStore(tmp_path / "b"), HttpSource(server.url), name="m")
        assert done.model.digest == digest_of(server.content)
    finally:
        server.close()


def test_http_redirect_is_followed(tmp_path: Path, server: FileServer) -> None:
    store = ModelStore(tmp_path)
    moved = server.url.replace("/model.gguf", "/moved")
    assert pull(store, HttpSource(moved), name="m").model.size == len(server.content)


@pytest.mark.parametrize("status", [404, 403, 500, 503])
def test_http_errors_are_clear(tmp_path: Path, server: FileServer, status: int) -> None:
    server.behaviour.status = status
    with pytest.raises(errors.DownloadFailed, match=f"HTTP {status}"):
        pull(ModelStore(tmp_path), HttpSource(server.url), name="m")


def test_a_stalled_server_times_out(tmp_path: Path, server: FileServer) -> None:
    server.behaviour.stall_s = 2.0
    with pytest.raises(errors.DownloadFailed, match="stalled"):
        pull(ModelStore(tmp_path), HttpSource(server.url, stall_timeout=0.3), name="m")


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES_OK)
@given(cut=st.integers(min_value=1, max_value=497_000))
def test_an_interrupted_download_resumes_to_the_right_digest(
    tmp_path_factory, tiny_model: Path, cut: int
) -> None:
    content = tiny_model.read_bytes()
    cut = min(cut, len(content) - 1)
    server = FileServer(content)
    store = ModelStore(tmp_path_factory.mktemp("home"))
    try:
        server.behaviour.drop_after = cut
        with pytest.raises(errors.DownloadFailed, match="pull again to resume"):
            pull(store, HttpSource(server.url), name="m")
        assert store.models() == [] and store.blobs.exists() is False
        assert store.collect_garbage() == [], "gc keeps a download it can resume"
        server.behaviour.drop_after = None
        result = pull(store, HttpSource(server.url), name="m")
    finally:
        server.close()
    assert result.model.digest == digest_of(content)
    assert result.downloaded_bytes == len(content) - cut, "only the rest was fetched"
    assert server.behaviour.requests[-1] == f"bytes={cut}-"
    assert_store_consistent(store)


def test_a_server_that_ignores_range_starts_over(tmp_path: Path, server: FileServer) -> None:
    store = ModelStore(tmp_path)
    server.behaviour.drop_after = 100_000
    with pytest.raises(errors.DownloadFailed):
        pull(store, HttpSource(server.url), name="m")
    server.behaviour.drop_after, server.behaviour.ignore_range = None, True
    result = pull(store, HttpSource(server.url), name="m")
    assert result.model.digest == digest_of(server.content)


def test_a_wrong_digest_is_rejected_and_the_partial_discarded(
    tmp_path: Path, server: FileServer
) -> None:
    store = ModelStore(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.IntegrityError, match="does not match"):
        pull(store, HttpSource(server.url), digest=wrong, name="m")
    assert store.models() == [] and list(store.partial.glob("*.part")) == []


def test_two_pulls_of_one_digest_download_it_once(tmp_path: Path, server: FileServer) -> None:
    store, digest = ModelStore(tmp_path), digest_of(server.content)
    results: list[PullResult] = []

    def one(name: str) -> None:
        results.append(pull(store, HttpSource(server.url), digest=digest, name=name))

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(m.name for m in store.models()) == ["a", "b"]
    downloads = [r for r in server.behaviour.requests if r != "bytes=0-0"]  # not the probes
    assert downloads == ["bytes=0-"], "the file went out once"
    assert [r.already_present for r in results].count(True) == 1


def test_a_file_tampered_after_import_is_detected(tmp_path: Path, tiny_model: Path) -> None:
    store = ModelStore(tmp_path)
    model = pull(store, LocalSource(tiny_model), name="tiny").model
    blob = store.blob_path(model.digest)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0x01  # same size, one bit
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(errors.InvalidModelFile, match="changed after import"):
        store.checked_path("tiny")
    with pytest.raises(errors.InvalidModelFile):
        store.verify("tiny")


def test_hf_shorthand() -> None:
    assert (
        hf_url("hf://org/repo/dir/x.gguf")
        == "https://huggingface.co/org/repo/resolve/main/dir/x.gguf"
    )
    with pytest.raises(errors.InvalidRequest):
        hf_url("hf://org/x.gguf")


def test_disk_space_is_checked_before_downloading(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshd.pull as pull_module

    class Tiny:
        total, free = 10 * 2**30, 1024

    monkeypatch.setattr(pull_module.shutil, "disk_usage", lambda _path: Tiny)
    with pytest.raises(errors.InsufficientSpace, match="not enough disk space"):
        pull(ModelStore(tmp_path), HttpSource(server.url), name="m")
    assert server.behaviour.requests == ["bytes=0-0"], "only the probe, no download"

    class Big:  # 5 GiB free is plenty for this file, but it is the disk's last 5%
        total, free = 100 * 2**30, 5 * 2**30

    monkeypatch.setattr(pull_module.shutil, "disk_usage", lambda _path: Big)
    with pytest.raises(errors.InsufficientSpace, match=r"\(5% of the disk\) stay free"):
        pull(ModelStore(tmp_path), HttpSource(server.url), name="m")
    # On macOS, APFS's purgeable space (caches, local snapshots) is freed on demand: counted.
    monkeypatch.setattr(pull_module, "important_free_bytes", lambda _path: 50 * 2**30)
    assert pull(ModelStore(tmp_path), HttpSource(server.url), name="m").model.size > 0


def test_purgeable_space_is_read_only_on_macos(tmp_path: Path) -> None:
    from meshd.macos import important_free_bytes

    assert important_free_bytes(str(tmp_path)) is None or sys.platform == "darwin"


def test_a_model_larger_than_the_memory_budget_warns_or_is_refused(
    tmp_path: Path, tiny_model: Path
) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(errors.InsufficientMemory):
        pull(store, LocalSource(tiny_model), name="t", memory_budget=1000, strict=True)
    assert store.models() == []
    result = pull(store, LocalSource(tiny_model), name="t", memory_budget=1000)
    assert result.warnings and "memory budget" in result.warnings[0]


def test_a_download_of_unknown_size_is_capped(
    tmp_path: Path, server: FileServer, tiny_model: Path
) -> None:
    server.behaviour.no_length = server.behaviour.ignore_range = True  # no size, anywhere
    store = ModelStore(tmp_path / "home")
    size = tiny_model.stat().st_size
    with pytest.raises(errors.IntegrityError, match=f"more than {size // 2} bytes"):
        pull(store, HttpSource(server.url), name="tiny", max_bytes=size // 2)
    assert store.models() == []
    assert not any(p.suffix == ".part" for p in store.partial.iterdir())
    assert pull(store, HttpSource(server.url), name="tiny", max_bytes=size).model.size == size
    assert_store_consistent(store)


def test_a_server_sending_more_than_it_announced_is_cut_off(
    tmp_path: Path, server: FileServer, tiny_model: Path
) -> None:
    store = ModelStore(tmp_path / "home")
    probe_size = tiny_model.stat().st_size
    server.content = tiny_model.read_bytes() + b"\0" * 4096  # longer than the size it probed
    source = HttpSource(server.url)
    source.probe = lambda: Probe(probe_size, None)  # type: ignore[method-assign]
    with pytest.raises(errors.IntegrityError, match=f"more than {probe_size} bytes"):
        pull(store, source, name="tiny")
    assert store.models() == []


def test_gc_removes_the_locks_of_downloads_that_left_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    store = ModelStore(tmp_path)
    store.partial.mkdir(parents=True)
    abandoned = store.partial / f"{'a' * 64}.lock"  # what earlier builds left after each pull
    abandoned.touch()
    removed = store.collect_garbage()
    assert removed == [(abandoned, 0)] and not abandoned.exists()
    pull(store, LocalSource(tiny_model), name="t")
    assert list(store.partial.iterdir()) == []
