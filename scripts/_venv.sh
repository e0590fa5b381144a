# Shared by scripts/demo.sh and scripts/test.sh: make .venv and install meshd with an extra.
# The first run compiles llama-cpp-python from source (about 5 minutes on 2 cores);
# pip keeps the built wheel in its cache, so later runs take seconds.

ensure_venv() {
  local extra="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "meshd needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  echo "installing meshd[$extra] into .venv (the first time builds llama-cpp-python: ~5 min)" >&2
  # PYTHONWARNINGS: setuptools' notes about editable installs are not news to a user.
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".[$extra]"
}
