"""The reproducible learned image codec (CompressAI hyperprior family + the safeguard).

Importing this package does not import torch; the codec module does, when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import ModelInfo, list_models

if TYPE_CHECKING:
    from .codec import DecodedImage, ImageCodec

__all__ = ["DecodedImage", "ImageCodec", "ModelInfo", "list_models"]


def __getattr__(name: str) -> Any:
    if name in ("ImageCodec", "DecodedImage"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(name)
