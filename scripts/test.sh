#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, types, unit, integration and mesh tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
