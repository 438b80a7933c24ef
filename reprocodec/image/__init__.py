"""The reproducible learned image codec (CompressAI hyperprior family + the safeguard).

Importing this package does not import torch; the codec module does, when first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .models import DEFAULT_BOUNDS, MEAN_ARCHITECTURES, ModelInfo, list_models, resolve_model_name

if TYPE_CHECKING:
    from .codec import DecodedImage, ImageCodec

__all__ = ["DecodedImage", "ImageCodec", "ModelInfo", "effective_bounds", "inspect_fields",
           "list_models", "load_codec", "read_input", "resolve_model", "write_output"]


def __getattr__(name: str) -> Any:
    if name in ("ImageCodec", "DecodedImage"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(name)


# -- the codec-kind interface of reprocodec.registry --------------------------------------

def load_codec(name: str, weights_dir: Path | None = None) -> ImageCodec:
    from .codec import ImageCodec

    return ImageCodec.load(name, str(weights_dir) if weights_dir else None)


def resolve_model(model: str | None, quality: int | None, weights_dir: Path | None = None) -> str:
    return resolve_model_name(model, quality, weights_dir)


def read_input(path: Path, max_elements: int | None = None) -> np.ndarray:
    from .io import DEFAULT_MAX_PIXELS, read_image

    return read_image(path, max_elements or DEFAULT_MAX_PIXELS)


def write_output(path: Path, decoded: Any, msg: Any) -> None:
    from .io import write_png

    write_png(path, decoded.pixels)


def effective_bounds(info: ModelInfo) -> dict[str, dict[str, Any]]:
    """Calibrated bounds from the json, else the defaults, for the tensors this model has (a
    checkerboard model's per-pass decisions scale_index.* / mean_grid.* use the bounds of
    scale_index / mean_grid: the same networks' floats, calibrated over both passes)."""
    tensors = [t for t in DEFAULT_BOUNDS
               if t != "mean_grid" or info.architecture in MEAN_ARCHITECTURES]
    return {t: info.tensor_bound(t) for t in tensors} | dict(info.bounds)


def inspect_fields(msg: Any) -> dict[str, Any]:
    from reprocodec.streamstats import stream_stats

    stats = stream_stats(msg)
    return {"height": msg.image.height, "width": msg.image.width,
            "channels": msg.image.channels, "bits_per_pixel": stats.bits_per_element}
