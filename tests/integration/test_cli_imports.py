"""The CLI starts at once: importing it loads neither llama.cpp, numpy, zeroconf, gRPC nor the
cryptography library; a command imports what it uses when it runs (bench/cli.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["llama_cpp", "numpy", "gguf", "zeroconf", "grpc", "cryptography", "asyncio"]


def loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in HEAVY if m in json.loads(out.stdout)]


def test_importing_the_cli_loads_nothing_heavy() -> None:
    assert loaded_after("import meshd.cli.app") == []


def test_a_client_on_the_unix_socket_needs_no_cryptography() -> None:
    assert "cryptography" not in loaded_after("import meshd.client")
    assert "llama_cpp" not in loaded_after("import meshd.node")


def test_the_public_api_is_what_apps_need_and_loads_on_use() -> None:
    import meshd
    from meshd import errors, types

    assert "grpc" not in loaded_after("import meshd")
    for name in meshd.__all__:
        assert getattr(meshd, name) is not None, name
    error_names = {n for n in meshd.__all__ if n[0].isupper() and hasattr(errors, n)}
    public_errors = {
        c.__name__
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.MeshdError)
    }
    assert error_names == public_errors, "every error an app can get is exported"
    assert meshd.MeshClient.__module__ == "meshd.client"
    assert meshd.Chunk is types.Chunk
    try:
        meshd.Engine  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'Engine'" in str(exc)
    else:
        raise AssertionError("internals are not part of the public API")
