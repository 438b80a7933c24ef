#!/usr/bin/env bash
# Print the path of a virtual environment with reprocodec's server+dev dependencies,
# creating it on first use. Environments are cached outside the checkout, keyed on a hash of
# the dependency spec in pyproject.toml and of the weights distribution's project table (so CI
# on a fresh clone reuses one, and any change to the pinned versions builds a new one). The
# project and its shipped weights (reprocodec-weights, reprocodec/weights/pyproject.toml: the
# server install's half that the light client wheel leaves out) are (re)installed editable
# from the current checkout every time: that is cheap and keeps the cached env pointing here,
# so replaced or added weights files in reprocodec/weights are used as they are.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
spec_hash=$("$py" - "$root/pyproject.toml" "$root/reprocodec/weights/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
weights = tomllib.load(open(sys.argv[2], "rb"))["project"]
spec = {"deps": project["dependencies"], "extras": project["optional-dependencies"],
        "weights": weights, "python": sys.version_info[:2]}
print(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16])
PY
)
cache=${REPROCODEC_VENV_CACHE:-$HOME/.cache/reprocodec}
# setuptools reports every editable install that uses its import finder (the package-dir mapping
# of server/ and client/ needs one) with a boxed "Editable installation." notice, a warning of
# class InformationOnly. Only that notice is silenced: real configuration warnings still print
# (tests/test_packaging.py builds both distributions and fails on any).
export PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
venv=$cache/venv-$spec_hash
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "creating $venv (first run: downloads torch, about 3 GB)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" wheel >&2
  "$venv/bin/pip" install -q -e "$root[server,dev]" -e "$root/reprocodec/weights" >&2
  touch "$venv/.complete"
fi
# Without build isolation: the venv has setuptools and wheel, so this step needs no index.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" -e "$root/reprocodec/weights" >&2
echo "$venv"
