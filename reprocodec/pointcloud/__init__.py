"""The reproducible learned lossless point-cloud geometry codec.

Importing this package does not import torch; the codec module does, when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import PointCloudModelInfo, list_models

if TYPE_CHECKING:
    from .codec import DecodedPointCloud, PointCloudCodec

__all__ = ["DecodedPointCloud", "PointCloudCodec", "PointCloudModelInfo", "list_models"]


def __getattr__(name: str) -> Any:
    if name in ("PointCloudCodec", "DecodedPointCloud"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(name)
