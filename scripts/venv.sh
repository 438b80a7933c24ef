#!/usr/bin/env bash
# Print the path of a virtual environment with reprocodec's server+dev dependencies,
# creating it on first use. Environments are cached outside the checkout, keyed on a hash of
# the dependency spec in pyproject.toml (so CI on a fresh clone reuses one, and any change to
# the pinned versions builds a new one). The project itself is (re)installed editable from the
# current checkout every time: that is cheap and keeps the cached env pointing here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
spec_hash=$("$py" - "$root/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
spec = {"deps": project["dependencies"], "extras": project["optional-dependencies"],
        "python": sys.version_info[:2]}
print(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16])
PY
)
cache=${REPROCODEC_VENV_CACHE:-$HOME/.cache/reprocodec}
venv=$cache/venv-$spec_hash
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "creating $venv (first run: downloads torch, about 3 GB)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" wheel >&2
  "$venv/bin/pip" install -q -e "$root[server,dev]" >&2
  touch "$venv/.complete"
fi
"$venv/bin/pip" install -q --no-deps -e "$root" >&2
echo "$venv"
