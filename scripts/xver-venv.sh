#!/usr/bin/env bash
# Print the path of a second virtual environment with ANOTHER torch version (CPU-only), for
# bench/crossversion.py, creating it on first use:
#
#   scripts/xver-venv.sh [TORCH_VERSION]        default 2.11.0 (the device machine's torch)
#
# Environment: XVER_VENV (where; default ~/.cache/reprocodec/xver-torch<VERSION>, never inside
# the checkout), XVER_TORCHVISION (default: whichever release pins that torch),
# XVER_PYTHON (interpreter; default the main venv's), MAIN_VENV (default: scripts/venv.sh's).
#
# How (the Docker cpu variant's approach, deploy/docker/): the registry's Linux torch wheel is a
# CUDA build whose metadata pulls ~3 GB of nvidia-*/cuda-*/triton packages. So pip resolves
# torch, its torchvision, compressai 1.2.8 and the codec core's packages (numpy, numba,
# protobuf, xxhash, pillow, grpcio) once with --dry-run, numpy, numba, llvmlite, scipy and the
# other codec-core packages constrained to the main venv's versions (so torch is what differs);
# everything but the CUDA runtime packages is installed with --no-deps
# (deploy/docker/requirements.py without-cuda); deploy/docker/cuda_stubs.py compiles stand-ins
# for the CUDA libraries torch links, into $VENV/cuda-stubs; the project and its weights
# (reprocodec/weights, the reprocodec-weights distribution) are installed editable from this
# checkout with --no-deps. Run the venv's Python through $VENV/bin/xver-python, which
# puts the stand-ins on LD_LIBRARY_PATH (nothing is registered system-wide).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
torch_version=${1:-2.11.0}
# compressai imports torchvision; each torchvision release pins one torch, so pip picks it.
torchvision=torchvision${XVER_TORCHVISION:+==$XVER_TORCHVISION}
cache=${REPROCODEC_VENV_CACHE:-$HOME/.cache/reprocodec}
venv=${XVER_VENV:-$cache/xver-torch$torch_version}
case "$venv" in "$root"|"$root"/*)
  echo "xver-venv: $venv is inside the checkout; put it outside (XVER_VENV)" >&2; exit 2;;
esac

if [ ! -x "$venv/bin/xver-python" ] || [ ! -f "$venv/.complete" ]; then
  main=${MAIN_VENV:-$("$root/scripts/venv.sh")}
  py=${XVER_PYTHON:-$("$main/bin/python" -c 'import sys; print(sys._base_executable)')}
  echo "xver-venv: creating $venv (torch $torch_version, CPU-only; downloads about 1 GB)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" wheel >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # The codec core's numeric packages at the main venv's versions (torch's own dependencies,
  # such as sympy, follow whatever that torch requires).
  "$main/bin/pip" freeze --exclude-editable \
    | grep -iE '^(numpy|numba|llvmlite|scipy|protobuf|xxhash|pillow|grpcio|compressai)==' \
    > "$work/constraints.txt" || true
  "$venv/bin/pip" install -q --dry-run --ignore-installed --report "$work/report.json" \
    -c "$work/constraints.txt" \
    "torch==$torch_version" "$torchvision" "compressai==1.2.8" \
    numpy numba protobuf xxhash pillow grpcio >&2
  "$venv/bin/python" "$root/deploy/docker/requirements.py" without-cuda "$work/report.json" \
    > "$work/requirements.txt"
  "$venv/bin/pip" install -q --no-deps -r "$work/requirements.txt" >&2
  "$venv/bin/python" "$root/deploy/docker/cuda_stubs.py" \
    "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    "$venv/cuda-stubs" >&2
  cat > "$venv/bin/xver-python" <<EOF
#!/bin/sh
# The venv's Python with the CUDA stand-ins (scripts/xver-venv.sh) on the loader's path.
LD_LIBRARY_PATH="$venv/cuda-stubs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$venv/bin/python" "\$@"
EOF
  chmod +x "$venv/bin/xver-python"
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" -e "$root/reprocodec/weights" >&2
  "$venv/bin/xver-python" - "$torch_version" >&2 <<'PY'
import sys

import torch
import compressai.models  # noqa: F401  (its import pulls torchvision, scipy, torch_geometric)
import numba  # noqa: F401
import reprocodec.image.codec  # noqa: F401
import reprocodec.pointcloud.codec  # noqa: F401

assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert not torch.cuda.is_available()
print(f"xver-venv: torch {torch.__version__} imports, CPU-only (CUDA stand-ins), codecs import")
PY
  touch "$venv/.complete"
elif [ "$("$venv/bin/python" -I -c 'import reprocodec; print(reprocodec.__file__)' 2>/dev/null)" \
       != "$root/reprocodec/__init__.py" ]; then
  # Reused from another checkout: point the editable install at this one.
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" -e "$root/reprocodec/weights" >&2
fi
echo "$venv"
