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
# The official openai JS SDK, for the test that runs it in a page of another origin; npm's
# registry, a pinned major version, kept in ~/.cache/meshd/npm (~/Library/Caches on macOS). Where npm is missing the test
# says why it skips.
if [ "$(uname -s)" = Darwin ]; then
  OPENAI_JS_DIR="$HOME/Library/Caches/meshd/npm"
else
  OPENAI_JS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/meshd/npm"
fi
if command -v npm >/dev/null && [ ! -f "$OPENAI_JS_DIR/node_modules/openai/index.mjs" ]; then
  echo "installing the openai JS SDK for the browser test (npm)" >&2
  mkdir -p "$OPENAI_JS_DIR"
  npm install --silent --no-save --prefix "$OPENAI_JS_DIR" openai@6 >/dev/null 2>&1 \
    || echo "the openai JS SDK did not install" >&2
fi
export MESHD_TEST_OPENAI_JS="$OPENAI_JS_DIR/node_modules/openai"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
