"""Point-cloud model registry: shipped `octree-ctx-*` weights and their json metadata.

Importing this module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError
from ..shipped import WEIGHTS_DIR, check_weights_hash, model_files

ARCHITECTURE = "octree-context"
DEFAULT_MODEL = "octree-ctx-v3"
# Used until a calibrated bound is in the model's json. Measured CPU-profile differences of
# the MLP's logits are ~1e-6 or less; 1e-4 keeps a wide margin while the risky zone stays at
# 2e/step = 0.3 % of coded bits (step 1/16).
DEFAULT_BOUNDS: dict[str, dict[str, Any]] = {"occupancy_logit": {"kind": "absolute", "value": 1e-4}}


@dataclass
class PointCloudModelInfo:
    name: str
    architecture: str
    weights_sha256: str
    bounds: dict[str, dict[str, Any]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("none", "flags", "simplified", "syndrome")
    quality: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def tensor_bound(self, tensor: str) -> dict[str, Any]:
        return self.bounds.get(tensor, DEFAULT_BOUNDS[tensor])


def read_info(json_path: Path) -> PointCloudModelInfo:
    meta = json.loads(json_path.read_text())
    if meta.get("architecture") != ARCHITECTURE:
        raise UnknownModelError(f"{json_path.name}: not a point-cloud model")
    return PointCloudModelInfo(
        name=meta["name"], architecture=ARCHITECTURE, weights_sha256=meta["weights_sha256"],
        bounds=dict(meta.get("bounds", {})), metadata=meta,
    )


def list_models(weights_dir: Path | None = None) -> list[PointCloudModelInfo]:
    """Shipped point-cloud models, by name."""
    weights_dir = weights_dir or WEIGHTS_DIR
    infos = []
    for p in sorted(Path(weights_dir).glob("*.json")):
        if not p.with_suffix(".pt").exists():
            continue
        try:
            infos.append(read_info(p))
        except (UnknownModelError, KeyError, ValueError):
            continue  # an image model beside ours
    return sorted(infos, key=lambda i: i.name)


def weights_path(name: str, weights_dir: Path = WEIGHTS_DIR) -> tuple[Path, PointCloudModelInfo]:
    """The .pt of a shipped model, its SHA-256 checked against the json."""
    json_path, pt_path = model_files(name, weights_dir, "point-cloud",
                                     lambda: [i.name for i in list_models(weights_dir)])
    info = read_info(json_path)
    check_weights_hash(pt_path, info.weights_sha256)
    return pt_path, info
