"""Every way a model gets into the store: a local file, HTTP(S) (resumable), or a friend's peer.

All sources share one path: probe size and digest, check disk (and memory) first, append to a
resumable partial file while hashing, then let the store verify and ingest it. A partial file
is never loaded and never has a final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc

from meshd import errors
from meshd.fsutil import fsync_file
from meshd.gossip import peer_address
from meshd.macos import important_free_bytes
from meshd.rpc import channels
from meshd.rpc.status import error_from_rpc
from meshd.security.credentials import TlsCredentials
from meshd.store import ModelStore, StoredModel, parse_digest, parse_name, sha256_file
from meshd.v1 import mesh_pb2 as pb

Progress = Callable[[int, int | None], None]
READ_CHUNK = 1024 * 1024
DEFAULT_MAX_PULL_BYTES = 256 * 2**30  # a file of unknown size: the largest GGUF a peer takes
STALL_TIMEOUT_S = 30.0
SPACE_MARGIN = 64 * 2**20  # leave at least this much free beyond the file
FREE_SHARE = 0.05  # ... and this share of the disk: a pull never fills the owner's disk


@dataclass(frozen=True)
class Probe:
    """What a source says of its file before the download."""

    size: int | None
    digest: str | None


class Source(Protocol):
    """Somewhere a model file can be read from, from any offset."""

    label: str

    def probe(self) -> Probe: ...

    def read(self, offset: int) -> Iterator[bytes]: ...

    def default_name(self) -> str: ...


def _name_from_file(file_name: str) -> str:
    stem = Path(file_name).name.removesuffix(".gguf")
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip(".-_")
    return cleaned[:64].lower() or "model"


class LocalSource:
    """A file on this machine."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self.label = str(self.path)
        if not self.path.exists():
            raise errors.InvalidRequest(f"no such file: {self.path}", "source")
        if self.path.is_dir():
            raise errors.InvalidRequest(f"{self.path} is a folder, not a model file", "source")
        if not self.path.is_file():
            raise errors.InvalidRequest(
                f"{self.path} is not a regular file (a pipe or a device?)", "source"
            )
        if not os.access(self.path, os.R_OK):
            raise errors.InvalidRequest(f"cannot read {self.path}: permission denied", "source")

    def probe(self) -> Probe:
        return Probe(self.path.stat().st_size, None)

    def read(self, offset: int) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            handle.seek(offset)
            while block := handle.read(READ_CHUNK):
                yield block

    def default_name(self) -> str:
        return _name_from_file(self.path.name)


def hf_url(source: str) -> str:
    """hf://org/repo/path/file.gguf -> the Hugging Face resolve URL of the main branch."""
    parts = source.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise errors.InvalidRequest("hf:// takes org/repo/path/to/file.gguf", "source")
    org, repo, rest = parts[0], parts[1], "/".join(parts[2:])
    return f"https://huggingface.co/{org}/{repo}/resolve/main/{rest}"


