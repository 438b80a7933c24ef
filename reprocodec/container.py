"""The bitstream container: a `reprocodec.v1.Bitstream` protobuf message, validated.

`pack` fills in the magic, format version and every CRC, validates, and serializes
deterministically. `unpack` parses any byte string and either returns a message whose every
field has been checked (magic, version, codec/header agreement, names, shapes, bounds, CRC-32 of
each payload and side-information stream) or raises ContainerError — so no unchecked byte ever
reaches a native entropy decoder.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from .checksum import checksum, crc32
from .errors import ContainerError
from .safeguard import ErrorBound, Mode, Protected
from .shipped import MODEL_NAME
from .v1 import bitstream_pb2 as pb

MAGIC = 0x44435052  # b"RPCD" read as a little-endian uint32
# The newest version this writer knows. `pack` writes each stream at the lowest version that
# can express it (a decoder upgraded later still reads what it can): 3 only for a point cloud
# whose placement is the identity and so omitted (_IDENTITY_PLACEMENT), 4 to 6 only for a
# stream with a payload of PAYLOAD_VERSIONS.
FORMAT_VERSION = 8
SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5, 6, 7, 8})
# Payloads newer than format 3, with the format that brought them (reprocodec.pointcloud's
# occupancy under mixed probabilities, 0.4.0; its neighbour coder's levels, 0.5.0, and under
# that coder's version 2 model, 0.6.0; under the mixer's version 2, 0.7.0, and its version 3,
# 0.8.0): an encoder writes them only when asked for that format, and older decoders refuse
# them.
PAYLOAD_VERSIONS = {"occupancy_mixed": 4, "occupancy_neighbour": 5,
                    "occupancy_neighbour_v2": 6, "occupancy_mixed_v2": 7,
                    "occupancy_mixed_v3": 8}
# Versions this decoder recognises but no longer reads, with what the user should do.
_RETIRED_VERSIONS = {
    1: "was written by reprocodec 0.1 (CompressAI's rANS without an end-of-stream check, no "
       "symbol checksums); re-encode the input with this version",
}
MAX_STREAM_BYTES = 1 << 30
MAX_ELEMENTS = 1 << 31  # per protected tensor / payload shape
MAX_NAME = 128

_MODE_TO_PROTO = {
    Mode.NONE: pb.SAFEGUARD_MODE_NONE,
    Mode.FLAGS: pb.SAFEGUARD_MODE_FLAGS,
    Mode.SIMPLIFIED: pb.SAFEGUARD_MODE_SIMPLIFIED,
    Mode.SYNDROME: pb.SAFEGUARD_MODE_SYNDROME,
}
_MODE_FROM_PROTO = {v: k for k, v in _MODE_TO_PROTO.items()}
_BOUND_TO_PROTO = {"absolute": pb.BOUND_KIND_ABSOLUTE, "relative": pb.BOUND_KIND_RELATIVE}
_BOUND_FROM_PROTO = {v: k for k, v in _BOUND_TO_PROTO.items()}
LEVELS = {"decoding": pb.PROTECTION_LEVEL_DECODING,
          "reconstruction": pb.PROTECTION_LEVEL_RECONSTRUCTION}
_HEADER_FOR_CODEC = {pb.CODEC_KIND_IMAGE: "image", pb.CODEC_KIND_POINT_CLOUD: "point_cloud"}


def mode_to_proto(mode: Mode | str) -> pb.SafeguardMode:
    return _MODE_TO_PROTO[Mode(mode)]


def mode_from_proto(value: int) -> Mode:
    return _MODE_FROM_PROTO[cast(pb.SafeguardMode, value)]


def bound_to_proto(bound: ErrorBound) -> pb.ErrorBound:
    return pb.ErrorBound(kind=_BOUND_TO_PROTO[bound.kind], value=bound.value)


def bound_from_proto(message: pb.ErrorBound) -> ErrorBound:
    kind = _BOUND_FROM_PROTO[message.kind]
    return ErrorBound.absolute(message.value) if kind == "absolute" else ErrorBound.relative(
        message.value
    )


def make_payload(name: str, data: bytes, shape: tuple[int, ...] | list[int],
                 symbols: np.ndarray) -> pb.Payload:
    """A payload record: the coded bytes, their CRC-32 and the checksum of the symbols they
    code (the decoder checks what its entropy decoder returns against it)."""
    return pb.Payload(name=name, shape=list(shape), data=data, crc32=crc32(data),
                      symbols_checksum=checksum(symbols))


# Integer voxel files (origin 0, scale 1: octree.voxelize) are common and their placement
# costs 35 bytes written out, a fifth of a small cloud's framing. Format 3 omits it: no origin
# values and no scale (its proto3 default, +0.0, never a valid scale) mean exactly this.
_IDENTITY_PLACEMENT = ((0.0, 0.0, 0.0), 1.0)


def _is_positive_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) > 0


def point_cloud_header(depth: int, num_points: int, origin, scale: float) -> pb.PointCloudHeader:
    """The header, its placement omitted when it is exactly the identity (+0.0 origin, scale
    1.0; any other origin, -0.0 included, is written out as given)."""
    header = pb.PointCloudHeader(depth=depth, num_points=num_points)
    origin = tuple(float(o) for o in origin)
    if not (all(_is_positive_zero(o) for o in origin) and len(origin) == 3 and scale == 1.0):
        header.origin.extend(origin)
        header.scale = scale
    header.checksum = point_cloud_header_checksum(header)
    return header


def placement(header: pb.PointCloudHeader) -> tuple[tuple[float, ...], float]:
    """(origin, scale) of a validated header: world = origin + voxel * scale."""
    if not header.origin:
        return _IDENTITY_PLACEMENT
    return tuple(header.origin), header.scale


def point_cloud_header_checksum(header: pb.PointCloudHeader) -> int:
    """Checksum of the fields that place decoded points (float64 values are exact), over the
    placement's values, written out or not."""
    origin, scale = placement(header)
    return checksum(np.array([header.depth, header.num_points, *origin, scale],
                             dtype=np.float64))


