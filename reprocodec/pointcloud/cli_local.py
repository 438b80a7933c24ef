"""The CLI's local point-cloud branch (`reprocodec encode cloud.ply ... --local`).

reprocodec/cli.py applies the numerics profile, then calls these per file. Importing this
module does not import torch (the codec loads on first use).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import container
from ..v1 import bitstream_pb2 as pb
from .models import DEFAULT_MODEL, list_models
from .octree import DEFAULT_DEPTH
from .ply import read_ply, write_ply

_codecs: dict[str, Any] = {}


def _codec(name: str) -> Any:
    from .codec import PointCloudCodec

    if name not in _codecs:
        _codecs[name] = PointCloudCodec.load(name)
    return _codecs[name]


def _model_name(args: argparse.Namespace) -> str:
    """--model names a point-cloud model, or is absent (an image model name is ignored only
    when it is not a point-cloud model and the default exists)."""
    requested = getattr(args, "model", None)
    names = {i.name for i in list_models()}
    if requested and (requested in names or requested.startswith("octree")):
        return requested
    return DEFAULT_MODEL


def encode_file(path: Path, out: Path, args: argparse.Namespace) -> None:
    from ..safeguard import Mode

    points = read_ply(path)
    depth = getattr(args, "depth", None) or DEFAULT_DEPTH
    codec = _codec(_model_name(args))
    msg = codec.encode(points, depth=depth, mode=Mode(getattr(args, "safeguard", "syndrome")))
    Path(out).write_bytes(container.pack(msg))


def decode_file(path: Path, out: Path, args: argparse.Namespace) -> None:
    msg = container.unpack(Path(path).read_bytes())
    if msg.codec != pb.CODEC_KIND_POINT_CLOUD:
        raise container.ContainerError(f"{path} is not a point-cloud stream")
    decoded = _codec(msg.model).decode(msg, verify=not getattr(args, "no_verify", False))
    cloud = msg.point_cloud
    integer = tuple(cloud.origin) == (0.0, 0.0, 0.0) and cloud.scale == 1.0
    write_ply(out, decoded.voxels if integer else decoded.points)


def inspect_fields(msg: pb.Bitstream) -> dict[str, Any]:
    """Point-cloud figures for `reprocodec inspect`: points, depth, bytes and bits per point."""
    cloud = msg.point_cloud
    payload = sum(len(p.data) for p in msg.payloads)
    protection = container.protection_bytes(msg)
    n = int(cloud.num_points)
    coded_bits = int(msg.protected[0].shape[0]) if msg.protected else 0
    return {
        "num_points": n,
        "depth": int(cloud.depth),
        "payload_bytes": payload,
        "protection_bytes": protection,
        "coded_occupancy_bits": coded_bits,
        "bits_per_point": 8 * (payload + protection) / n if n else 0.0,
        "payload_bits_per_point": 8 * payload / n if n else 0.0,
    }
