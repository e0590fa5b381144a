"""scripts/llama_build.py: llama.cpp is built for this CPU with no instruction the OS may trap,
and a build with other flags is never reused (the installed library's check for AMX is in
tests/integration/test_llama_installed.py)."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("llama_build", ROOT / "scripts" / "llama_build.py")
assert _spec is not None and _spec.loader is not None
llama_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_build)

SAPPHIRE_RAPIDS = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512vbmi",
                   "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}  # fmt: skip
HASWELL = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}


def args_of(flags: set[str]) -> dict[str, str]:
    args = llama_build.cmake_args("Linux", "x86_64", flags)
    return dict(a.removeprefix("-D").split("=") for a in args)


def test_native_is_off_and_amx_never_on_even_where_the_cpu_has_it() -> None:
    args = args_of(SAPPHIRE_RAPIDS)
    assert args["GGML_NATIVE"] == "OFF"
    assert args["GGML_AMX_TILE"] == args["GGML_AMX_INT8"] == args["GGML_AMX_BF16"] == "OFF"
    assert args["GGML_AVX512"] == args["GGML_AVX512_VNNI"] == args["GGML_AVX512_BF16"] == "ON"


def test_avx512_only_where_the_cpu_has_it() -> None:
    args = args_of(HASWELL)
    assert args["GGML_AVX2"] == args["GGML_FMA"] == args["GGML_F16C"] == "ON"
    assert args["GGML_AVX512"] == args["GGML_AVX512_VBMI"] == "OFF"
    assert args["GGML_AVX_VNNI"] == "OFF"


def test_an_old_cpu_gets_no_avx() -> None:
    args = args_of({"sse4_2"})
    assert args["GGML_SSE42"] == "ON" and args["GGML_AVX"] == args["GGML_AVX2"] == "OFF"


def test_macos_and_arm_keep_the_default_build() -> None:
    assert llama_build.cmake_args("Darwin", "arm64", set()) == []
    assert llama_build.cmake_args("Linux", "aarch64", {"neon"}) == []


def test_macs_keep_the_wheel_with_their_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    mac = llama_build.cache_dir("Darwin")
    assert mac == Path.home() / "Library" / "Caches" / "meshd" / "wheels"
    assert llama_build.cache_dir("Linux") == Path("/tmp/xdg/meshd/wheels")


def test_a_python_under_rosetta_is_refused_before_an_eight_minute_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_build, "under_rosetta", lambda: True)
    monkeypatch.delenv("MESHD_ALLOW_ROSETTA", raising=False)
    with pytest.raises(SystemExit, match=r"under Rosetta.*arm64 Python"):
        llama_build.ensure(tmp_path / "venv")


def test_the_cpu_flags_come_from_the_first_processor() -> None:
    cpuinfo = "processor : 0\nflags\t\t: fpu avx2 fma\n\nprocessor : 1\nflags : fpu\n"
    assert llama_build.cpu_flags(cpuinfo) == {"fpu", "avx2", "fma"}
    assert llama_build.cpu_flags("nothing here") == set()


def test_other_flags_make_another_cached_build() -> None:
    a = llama_build.build_key("0.3.36", ["-DGGML_AVX2=ON"])
    assert a == llama_build.build_key("0.3.36", ["-DGGML_AVX2=ON"])
    assert a != llama_build.build_key("0.3.36", ["-DGGML_AVX2=OFF"])
    assert a != llama_build.build_key("0.3.37", ["-DGGML_AVX2=ON"])
    assert a.startswith("0.3.36-")


def test_the_pinned_version_is_what_pyproject_pins() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={llama_build.pinned_version()}"' in text


def test_rosetta_is_only_found_on_an_x86_mac() -> None:
    if platform.system() != "Darwin":
        assert llama_build.under_rosetta() is False
