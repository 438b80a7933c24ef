#!/usr/bin/env bash
# The main job (README): set up the environment, then run the local encoder + decoder demo
# on the shipped samples and weights.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(scripts/venv.sh)
exec "$venv/bin/reprocodec" demo "$@"
