"""The light client of the reprocodec services (no torch, no compressai).

`EncoderClient` / `DecoderClient` (clients.py) call the gRPC services; `commands` implements
the remote verbs of the `reprocodec` CLI (encode/decode --encoder/--decoder, roundtrip, health).
"""

from .clients import (
    DecoderClient,
    EncoderClient,
    ServiceError,
    cloud_points,
    cloud_voxels,
    image_pixels,
)

__all__ = [
    "DecoderClient",
    "EncoderClient",
    "ServiceError",
    "cloud_points",
    "cloud_voxels",
    "image_pixels",
]
