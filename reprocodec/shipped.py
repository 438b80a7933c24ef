"""Shipped model files: `<name>.pt` beside `<name>.json` in the weights folder, hash-checked.

Shared by the image and point-cloud codecs. The weights are not part of the `reprocodec`
distribution (the light client has no use for them): they live in reprocodec/weights/ of the
source tree, which is also its own small distribution, `reprocodec-weights` (import name
`reprocodec_weights`, reprocodec/weights/pyproject.toml), that every server set-up installs
from the checkout (scripts/venv.sh, the Dockerfile). The folder, first match wins:

1. REPROCODEC_WEIGHTS_DIR (tests, deployments, imported checkpoints);
2. the installed `reprocodec_weights` package;
3. reprocodec/weights beside this file: a source checkout (an editable install without the
   weights distribution, or the sources on sys.path).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import UnknownModelError

WEIGHTS_DISTRIBUTION = "reprocodec-weights"
WEIGHTS_PACKAGE = "reprocodec_weights"
CHECKOUT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def find_weights_dir() -> Path:
    """The weights folder (see the module docstring for the order). Nothing is listed or
    downloaded here: models are whatever NAME.pt + NAME.json pairs the folder holds."""
    override = os.environ.get("REPROCODEC_WEIGHTS_DIR")
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return CHECKOUT_WEIGHTS_DIR


WEIGHTS_DIR = find_weights_dir()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def model_files(name: str, weights_dir: Path, kind: str,
                available: Callable[[], list[str]]) -> tuple[Path, Path]:
    """(json, pt) of a shipped model; UnknownModelError naming the alternatives if absent.
    A name is a file stem in weights_dir, never a path: a stream names its model, and a
    stream must not choose which file on the decoding host gets loaded."""
    if not MODEL_NAME.fullmatch(name):
        raise UnknownModelError(f"{name!r} is not a model name (letters, digits, '.', '_', "
                                "'-'; no paths)")
    json_path, pt_path = Path(weights_dir) / f"{name}.json", Path(weights_dir) / f"{name}.pt"
    if not (json_path.exists() and pt_path.exists()):
        known = ", ".join(available()) or (
            "none shipped" if Path(weights_dir).is_dir() else
            f"no weights folder at {weights_dir} (the weights come with the server install: "
            f"`pip install ./reprocodec/weights` from a checkout installs {WEIGHTS_DISTRIBUTION}"
            "; or set REPROCODEC_WEIGHTS_DIR)")
        raise UnknownModelError(f"unknown {kind} model {name!r}; available: {known}")
    return json_path, pt_path


def check_weights_hash(pt_path: Path, expected_sha256: str) -> None:
    """The weights file must be the one its metadata (and so every stream) names."""
    actual = sha256_file(pt_path)
    if actual != expected_sha256:
        raise UnknownModelError(
            f"{pt_path.name} has SHA-256 {actual[:12]}.. but its json says "
            f"{expected_sha256[:12]}..: reinstall the package's weights"
        )