def https_context() -> ssl.SSLContext:
    """TLS for HTTPS pulls, verified against the operating system's own trust store (the
    Keychain on macOS, the distribution's CA bundle on Linux) through truststore: python.org's
    Python for macOS ships no CA roots of its own until its "Install Certificates" step runs,
    so its default context refuses every HTTPS server."""
    try:
        import truststore
    except ImportError:  # a partial install: Python's own defaults
        return ssl.create_default_context()
    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class HttpSource:
    """An HTTP(S) URL; resumes with Range, follows redirects, gives up after a stall."""

    def __init__(self, url: str, stall_timeout: float = STALL_TIMEOUT_S) -> None:
        self.url, self.label, self.stall_timeout = url, url, stall_timeout
        self.context = https_context()  # also for a redirect from http: to https:

    def _open(self, offset: int, end: str = "") -> tuple[object, int, int | None]:
        """The response from offset on, where it really starts, and the whole file's size."""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={offset}-{end}"})
        try:
            response = urllib.request.urlopen(
                request, timeout=self.stall_timeout, context=self.context
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # asked past the end: what we hold is complete or wrong
                return None, offset, offset
            raise errors.DownloadFailed(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise errors.DownloadFailed(f"{self.url}: {reason}") from None
        start = offset if response.status == 206 else 0
        content_range = response.headers.get("Content-Range", "")
        length = response.headers.get("Content-Length")
        if response.status == 206 and content_range.rpartition("/")[2].isdigit():
            total: int | None = int(content_range.rpartition("/")[2])
        else:
            total = start + int(length) if length is not None else None
        return response, start, total

    def probe(self) -> Probe:
        response, _start, total = self._open(0, end="0")  # one byte: just the headers
        if response is not None:
            response.close()  # type: ignore[attr-defined]
        return Probe(total, None)

    def read(self, offset: int) -> Iterator[bytes]:
        response, start, total = self._open(offset)
        if response is None:
            return
        skip = offset - start  # a server that ignores Range resends what we already have
        received = start
        try:
            while True:
                try:
                    block = response.read(READ_CHUNK)  # type: ignore[attr-defined]
                except TimeoutError:
                    raise errors.DownloadFailed(
                        f"{self.url}: stalled for {self.stall_timeout:.0f}s; pull again to resume"
                    ) from None
                except (http.client.HTTPException, OSError) as exc:
                    raise errors.DownloadFailed(
                        f"{self.url}: connection lost ({type(exc).__name__}); pull again to resume"
                    ) from None
                if not block:
                    break
                received += len(block)
                if skip >= len(block):
                    skip -= len(block)
                    continue
                yield block[skip:]
                skip = 0
        finally:
            response.close()  # type: ignore[attr-defined]
        if total is not None and received < total:
            raise errors.DownloadFailed(
                f"{self.url}: connection closed at byte {received} of {total}; pull again to resume"
            )

    def default_name(self) -> str:
        return _name_from_file(self.url.split("?")[0].rsplit("/", 1)[-1])


class PeerSource:
    """A model in a friend's peer store, fetched over gRPC (FetchModel)."""

    def __init__(
        self,
        address: str,
        wanted: str,
        timeout: float = STALL_TIMEOUT_S,
        credentials: TlsCredentials | None = None,
        peer_id: str = "",
    ) -> None:
        self.address, self.wanted, self.timeout = address, wanted, timeout
        self.credentials = credentials  # this peer's mesh certificate: FetchModel is peer-only
        self.peer_id = peer_id  # when known, the certificate there must name this peer
        self.label = f"peer {address}"
        self._probe: Probe | None = None

    def _call(self, offset: int, manifest_only: bool = False) -> Iterator[pb.FetchModelChunk]:
        request = pb.FetchModelRequest(offset=offset, manifest_only=manifest_only)
        if self.wanted.startswith("sha256:"):
            request.digest = parse_digest(self.wanted)
        else:
            request.name = parse_name(self.wanted)
        channel = channels.open_channel(
            self.address, self.credentials, bulk=True, peer_id=self.peer_id
        )
        try:
            yield from channels.mesh_stub(channel).FetchModel(request)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, self.address)
            named = str(error) if self.address in str(error) else f"{self.label}: {error}"
            raise type(error)(named) from None
        finally:
            channel.close()

    def probe(self) -> Probe:
        if self._probe is None:
            first = next(iter(self._call(0, manifest_only=True)), None)
            if first is None or not first.HasField("manifest"):
                raise errors.DownloadFailed(f"{self.label} sent no manifest")
            digest = parse_digest(first.manifest.digest)
            self._probe = Probe(first.manifest.size, digest)
        return self._probe

    def read(self, offset: int) -> Iterator[bytes]:
        for message in self._call(offset):
            if message.HasField("data"):
                yield message.data

    def default_name(self) -> str:
        return self.wanted if not self.wanted.startswith("sha256:") else "model"


def open_source(
    source: str, from_peer: str | None = None, credentials: TlsCredentials | None = None
) -> Source:
    """The Source a `meshd pull` argument names; credentials are for pulling from a peer."""
    if from_peer:
        if peer_address(from_peer) is None:
            raise errors.InvalidRequest(
                f"--from must be a peer's host:port, got {errors.quoted(from_peer)}", "from"
            )
        return PeerSource(from_peer, source, credentials=credentials)
    if source.startswith("hf://"):
        return HttpSource(hf_url(source))
    if source.startswith(("http://", "https://")):
        try:
            parsed = urllib.parse.urlsplit(source)
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise errors.InvalidRequest(f"not a URL: {errors.quoted(source)} ({exc})") from None
        if not parsed.hostname:
            raise errors.InvalidRequest(f"not a URL: {errors.quoted(source)} (no host)")
        return HttpSource(source)
    return LocalSource(Path(source))


@dataclass
class PullResult:
    """What a pull did."""

    model: StoredModel
    downloaded_bytes: int
    already_present: bool
    warnings: list[str] = field(default_factory=list)


def _check_space(store: ModelStore, needed: int) -> None:
    store.partial.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(store.partial)
    floor = max(SPACE_MARGIN, int(usage.total * FREE_SHARE))
    # On macOS, space APFS frees on demand (caches, local snapshots) counts too, as in Finder.
    free = max(usage.free, important_free_bytes(str(store.partial)) or 0)
    if needed + floor > free:
        raise errors.InsufficientSpace(
            f"not enough disk space: the model needs {needed / 2**20:.0f} MiB more, and "
            f"{floor / 2**20:.0f} MiB ({FREE_SHARE:.0%} of the disk) stay free; "
            f"{free / 2**20:.0f} MiB free in {store.root}"
        )


def _fit_warnings(size: int | None, memory_budget: int | None, strict: bool) -> list[str]:
    if size is None or memory_budget is None or size <= memory_budget:
        return []
    message = (
        f"the model ({size / 2**20:.0f} MiB) is larger than this peer's memory budget "
        f"({memory_budget / 2**20:.0f} MiB): it can be stored and shared, not served here"
    )
    if strict:
        raise errors.InsufficientMemory(message)
    return [message]


def pull(
    store: ModelStore,
    source: Source,
    *,
    name: str | None = None,
    digest: str | None = None,
    progress: Progress | None = None,
    memory_budget: int | None = None,
    strict: bool = False,
    max_bytes: int = DEFAULT_MAX_PULL_BYTES,
) -> PullResult:
    """Bring source into the store under name; resumes an interrupted download of it. A file
    is never larger than its announced size, nor than max_bytes when none was announced."""
    name = parse_name(source.default_name() if name is None else name)
    probe = source.probe()
    expected = parse_digest(digest) if digest else probe.digest
    warnings = _fit_warnings(probe.size, memory_budget, strict)
    if expected and store.has(expected):
        return PullResult(_rename(store, expected, name), 0, True, warnings)
    key = (expected or "sha256:" + hashlib.sha256(source.label.encode()).hexdigest())[7:]
    with store.partial_file(key) as part:
        if expected and store.has(expected):  # another pull finished while we waited
            return PullResult(_rename(store, expected, name), 0, True, warnings)
        limit = probe.size if probe.size is not None else max_bytes
        try:
            hasher, downloaded = _download(store, source, part, probe.size, limit, progress)
        except errors.IntegrityError:
            part.unlink(missing_ok=True)
            raise
        actual = "sha256:" + hasher.hexdigest()
        size = part.stat().st_size
        if (expected and actual != expected) or (probe.size is not None and size != probe.size):
            part.unlink(missing_ok=True)
            raise errors.IntegrityError(
                f"{source.label} sent a file that does not match: expected "
                f"{expected or 'sha256 unknown'} of {probe.size} bytes, got {actual} of {size}"
            )
        if store.has(actual):  # the same file under another name: keep the one we have
            part.unlink()
            return PullResult(_rename(store, actual, name), downloaded, True, warnings)
        try:
            model = store.ingest(part, actual, name, source.label)
        except errors.InvalidModelFile as exc:
            part.unlink(missing_ok=True)
            # The validator names the file it read: the download's partial file, which is
            # gone now. Name what the person pulled instead.
            reason = str(exc).removeprefix(f"{part.name}: ")
            raise errors.InvalidModelFile(f"{source.label}: {reason}") from None
    return PullResult(model, downloaded, False, warnings)


def _rename(store: ModelStore, digest: str, name: str) -> StoredModel:
    existing = store.find(digest)
    return existing if existing.name == name else store.add_name(name, existing)


def _download(
    store: ModelStore,
    source: Source,
    part: Path,
    size: int | None,
    limit: int,
    progress: Progress | None,
) -> tuple[hashlib._Hash, int]:
    """Append the rest of the file (size bytes, when known) to part, never past limit bytes;
    returns the hash of all of it and the bytes fetched."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > limit:
        offset = 0  # longer than the file: not ours to trust; start again
    _check_space(store, (size or 0) - offset)
    with part.open("r+b" if part.exists() else "wb") as out:
        out.truncate(offset)
        hasher = sha256_file(part, offset)
        out.seek(offset)
        fetched = 0
        try:
            for block in source.read(offset):
                if offset + fetched + len(block) > limit:
                    raise errors.IntegrityError(
                        f"{source.label} sent more than {limit} bytes, the most this pull "
                        "takes (its announced size, else the max_pull_bytes setting)"
                    )
                out.write(block)
                hasher.update(block)
                fetched += len(block)
                if progress:
                    progress(offset + fetched, size)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise errors.InsufficientSpace(
                    f"disk full while writing {part.name}; free some space and pull again "
                    "(the download resumes)"
                ) from None
            raise
        out.flush()
        fsync_file(out.fileno())
    return hasher, fetched
