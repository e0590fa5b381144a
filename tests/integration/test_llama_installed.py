"""The installed llama.cpp, as built by scripts/llama_build.py: no AMX instruction (which Linux
traps unless a thread asks for it first), found with binutils' objdump."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("llama_build", ROOT / "scripts" / "llama_build.py")
assert _spec is not None and _spec.loader is not None
llama_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_build)


def test_the_amx_scan_finds_tile_instructions(tmp_path: Path) -> None:
    if shutil.which("as") is None or shutil.which("objdump") is None:
        pytest.skip("binutils (as, objdump) are not installed")
    source = tmp_path / "amx.s"
    source.write_text(".text\nldtilecfg (%rax)\ntilezero %tmm0\ntdpbssd %tmm2, %tmm1, %tmm0\n")
    subprocess.run(["as", str(source), "-o", str(tmp_path / "amx.o")], check=True)
    assert llama_build.amx_instructions(tmp_path / "amx.o") == ["ldtilecfg", "tdpbssd", "tilezero"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AMX exists only on x86-64")
def test_the_installed_llama_cpp_has_no_amx_instruction() -> None:
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    spec = importlib.util.find_spec("llama_cpp")  # found, not imported: nothing is loaded
    assert spec is not None and spec.origin is not None
    libraries = sorted((Path(spec.origin).parent / "lib").glob("libggml-cpu*.so*"))
    assert libraries, "libggml-cpu is where the CPU kernels live"
    for library in libraries:
        assert llama_build.amx_instructions(library) == [], library
