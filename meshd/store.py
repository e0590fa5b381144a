"""The content-addressed model store in the meshd home.

    store/blobs/sha256-<hex>   verified model files, named by their digest
    store/partial/<key>.part   downloads in progress (resumable), never loaded
    store/manifest.json        names -> digest, size, source and GGUF facts

A file reaches blobs/ only through ingest(): full sha256 checked, GGUF validated, fsynced,
renamed, directory fsynced. Two names may share one blob. Every change to the manifest is
made under an exclusive lock and written atomically, so a CLI and a daemon may share a home.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshd.config import MODEL_NAME
from meshd.errors import InvalidModelFile, InvalidRequest, ModelNotFound, quoted
from meshd.fsutil import atomic_write_bytes, fsync_dir, fsync_file, private_dir
from meshd.ggufcheck import GGUFFacts, inspect_gguf
from meshd.macos import exclude_from_backups

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HASH_CHUNK = 4 * 2**20
STORE_DIR = "store"


def parse_digest(text: str) -> str:
    """A digest as `sha256:` + 64 lowercase hex digits, or InvalidRequest."""
    if not isinstance(text, str) or not DIGEST.match(text):
        raise InvalidRequest(f"not a digest (sha256: + 64 lowercase hex): {quoted(text)}", "digest")
    return text


def parse_name(text: str, field: str = "name") -> str:
    """A model name that is safe as a manifest key and never a path."""
    if not MODEL_NAME.match(text) or text in {".", ".."}:
        raise InvalidRequest(
            f"bad model name {quoted(text)}: letters, digits, '.', '_' or '-', 64 at most", field
        )
    return text


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on the file at path, which may be removed by its holder: the lock is
    taken again when the file it got is no longer the one under that name."""
    while True:
        with path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return


def _drop_if_free(path: Path) -> bool:
    """Remove a lock file nobody holds; False when someone does."""
    try:
        with path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink(missing_ok=True)
            return True
    except FileNotFoundError:
        return False


