"""llama.cpp's own `llama-server`, built from the llama.cpp that the pinned llama-cpp-python
vendors (its sdist holds `vendor/llama.cpp`), with the CMake flags scripts/llama_build.py gives
meshd's own build: the strongest peer to compare a runner with, same code, same kernels.

The binary is cached beside meshd's wheels (one per version and flags); the first call builds
it, about ten minutes on 2 cores, and says so.

    .venv/bin/python bench/llamaserver.py     # build it now (the benchmarks build it when missing)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

from common import answers

ROOT = Path(__file__).resolve().parents[1]


def _llama_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "llama_build", ROOT / "scripts" / "llama_build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def binary() -> Path:
    """The llama-server binary for this version and these flags, built when missing."""
    build = _llama_build()
    version, args = build.pinned_version(), build.current_args()
    folder = build.cache_dir().parent / "llama-server" / build.build_key(version, args)
    path = folder / "llama-server"
    if path.exists():
        return path
    print(
        f"building llama-server from llama-cpp-python {version}'s llama.cpp "
        f"(once, ~10 min on 2 cores): {' '.join(args) or 'default flags'}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", str(work),
            ],
            check=True,
        )  # fmt: skip
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        out = work / "build"
        configure = [
            "cmake", "-S", str(source), "-B", str(out), "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
            *args,
        ]  # fmt: skip
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(out), "--target", "llama-server", "-j", jobs],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "llama-server.partial"
        shutil.copy2(out / "bin" / "llama-server", partial)
        partial.rename(path)  # only a whole binary gets its name
    return path


def start(
    model: Path, *, port: int, threads: int, parallel: int, context: int, batch: int = 512
) -> subprocess.Popen[bytes]:
    """llama-server on 127.0.0.1:port with `parallel` slots of `context` tokens each (its -c is
    the total), continuous batching on (its default); returns once it answers /health."""
    command = [
        str(binary()), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(threads), "--threads-batch", str(threads),
        "--parallel", str(parallel), "--ctx-size", str(context * parallel),
        "--batch-size", str(batch), "--ubatch-size", str(batch),
        "--no-webui", "--log-disable",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not answers(server, port, "/health", 300):
        server.kill()
        raise RuntimeError(f"llama-server did not start: {' '.join(command)}")
    return server


if __name__ == "__main__":
    print(binary())
