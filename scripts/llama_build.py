"""Install llama-cpp-python into a venv, built for this CPU without instructions the OS may trap.

llama.cpp's default build on x86-64 is `-march=native`, which compiles in AMX tile kernels on
CPUs that have them; Linux only lets a thread use AMX after it asks (arch_prctl), and llama.cpp's
worker threads do not, so the first quantized matmul dies with SIGILL. This script builds with
GGML_NATIVE=OFF and names the instruction sets itself: AVX2/FMA/F16C/BMI2 where the CPU has
them, AVX-512 where it has that, never AMX. On macOS the default build (Metal) is kept.

pip caches built wheels by name and version only, so a wheel built with other flags would be
reused silently. The wheel is therefore built without pip's cache into a folder named after a
hash of the version and the flags, and the venv records which build it has.

Standard library only: it runs before meshd is installed.
Usage: python scripts/llama_build.py VENV_DIR   (prints what it does on stderr)
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
ROOT = Path(__file__).resolve().parent.parent
# Mnemonics of AMX instructions as objdump prints them (tile loads, stores, dot products).
AMX_MNEMONIC = re.compile(
    rb"\b(ldtilecfg|sttilecfg|tilezero|tileloadd|tileloaddt1|tilestored|"
    rb"tilerelease|tdpb[su][su]d|tdpbf16ps|tdpfp16ps)\b"
)


def pinned_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The exact llama-cpp-python version pyproject.toml pins."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for dep in deps:
        name, _, version = dep.partition("==")
        if name.strip() == PACKAGE:
            return version.strip()
    raise SystemExit(f"pyproject.toml does not pin {PACKAGE}==<version>")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cmake_args(system: str, machine: str, flags: set[str]) -> list[str]:
    """CMake arguments for this platform: explicit instruction sets on x86-64 Linux, no AMX."""
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return []  # macOS: Metal, as llama-cpp-python builds by default; others: its defaults
    wanted = {
        "GGML_SSE42": "sse4_2" in flags,
        "GGML_AVX": "avx" in flags,
        "GGML_AVX2": "avx2" in flags,
        "GGML_FMA": "fma" in flags,
        "GGML_F16C": "f16c" in flags,
        "GGML_BMI2": "bmi2" in flags,
        "GGML_AVX_VNNI": "avx_vnni" in flags,
        "GGML_AVX512": "avx512f" in flags,
        "GGML_AVX512_VBMI": "avx512vbmi" in flags,
        "GGML_AVX512_VNNI": "avx512_vnni" in flags,
        "GGML_AVX512_BF16": "avx512_bf16" in flags,
        "GGML_AMX_TILE": False,
        "GGML_AMX_INT8": False,
        "GGML_AMX_BF16": False,
    }
    return ["-DGGML_NATIVE=OFF"] + [f"-D{k}={'ON' if v else 'OFF'}" for k, v in wanted.items()]


def build_key(version: str, args: list[str]) -> str:
    """A short name for one build: the version and every flag that went into it."""
    digest = hashlib.sha256("\n".join([version, *args]).encode()).hexdigest()[:16]
    return f"{version}-{digest}"


def amx_instructions(library: Path, objdump: str = "objdump") -> list[str]:
    """AMX mnemonics found in a shared library's disassembly (empty: none)."""
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, check=True
    ).stdout
    return sorted({m.decode() for m in AMX_MNEMONIC.findall(out)})


def amx_in_wheel(wheel: Path) -> list[str]:
    """AMX mnemonics in any ggml CPU library inside the wheel."""
    found: list[str] = []
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        for name in zf.namelist():
            if "ggml-cpu" in name and ".so" in name:
                found += amx_instructions(Path(zf.extract(name, tmp)))
    return found


def current_args() -> list[str]:
    """The CMake arguments for this machine, plus any the user set in CMAKE_ARGS."""
    flags = (
        cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else set()
    )
    args = cmake_args(platform.system(), platform.machine(), flags)
    extra = os.environ.get("CMAKE_ARGS", "").split()
    return args + extra


def cache_dir(system: str | None = None) -> Path:
    """~/Library/Caches/meshd/wheels on macOS (where Macs keep caches, outside Time Machine's
    way), $XDG_CACHE_HOME/meshd/wheels elsewhere."""
    if (system or platform.system()) == "Darwin":
        return Path.home() / "Library" / "Caches" / "meshd" / "wheels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshd" / "wheels"


def under_rosetta() -> bool:
    """An x86_64 Python translated on Apple Silicon: its llama.cpp would have no Metal."""
    if platform.system() != "Darwin" or platform.machine() != "x86_64":
        return False
    done = subprocess.run(
        ["sysctl", "-n", "sysctl.proc_translated"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() == "1"


def ensure(venv: Path) -> None:
    """Make venv hold llama-cpp-python built with this machine's flags."""
    if under_rosetta() and os.environ.get("MESHD_ALLOW_ROSETTA") != "1":
        raise SystemExit(
            "this Python is x86_64 running under Rosetta: llama.cpp would build without Metal "
            "and run several times slower. Use an arm64 Python (python.org's universal2, or "
            "Homebrew's in /opt/homebrew): PYTHON=/opt/homebrew/bin/python3 ./scripts/test.sh "
            "(MESHD_ALLOW_ROSETTA=1 builds it anyway)"
        )
    version, args = pinned_version(), current_args()
    key = build_key(version, args)
    marker = venv / "meshd-llama-build"
    if marker.exists() and marker.read_text().strip() == key:
        return
    python = venv / "bin" / "python"
    folder = cache_dir() / key
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        say(
            f"building {PACKAGE} {version} for this CPU (once, ~5-8 min on 2 cores): "
            f"{' '.join(args) or 'default flags'}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CMAKE_ARGS=" ".join(args))
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        partial = folder / "partial"
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted build left
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-cache-dir",
                "--no-binary",
                PACKAGE,
                "-w",
                str(partial),
                f"{PACKAGE}=={version}",
            ],
            env=env,
            check=True,
        )
        built = sorted(partial.glob("llama_cpp_python-*.whl"))
        if not built:
            raise SystemExit(f"pip wheel produced no {PACKAGE} wheel")
        if platform.machine() == "x86_64" and (found := amx_in_wheel(built[0])):
            raise SystemExit(
                f"the built {PACKAGE} has AMX instructions ({', '.join(found)}); "
                "refusing to install it"
            )
        built[0].rename(folder / built[0].name)  # only a whole, checked wheel gets its final name
        wheels = [folder / built[0].name]
    say(f"installing {wheels[-1].name} ({key})")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--force-reinstall",
            str(wheels[-1]),
        ],
        check=True,
    )
    marker.write_text(key + "\n")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/llama_build.py VENV_DIR")
    ensure(Path(sys.argv[1]))
