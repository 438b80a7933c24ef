"""The codec registry: every caller (services, CLI, demo, calibrator, benchmarks) finds a codec
here, by codec kind and architecture, instead of branching per codec.

A codec kind is a package (`reprocodec.image`, `reprocodec.pointcloud`) exposing the same
module-level functions, imported only when first used (so this module imports without torch):

    list_models(weights_dir) -> [info]        shipped models of the kind (info.name, .architecture,
                                             .quality, .weights_sha256, .bounds, .modes)
    resolve_model(model, quality, dir) -> name  a user's --model / --quality, or the default
    load_codec(name, weights_dir) -> Codec   a loaded codec (weights hash verified)
    read_input(path, max_elements) -> array  the file a user gives the encoder
    write_output(path, decoded, msg)         the decoder's output file
    effective_bounds(info) -> {tensor: bound} the bounds the codec will use
    inspect_fields(msg) -> {...}             figures for `reprocodec inspect`

and every loaded codec follows the `Codec` protocol below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InputError, UnknownModelError
from .v1 import bitstream_pb2 as pb


class Codec(Protocol):
    """What every codec offers, encode and decode side by side."""

    kind: str  # registry key: "image" | "point_cloud"
    info: Any  # the model's info (name, architecture, weights_sha256, bounds)
    weights_sha256: bytes
    decisions: dict[str, Any]  # name -> reprocodec.decision.ProtectedDecision

    def encode(self, data: np.ndarray, mode: Any, **options: Any) -> pb.Bitstream: ...

    def decode(self, msg: pb.Bitstream, verify: bool = True) -> Any: ...

    def warm_up(self) -> object:
        """Run every compiled kernel and network path once on a small built-in input, each
        round trip checked: the first request otherwise pays for loading (or compiling)
        them. The services call it before they report SERVING (what it returns is the
        codec's own: tests)."""
        ...

    def calibration_sample(self, data: np.ndarray) -> dict[str, np.ndarray]:
        """Encoder side of calibration: the exact integer-valued state (latents, voxels) from
        which every protected float tensor is recomputed."""
        ...

    def network_floats(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The protected float tensors this process's numerics compute from a sample."""
        ...


@dataclass(frozen=True)
class CodecKind:
    name: str  # "image" | "point_cloud"
    proto: int  # bitstream_pb2.CodecKind
    package: str  # module exposing the functions listed in the module docstring
    input_suffixes: tuple[str, ...]
    output_suffix: str
    unit: str  # what rates are per: "pixel" (bpp) or "point"
    encode_options: tuple[str, ...]  # keyword options its encode takes besides the mode

    def module(self) -> Any:
        return importlib.import_module(self.package)

    def list_models(self, weights_dir: Path | None = None) -> list[Any]:
        return list(self.module().list_models(weights_dir))

    def load(self, name: str, weights_dir: Path | None = None) -> Codec:
        return self.module().load_codec(name, weights_dir)

    def resolve_model(self, model: str | None, quality: int | None = None,
                      weights_dir: Path | None = None) -> str:
        """A user's --model / --quality (absent: the default) to a shipped model name."""
        return self.module().resolve_model(model, quality, weights_dir)

    def read_input(self, path: Path, max_elements: int | None = None) -> np.ndarray:
        return self.module().read_input(path, max_elements)

    def write_output(self, path: Path, decoded: Any, msg: pb.Bitstream) -> None:
        self.module().write_output(path, decoded, msg)

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The encode options of this kind among the ones a user gave (None: not given)."""
        return {k: v for k, v in given.items() if k in self.encode_options and v is not None}

    def effective_bounds(self, info: Any) -> dict[str, dict[str, Any]]:
        return dict(self.module().effective_bounds(info))

    def inspect_fields(self, msg: pb.Bitstream) -> dict[str, Any]:
        return dict(self.module().inspect_fields(msg))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
KINDS: dict[str, CodecKind] = {
    "image": CodecKind("image", pb.CODEC_KIND_IMAGE, "reprocodec.image", IMAGE_SUFFIXES,
                       ".png", "pixel", ("level",)),
    "point_cloud": CodecKind("point_cloud", pb.CODEC_KIND_POINT_CLOUD, "reprocodec.pointcloud",
                             (".ply",), ".ply", "point",
                             ("depth", "coders", "bitstream_format")),
}
_BY_PROTO = {k.proto: k for k in KINDS.values()}


def kind(name: str) -> CodecKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"unknown codec kind {name!r}; one of {', '.join(KINDS)}") from None


def kind_of_proto(codec: int) -> CodecKind:
    """The codec kind of a bitstream_pb2.CodecKind value."""
    try:
        return _BY_PROTO[codec]
    except KeyError:
        raise InputError(f"unknown codec kind {codec}") from None


def kind_of_stream(msg: pb.Bitstream) -> CodecKind:
    return kind_of_proto(msg.codec)


def kind_of_input(path: Path) -> CodecKind:
    """The codec for a user's input file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for k in KINDS.values():
        if suffix in k.input_suffixes:
            return k
    known = ", ".join(s for k in KINDS.values() for s in k.input_suffixes)
    raise InputError(f"{path}: no codec reads {suffix or 'files without a suffix'} "
                     f"(known: {known})")


def find_model(name: str, weights_dir: Path | None = None) -> tuple[CodecKind, Any]:
    """The kind and info of a shipped model, by name."""
    for k in KINDS.values():
        for info in k.list_models(weights_dir):
            if info.name == name:
                return k, info
    raise UnknownModelError(f"unknown model {name!r}; see `reprocodec models`")


def _digest(sha: str | bytes) -> bytes:
    return bytes.fromhex(sha) if isinstance(sha, str) else bytes(sha)


def model_of_stream(msg: pb.Bitstream, models: list[Any]) -> str:
    """The installed model that decodes `msg`, among `models` (infos of its kind, with .name
    and .weights_sha256): the one the stream names when that one has the stream's weights,
    else the one with the stream's weights under another name. Names rank models by rate, so
    a new rate point can rename a model; its weights (SHA-256, which the stream records) stay
    the same and still decode every stream written with them. Otherwise the stream's own
    name, so that the codec refuses it with its usual message (unknown model, or weights
    differ)."""
    digest = bytes(msg.weights_sha256)
    named = [m for m in models if m.name == msg.model]
    if named and _digest(named[0].weights_sha256) == digest:
        return msg.model
    same = sorted(m.name for m in models if _digest(m.weights_sha256) == digest)
    return same[0] if same else msg.model


def load(name: str, weights_dir: Path | None = None) -> Codec:
    k, _ = find_model(name, weights_dir)
    return k.load(name, weights_dir)
