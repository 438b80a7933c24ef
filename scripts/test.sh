#!/usr/bin/env bash
# The test command (README and .ci/run): lint, type-check the core, check that the generated
# protobuf code is fresh, then the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(scripts/venv.sh)
export PATH="$venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy (core)"; mypy
echo "== generated protobuf code"; python scripts/gen_proto.py --check
echo "== pytest"; python -m pytest -q "$@"
