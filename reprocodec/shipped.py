"""Shipped model files: `<name>.pt` beside `<name>.json` in the weights folder, hash-checked.

Shared by the image and point-cloud codecs. REPROCODEC_WEIGHTS_DIR points the loaders at
another folder (tests, deployments).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import UnknownModelError

WEIGHTS_DIR = Path(
    os.environ.get("REPROCODEC_WEIGHTS_DIR") or Path(__file__).resolve().parent / "weights"
)


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
        known = ", ".join(available()) or "none shipped"
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
