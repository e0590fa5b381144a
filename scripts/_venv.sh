# Shared by scripts/demo.sh and scripts/test.sh: make .venv and install meshd with an extra.
# The first run compiles llama-cpp-python from source (about 5-8 minutes on 2 cores) with
# scripts/llama_build.py, which keeps the wheel in ~/.cache/meshd/wheels (~/Library/Caches/meshd
# on macOS), so later runs take seconds.

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
  # llama-cpp-python first, built for this CPU with flags that cannot trap (no AMX); the wheel
  # is cached under a name that includes those flags, so later runs take seconds.
  .venv/bin/python scripts/llama_build.py .venv
  echo "installing meshd[$extra] into .venv" >&2
  # PYTHONWARNINGS: setuptools' notes about editable installs are not news to a user.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".[$extra]"
}
