#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, types, unit, integration and mesh tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv test
# The browser test drives Debian's Chromium (playwright's own download is not reachable from
# everywhere); installed where apt-get works as root, as in CI. Elsewhere the test says why
# it skips.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium for the browser test (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q chromium >/dev/null 2>&1 || echo "chromium did not install" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
