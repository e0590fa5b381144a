"""Regenerate meshd/v1 (Python messages, gRPC stubs and type stubs) from proto/.

Usage: python scripts/gen_proto.py [OUTPUT_ROOT]   (default: the repository root)
The staleness test runs this into a temporary folder and compares the bytes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
INIT_TEXT = '"""Generated from proto/meshd/v1 by scripts/gen_proto.py; do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under out_root/meshd/v1 and return their paths."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    out_root.mkdir(parents=True, exist_ok=True)
    # protoc finds the mypy plugins on PATH; they sit beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_root / "meshd" / "v1"
    (package / "__init__.py").write_text(INIT_TEXT)
    return sorted(package.glob("*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path)
