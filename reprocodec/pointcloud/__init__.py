"""The reproducible learned lossless point-cloud geometry codec.

Importing this package does not import torch; the codec module does, when first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UnknownModelError
from .models import DEFAULT_BOUNDS, DEFAULT_MODEL, PointCloudModelInfo, list_models

if TYPE_CHECKING:
    from .codec import DecodedPointCloud, PointCloudCodec

__all__ = ["DecodedPointCloud", "PointCloudCodec", "PointCloudModelInfo", "effective_bounds",
           "inspect_fields", "list_models", "load_codec", "read_input", "resolve_model",
           "write_output"]


def __getattr__(name: str) -> Any:
    if name in ("PointCloudCodec", "DecodedPointCloud"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(name)


# -- the codec-kind interface of reprocodec.registry --------------------------------------

def load_codec(name: str, weights_dir: Path | None = None) -> PointCloudCodec:
    from .codec import PointCloudCodec

    return PointCloudCodec.load(name, weights_dir)


def resolve_model(model: str | None, quality: int | None, weights_dir: Path | None = None) -> str:
    """--model names a point-cloud model, or is absent / an image model (one --model serves a
    batch of images and clouds): then the default point-cloud model."""
    names = {i.name for i in list_models(weights_dir)}
    if model and model in names:
        return model
    if model and model.startswith("octree"):
        raise UnknownModelError(f"unknown point-cloud model {model!r}; available: "
                                f"{', '.join(sorted(names)) or 'none'}")
    return DEFAULT_MODEL


def read_input(path: Path, max_elements: int | None = None) -> np.ndarray:
    from .ply import read_ply

    return read_ply(path)


def write_output(path: Path, decoded: Any, msg: Any) -> None:
    """Integer voxels when the stream's placement is the identity, else world coordinates."""
    from reprocodec.container import placement

    from .ply import write_ply

    origin, scale = placement(msg.point_cloud)
    integer = origin == (0.0, 0.0, 0.0) and scale == 1.0
    write_ply(path, decoded.voxels if integer else decoded.points)


def effective_bounds(info: PointCloudModelInfo) -> dict[str, dict[str, Any]]:
    return {t: info.tensor_bound(t) for t in DEFAULT_BOUNDS} | dict(info.bounds)


def inspect_fields(msg: Any) -> dict[str, Any]:
    """Point-cloud figures for `reprocodec inspect`; bits per point counts the whole stream,
    as the services' stats do (reprocodec.streamstats, the one definition)."""
    from reprocodec.container import placement
    from reprocodec.streamstats import stream_stats

    from .codec import ADAPTIVE_PAYLOAD, NEIGHBOUR_VERSIONS, level_coders

    cloud = msg.point_cloud
    origin, scale = placement(cloud)
    stats = stream_stats(msg)
    levels = ""
    if msg.payloads:
        try:
            levels = level_coders(msg)
        except ValueError:  # ContainerError: inspect describes, the decoder refuses
            levels = "malformed"
    adaptive = [p for p in msg.payloads if p.name == ADAPTIVE_PAYLOAD]
    neighbour_payload = [p for p in msg.payloads if p.name in NEIGHBOUR_VERSIONS]
    return {
        "depth": int(cloud.depth), "num_points": int(cloud.num_points),
        "origin": list(origin), "scale": scale,
        "coded_occupancy_bits": int(msg.protected[0].shape[0]) if msg.protected else 0,
        "adaptive_occupancy_bits": int(adaptive[0].shape[0]) if adaptive else 0,
        "neighbour_occupancy_bits": int(neighbour_payload[0].shape[0]) if neighbour_payload else 0,
        # the coder of each octree level, root first: L learned model, A adaptive context coder,
        # N neighbour coder
        "level_coders": levels,
        # the learned levels' probabilities: the model's, refined per stream (refine.py) or
        # mixed with a count model (mixing.py)
        "learned_probabilities": LEARNED_PROBABILITIES.get(
            next((p.name for p in msg.payloads), ""), "none"),
        "bits_per_point": stats.bits_per_element,
    }


# Each learned levels' payload (codec.LEARNED_PAYLOADS, the same names: tested) -> their
# probabilities (inspect, benchmarks); a stream without one has no learned level ("none":
# adaptive or neighbour-coded levels only)
LEARNED_PROBABILITIES = {"occupancy": "model", "occupancy_refined": "refined",
                         "occupancy_mixed": "mixed", "occupancy_mixed_v2": "mixed",
                         "occupancy_mixed_v3": "mixed"}
