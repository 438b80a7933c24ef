#!/usr/bin/env bash
# The test command (README and .ci/run): lint, type-check the core, check that the generated
# protobuf code is fresh, then the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(scripts/venv.sh)
# promtool (Debian's prometheus package) validates the Prometheus config, alert rules and the
# dashboard's queries in tests/test_deploy.py. Installing the package starts no server.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing promtool (apt package prometheus)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null
  else
    echo "promtool is missing: install Debian's 'prometheus' package (as root)" >&2
    exit 1
  fi
fi
export PATH="$venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy (core)"; mypy
echo "== generated protobuf code"; python scripts/gen_proto.py --check
echo "== pytest"; python -m pytest -q "$@"