def sha256_file(path: Path, prefix_of: int | None = None) -> hashlib._Hash:
    """A running sha256 of the file (or of its first prefix_of bytes)."""
    digest = hashlib.sha256()
    left = prefix_of
    with path.open("rb") as handle:
        while left is None or left > 0:
            block = handle.read(HASH_CHUNK if left is None else min(HASH_CHUNK, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest


@dataclass(frozen=True)
class StoredModel:
    """A name in the store and what is known of its file."""

    name: str
    digest: str
    size: int
    source: str
    architecture: str = ""
    parameters: int = 0
    quantization: str = ""
    context_length: int = 0
    # The file's stat when it was last hashed: a change means hash again before loading.
    checked_mtime_ns: int = 0


class ModelStore:
    """Names and verified files under one root; safe to share between processes."""

    def __init__(self, home: Path) -> None:
        self.root = home / STORE_DIR
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.manifest_path = self.root / "manifest.json"

    # -- reading ---------------------------------------------------------------------------

    def models(self) -> list[StoredModel]:
        """Every name in the store."""
        return list(self._read().values())

    def get(self, name: str) -> StoredModel:
        """The model by name, or ModelNotFound."""
        found = self._read().get(name)
        if found is None:
            raise ModelNotFound(f"no model named {name!r} in the store")
        return found

    def find(self, name_or_digest: str) -> StoredModel:
        """A model by name, or any name of a digest."""
        if name_or_digest.startswith("sha256:"):
            digest = parse_digest(name_or_digest)
            for model in self._read().values():
                if model.digest == digest:
                    return model
            raise ModelNotFound(f"no model with digest {digest} in the store")
        return self.get(parse_name(name_or_digest))

    def blob_path(self, digest: str) -> Path:
        """Where the verified file of a digest lives."""
        return self.blobs / parse_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        """True when a verified file of this digest is in the store."""
        return any(m.digest == digest for m in self._read().values())

    def manifest_mtime(self) -> int:
        """Changes whenever the manifest does (0 when there is none)."""
        try:
            return self.manifest_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def checked_path(self, name: str) -> Path:
        """The file of a model, hashed again first if it changed on disk since it was checked."""
        model = self.get(name)
        path = self.blob_path(model.digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise InvalidModelFile(f"{name}: its file is missing from the store") from None
        if stat.st_size == model.size and stat.st_mtime_ns == model.checked_mtime_ns:
            return path
        self.verify(name)
        return path

    def verify(self, name: str) -> StoredModel:
        """Hash the file again; InvalidModelFile if it no longer matches its digest."""
        model = self.get(name)
        path = self.blob_path(model.digest)
        actual = "sha256:" + sha256_file(path).hexdigest() if path.exists() else "missing"
        if actual != model.digest:
            raise InvalidModelFile(
                f"{name}: the stored file was changed after import (expected {model.digest}, "
                f"found {actual}); remove it with `meshd rm {name}` and pull it again"
            )
        stamped = dataclasses.replace(model, checked_mtime_ns=path.stat().st_mtime_ns)
        with self._locked() as manifest:
            for key, entry in manifest.items():
                if entry.digest == model.digest:
                    manifest[key] = dataclasses.replace(
                        entry, checked_mtime_ns=stamped.checked_mtime_ns
                    )
        return stamped

    # -- writing ---------------------------------------------------------------------------

    def ingest(self, partial: Path, digest: str, name: str, source: str) -> StoredModel:
        """Move a complete, hashed partial file into the store under name.

        The caller has computed `digest` over every byte of `partial`; the GGUF is validated
        here, before the file gets a final name.
        """
        parse_digest(digest)
        parse_name(name)
        facts = inspect_gguf(partial)
        target = self.blob_path(digest)
        with partial.open("rb") as handle:
            fsync_file(handle.fileno())
        if not self.blobs.is_dir():
            self.blobs.mkdir(parents=True)
            exclude_from_backups(str(self.root))  # macOS: Time Machine skips the models
        with self._locked() as manifest:  # a blob appears with its name: gc never sees it alone
            os.replace(partial, target)
            fsync_dir(self.blobs)
            model = self._stored(name, digest, source, facts, target)
            self._set_name(manifest, model)
        return model

    @staticmethod
    def _stored(name: str, digest: str, source: str, facts: GGUFFacts, target: Path) -> StoredModel:
        return StoredModel(
            name=name,
            digest=digest,
            size=facts.file_size,
            source=source,
            architecture=facts.architecture,
            parameters=facts.parameters,
            quantization=facts.quantization,
            context_length=facts.context_length,
            checked_mtime_ns=target.stat().st_mtime_ns,
        )

    def add_name(self, name: str, model: StoredModel) -> StoredModel:
        """Give an already stored file another name."""
        named = dataclasses.replace(model, name=parse_name(name))
        with self._locked() as manifest:
            self._set_name(manifest, named)
        return named

    def _set_name(self, manifest: dict[str, StoredModel], model: StoredModel) -> None:
        """Point a name at a model; the file the name pointed at before goes when no other
        name uses it (a runner that has it mapped keeps its pages)."""
        before = manifest.get(model.name)
        manifest[model.name] = model
        if before is not None and all(m.digest != before.digest for m in manifest.values()):
            self.blob_path(before.digest).unlink(missing_ok=True)

    def orphans(self) -> list[Path]:
        """Files in the blob folder that no name points to (left by a crash or an older
        meshd); `meshd gc` removes them."""
        with self._locked() as manifest:
            return self._orphans(manifest)

    def _orphans(self, manifest: dict[str, StoredModel]) -> list[Path]:
        named = {self.blob_path(m.digest).name for m in manifest.values()}
        if not self.blobs.is_dir():
            return []
        return sorted(p for p in self.blobs.iterdir() if p.name not in named)

    def collect_garbage(self) -> list[tuple[Path, int]]:
        """Remove every orphaned file, and the lock of every download that left nothing to
        resume; returns each with its size."""
        removed = []
        if self.partial.is_dir():
            for lock_path in sorted(self.partial.glob("*.lock")):
                if not lock_path.with_suffix(".part").exists() and _drop_if_free(lock_path):
                    removed.append((lock_path, 0))
        with self._locked() as manifest:
            for path in self._orphans(manifest):
                size = path.stat().st_size if path.is_file() else 0
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
                removed.append((path, size))
        return removed

    def remove(self, name: str) -> StoredModel:
        """Forget a name; delete its file when no other name uses it."""
        with self._locked() as manifest:
            model = manifest.pop(parse_name(name), None)
            if model is None:
                raise ModelNotFound(f"no model named {name!r} in the store")
            if all(m.digest != model.digest for m in manifest.values()):
                self.blob_path(model.digest).unlink(missing_ok=True)
        return model

    # -- manifest --------------------------------------------------------------------------

    def _read(self) -> dict[str, StoredModel]:
        try:
            raw = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidModelFile(f"the store manifest is unreadable: {exc}") from None
        try:
            return {name: StoredModel(**entry) for name, entry in raw.get("models", {}).items()}
        except (TypeError, AttributeError) as exc:
            raise InvalidModelFile(
                f"the store manifest {self.manifest_path} is damaged ({type(exc).__name__}: "
                f"{exc}); move it aside and pull the models again"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, StoredModel]]:
        """The manifest, held under an exclusive lock; written back atomically on success."""
        private_dir(self.root.parent)  # the home: this user's only
        self.root.mkdir(exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = self._read()
            yield manifest
            data = {"models": {k: dataclasses.asdict(v) for k, v in sorted(manifest.items())}}
            atomic_write_bytes(self.manifest_path, json.dumps(data, indent=2).encode())

    @contextlib.contextmanager
    def partial_file(self, key: str) -> Iterator[Path]:
        """The partial file for a download key, held exclusively: one download per key."""
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise InvalidRequest(f"bad download key {quoted(key)}", "digest")
        self.partial.mkdir(parents=True, exist_ok=True)
        lock_path, part = self.partial / f"{key}.lock", self.partial / f"{key}.part"
        with _held_lock(lock_path):
            try:
                yield part
            finally:
                if not part.exists():  # done (or never begun): nothing to resume, no lock left
                    lock_path.unlink(missing_ok=True)