def required_version(message: pb.Bitstream) -> int:
    """The lowest format version that expresses `message` (its header set): what `pack`
    writes, and what the codecs put in the messages they return."""
    newest = max((PAYLOAD_VERSIONS.get(p.name, 0) for p in message.payloads), default=0)
    if newest:
        return newest
    if message.WhichOneof("header") == "point_cloud" and not message.point_cloud.origin:
        return 3
    return 2


def make_protected(
    name: str,
    level: str,
    protected: Protected,
    bound: ErrorBound,
) -> pb.ProtectedTensor:
    """The container record of one protected tensor (its indices checksum included)."""
    return pb.ProtectedTensor(
        name=name,
        level=LEVELS[level],
        mode=mode_to_proto(protected.mode),
        bound=bound_to_proto(bound),
        shape=list(protected.indices.shape),
        side_info=protected.stream,
        side_info_crc32=crc32(protected.stream),
        indices_checksum=checksum(protected.indices),
        risky_count=protected.risky_count,
        candidate_count=protected.candidate_count,
    )


def at_version(message: pb.Bitstream, version: int) -> None:
    """Express `message` for decoders that read bitstream formats up to `version` (one of
    SUPPORTED_VERSIONS), in place: at 2 an omitted identity placement is written out (the same
    placement and header checksum). For rolling upgrades that reach encoders before decoders:
    a decoder of reprocodec 0.2.0 reads format 2 only."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"bitstream format {version} is not one this version writes "
                         f"({', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})")
    newer = [p.name for p in message.payloads if PAYLOAD_VERSIONS.get(p.name, 0) > version]
    if newer:
        # Re-coding the payload needs the model: the encoder must not write it (its
        # bitstream_format option; the encoder service's --bitstream-format).
        raise ValueError(f"this stream's {newer[0]} payload needs bitstream format "
                         f"{PAYLOAD_VERSIONS[newer[0]]}; encode it with bitstream format "
                         f"{version} instead")
    if version < 3 and message.WhichOneof("header") == "point_cloud":
        header = message.point_cloud
        if not header.origin:
            origin, scale = _IDENTITY_PLACEMENT
            header.origin.extend(origin)
            header.scale = scale
    message.format_version = required_version(message)


def payload_bytes(message: pb.Bitstream, name: str) -> bytes:
    for payload in message.payloads:
        if payload.name == name:
            return payload.data
    raise ContainerError(f"stream has no payload {name!r}; was it written by this codec?")


def protected_tensor(message: pb.Bitstream, name: str) -> pb.ProtectedTensor:
    for tensor in message.protected:
        if tensor.name == name:
            return tensor
    raise ContainerError(f"stream has no protected tensor {name!r}")


def protection_bytes(message: pb.Bitstream) -> int:
    return sum(len(t.side_info) for t in message.protected)


def pack(message: pb.Bitstream) -> bytes:
    """Serialize a Bitstream (magic, version and CRCs filled in here), validated."""
    message.magic = MAGIC
    message.format_version = required_version(message)
    for payload in message.payloads:
        payload.crc32 = crc32(payload.data)
    for tensor in message.protected:
        tensor.side_info_crc32 = crc32(tensor.side_info)
    validate(message)
    return message.SerializeToString(deterministic=True)


def unpack(data: bytes) -> pb.Bitstream:
    """Parse and validate; ContainerError on anything that is not a well-formed stream."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ContainerError(f"a bitstream is bytes, not {type(data).__name__}")
    if len(data) == 0:
        raise ContainerError("empty bitstream: nothing to decode")
    if len(data) > MAX_STREAM_BYTES:
        raise ContainerError(f"bitstream of {len(data)} bytes exceeds {MAX_STREAM_BYTES}")
    message = pb.Bitstream()
    try:
        message.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError and, rarely, others
        raise ContainerError(
            "not a reprocodec bitstream (protobuf parse failed); "
            "pass the .rpc file the encoder wrote, unmodified"
        ) from exc
    validate(message)
    return message


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ContainerError(f"malformed bitstream: {what}")


