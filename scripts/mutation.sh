#!/usr/bin/env bash
# Mutation testing of the pure decision modules (configured under [tool.mutmut] in
# pyproject.toml) against their unit tests, then a table of killed mutants per module.
#   ./scripts/mutation.sh                       # every module
#   ./scripts/mutation.sh meshd.routing ...     # some (dotted module names)
# Slow (minutes), so not part of CI. Needs the test venv: ./scripts/test.sh makes it.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install --quiet "mutmut==3.8.1"
rm -rf mutants  # mutmut keeps results between runs; every run here starts clean
patterns=()
for module in "$@"; do patterns+=("$module.*"); done
.venv/bin/mutmut run "${patterns[@]}" >/dev/null
exec .venv/bin/python scripts/mutation_report.py "$@"