def _check_shape(shape, what: str) -> None:
    _check(0 < len(shape) <= 8, f"{what} has {len(shape)} dimensions")
    _check(all(d > 0 for d in shape), f"{what} has an empty dimension")
    _check(math.prod(shape) <= MAX_ELEMENTS, f"{what} is too large")


def _check_name(name: str, seen: set[str], what: str) -> None:
    _check(0 < len(name) <= MAX_NAME and name.isprintable(), f"bad {what} name")
    _check(name not in seen, f"duplicate {what} {name!r}")
    seen.add(name)


def validate(message: pb.Bitstream) -> None:
    _check(message.magic == MAGIC, "wrong magic (is this a reprocodec .rpc file?)")
    if message.format_version in _RETIRED_VERSIONS:
        raise ContainerError(f"bitstream format version {message.format_version} "
                             f"{_RETIRED_VERSIONS[message.format_version]}")
    if message.format_version not in SUPPORTED_VERSIONS:
        raise ContainerError(
            f"bitstream format version {message.format_version} is not supported by this "
            f"decoder (supports {sorted(SUPPORTED_VERSIONS)}); upgrade reprocodec"
        )
    _check(message.codec in _HEADER_FOR_CODEC, f"unknown codec kind {message.codec}")
    _check(message.WhichOneof("header") == _HEADER_FOR_CODEC[message.codec],
           "header does not match the codec kind")
    _check(MODEL_NAME.fullmatch(message.model) is not None,
           "bad model name (letters, digits, '.', '_', '-'; no paths)")
    _check(len(message.weights_sha256) == 32, "weights SHA-256 must be 32 bytes")
    if message.codec == pb.CODEC_KIND_IMAGE:
        image = message.image
        _check(0 < image.height <= 1 << 16 and 0 < image.width <= 1 << 16, "bad image size")
        _check(image.channels in (1, 3), "image channels must be 1 or 3")
    else:
        cloud = message.point_cloud
        _check(1 <= cloud.depth <= 21, "octree depth out of range")
        _check(cloud.num_points <= MAX_ELEMENTS, "too many points")
        if not cloud.origin and message.format_version >= 3:
            _check(_is_positive_zero(cloud.scale), "a point cloud scale without an origin")
        else:
            _check(len(cloud.origin) == 3, "point cloud origin must have 3 values")
            _check(all(math.isfinite(o) for o in cloud.origin), "non-finite origin")
            _check(math.isfinite(cloud.scale) and cloud.scale > 0, "bad point cloud scale")
            # every voxel's world coordinates finite: origin + v * scale for v in 0..2^depth - 1
            # (scale > 0: the extremes are the origin and v = 2^depth - 1; a huge scale made
            # the far end inf)
            far = ((1 << cloud.depth) - 1) * cloud.scale
            _check(math.isfinite(far) and all(math.isfinite(o + far) for o in cloud.origin),
                   "point cloud placement puts voxels at infinite coordinates")
        _check(point_cloud_header_checksum(cloud) == cloud.checksum,
               "point cloud header (depth, point count, origin, scale) fails its checksum")
    names: set[str] = set()
    for payload in message.payloads:
        _check_name(payload.name, names, "payload")
        _check_shape(payload.shape, f"payload {payload.name!r} shape")
        _check(PAYLOAD_VERSIONS.get(payload.name, 0) <= message.format_version,
               f"payload {payload.name!r} in a format {message.format_version} stream")
        _check(crc32(payload.data) == payload.crc32,
               f"payload {payload.name!r} fails its CRC-32 (corrupted in transit or storage)")
    names = set()
    for tensor in message.protected:
        _check_name(tensor.name, names, "protected tensor")
        _check_shape(tensor.shape, f"protected tensor {tensor.name!r} shape")
        _check(tensor.level in LEVELS.values(), f"bad level for {tensor.name!r}")
        _check(tensor.mode in _MODE_FROM_PROTO, f"bad safeguard mode for {tensor.name!r}")
        _check(tensor.bound.kind in _BOUND_FROM_PROTO, f"bad bound kind for {tensor.name!r}")
        try:
            bound_from_proto(tensor.bound)
        except ValueError as exc:
            raise ContainerError(f"malformed bitstream: {exc}") from exc
        _check(crc32(tensor.side_info) == tensor.side_info_crc32,
               f"side information of {tensor.name!r} fails its CRC-32")
        _check(tensor.mode != pb.SAFEGUARD_MODE_NONE or not tensor.side_info,
               f"{tensor.name!r} has side information in mode none")
        n = math.prod(tensor.shape)
        _check(tensor.risky_count <= n and tensor.candidate_count <= n,
               f"counts of {tensor.name!r} exceed its size")
    # One encoding per stream: every writer labels a stream with the lowest version that
    # expresses it (pack, at_version, the codecs), so a higher label is not one of ours (and
    # would make older decoders refuse a stream they read).
    required = required_version(message)
    _check(message.format_version == required,
           f"a format {message.format_version} label on a stream that format {required} "
           "expresses (streams carry the lowest version that expresses them)")

