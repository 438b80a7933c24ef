"""The codec side of the services: requests -> codec calls -> responses, without gRPC.

Encoder and decoder paths are written side by side and mirrored (encode_image / decode_image,
encode_point_cloud / decode_point_cloud). The codec packages (torch, compressai) are imported
here lazily, when the server loads its models, so that the light client never pulls them in.

Every stream is validated by `reprocodec.container` (magic, version, every CRC-32, shapes) and
checked against the decoder's models (name, weights SHA-256) before a byte of it reaches a
native entropy decoder.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprocodec import container, options, registry
from reprocodec.checksum import checksum
from reprocodec.errors import InputError, ModelMismatchError, UnknownModelError
from reprocodec.image import io as imageio
from reprocodec.streamstats import stream_stats
from reprocodec.v1 import bitstream_pb2, service_pb2

log = logging.getLogger("reprocodec.server")

@dataclass(frozen=True)
class ModelEntry:
    """One model this server can run: enough to list it and to check a stream against it."""

    name: str
    codec: int  # bitstream_pb2.CodecKind
    architecture: str
    quality: int
    weights_sha256: bytes
    bounds: dict[str, dict[str, Any]]
    modes: tuple[str, ...]


def _entry(info: Any, kind: registry.CodecKind) -> ModelEntry:
    sha = info.weights_sha256
    return ModelEntry(
        name=info.name, codec=kind.proto, architecture=info.architecture,
        quality=int(getattr(info, "quality", 0) or 0),
        weights_sha256=bytes.fromhex(sha) if isinstance(sha, str) else bytes(sha),
        bounds=kind.effective_bounds(info),
        modes=tuple(getattr(info, "modes", ("none", "flags", "simplified", "syndrome"))),
    )


class Codecs:
    """The models of one server process: listed once at start, loaded once, then shared.

    Inference with loaded models is read-only, so concurrent requests share one codec object.
    """

    def __init__(self, weights_dir: Path | None = None,
                 max_pixels: int = imageio.DEFAULT_MAX_PIXELS, cloud_threads: int = 1,
                 bitstream_format: int = container.FORMAT_VERSION) -> None:
        self.weights_dir = weights_dir
        self.max_pixels = max_pixels
        # Threads per point-cloud request: the server already runs several requests at once.
        self.cloud_threads = cloud_threads
        # The newest format the encoder writes (--bitstream-format; container.at_version).
        self.bitstream_format = bitstream_format
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.models: dict[str, ModelEntry] = {}
        for kind in registry.KINDS.values():
            for info in kind.list_models(weights_dir):
                self.models[info.name] = _entry(info, kind)

    # -- model registry -------------------------------------------------------------------

    def resolve(self, model: str, quality: int, codec: int) -> ModelEntry:
        """A request's model: a model name, or an architecture (+ quality), or the default."""
        if model in self.models and not quality:
            return self.entry(model, codec)
        return self.entry(self.default_model(codec, quality, architecture=model), codec)

    def default_model(self, codec: int, quality: int = 0, architecture: str = "") -> str:
        """The architecture's (default: the first's) highest quality, or the given rank."""
        entries = [m for m in self.models.values() if m.codec == codec]
        if not entries:
            what = "image" if codec == bitstream_pb2.CODEC_KIND_IMAGE else "point-cloud"
            raise UnknownModelError(
                f"this server has no {what} models installed; deploy one with its weights"
            )
        if architecture and architecture in self.models:
            raise InputError(f"model {architecture!r} is one quality already; drop --quality "
                             "or give its architecture instead")
        if architecture and all(m.architecture != architecture for m in entries):
            have = ", ".join(sorted({m.architecture for m in entries} | {m.name for m in entries}))
            raise UnknownModelError(
                f"unknown model or architecture {architecture!r}; this server has: {have} "
                "(see ListModels)"
            )
        architecture = architecture or sorted(entries, key=lambda m: m.architecture)[0].architecture
        ranked = sorted((m for m in entries if m.architecture == architecture),
                        key=lambda m: (m.quality, m.name))
        if not quality:
            return ranked[-1].name
        for m in ranked:
            if m.quality == quality:
                return m.name
        have = ", ".join(str(m.quality) for m in ranked)
        raise UnknownModelError(
            f"{architecture} has no quality {quality}; choose one of: {have} (see ListModels)"
        )

    def entry(self, name: str, codec: int) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None or entry.codec != codec:
            known = ", ".join(sorted(m.name for m in self.models.values() if m.codec == codec))
            raise UnknownModelError(
                f"unknown model {name!r}; this server has: {known or 'none'} (see ListModels)"
            )
        return entry

    def codec(self, entry: ModelEntry) -> Any:
        with self._lock:  # load once, even when the first requests arrive together
            codec = self._loaded.get(entry.name)
            if codec is None:
                started = time.perf_counter()
                kind = registry.kind_of_proto(entry.codec)
                codec = kind.load(entry.name, self.weights_dir)
                if kind.name == "point_cloud":
                    codec.threads = self.cloud_threads
                self._loaded[entry.name] = codec
                log.info("loaded %s in %.2f s", entry.name, time.perf_counter() - started)
        return codec

    def model_infos(self, default_names: set[str]) -> list[service_pb2.ModelInfo]:
        out = []
        for m in sorted(self.models.values(), key=lambda m: (m.codec, m.architecture, m.quality)):
            bounds = [
                service_pb2.ModelBound(
                    tensor=tensor,
                    bound=bitstream_pb2.ErrorBound(
                        kind=bitstream_pb2.BOUND_KIND_RELATIVE if b.get("kind") == "relative"
                        else bitstream_pb2.BOUND_KIND_ABSOLUTE,
                        value=float(b.get("value", 0.0)),
                    ),
                )
                for tensor, b in sorted(m.bounds.items())
            ]
            modes = [bitstream_pb2.SafeguardMode.Value(f"SAFEGUARD_MODE_{x.upper()}")
                     for x in m.modes]
            recorded = [set(b["profiles"]) for b in m.bounds.values() if b.get("profiles")]
            profiles = sorted(set.intersection(*recorded)) if recorded else []
            out.append(service_pb2.ModelInfo(
                name=m.name, codec=m.codec, architecture=m.architecture, quality=m.quality,
                weights_sha256=m.weights_sha256, bounds=bounds, modes=modes,
                is_default=m.name in default_names, loaded=m.name in self._loaded,
                calibrated_profiles=profiles, format_version=self.bitstream_format,
            ))
        return out

    # -- the stream checks every decode starts with ----------------------------------------

    def check_stream(self, msg: bitstream_pb2.Bitstream, codec: int) -> ModelEntry:
        """Right kind, a model we have, the weights it was encoded with: else refuse."""
        if msg.codec != codec:
            want = "DecodeImage" if msg.codec == bitstream_pb2.CODEC_KIND_IMAGE else (
                "DecodePointCloud")
            raise InputError(
                f"this is a {bitstream_pb2.CodecKind.Name(msg.codec)} stream; send it to {want}"
            )
        entries = [m for m in self.models.values() if m.codec == codec]
        entry = self.entry(registry.model_of_stream(msg, entries), codec)
        if msg.weights_sha256 != entry.weights_sha256:
            raise ModelMismatchError(
                f"stream was encoded with weights {msg.weights_sha256.hex()[:16]}.. of "
                f"{msg.model!r}, this decoder has {entry.weights_sha256.hex()[:16]}..: deploy "
                "the same weights on encoder and decoder"
            )
        return entry


# -- images -------------------------------------------------------------------------------


def image_pixels(request: service_pb2.EncodeImageRequest, max_pixels: int) -> np.ndarray:
    which = request.WhichOneof("input")
    if which == "image_file":
        return imageio.decode_image_bytes(request.image_file, max_pixels)
    if which == "raw":
        raw = request.raw
        return imageio.raw_to_pixels(raw.height, raw.width, raw.channels, raw.pixels, max_pixels)
    raise InputError("the request carries no image; set image_file (PNG/JPEG bytes) or raw")


def encode_image(codecs: Codecs, request: service_pb2.EncodeImageRequest, pixels: np.ndarray,
                 profile: str) -> service_pb2.EncodeResponse:
    kind = bitstream_pb2.CODEC_KIND_IMAGE
    entry = codecs.resolve(request.model, request.quality, kind)
    mode = options.mode_of(request.safeguard_mode)
    level = options.level_of(request.level)
    codec = codecs.codec(entry)
    started = time.perf_counter()
    msg = codec.encode(pixels, mode=mode, level=level)
    seconds = time.perf_counter() - started
    container.at_version(msg, codecs.bitstream_format)
    return service_pb2.EncodeResponse(bitstream=msg, stats=stream_stats(msg, profile, seconds))


def decode_image(codecs: Codecs, msg: bitstream_pb2.Bitstream, output_format: int,
                 profile: str) -> service_pb2.DecodeImageResponse:
    entry = codecs.check_stream(msg, bitstream_pb2.CODEC_KIND_IMAGE)
    codec = codecs.codec(entry)
    started = time.perf_counter()
    decoded = codec.decode(msg)
    seconds = time.perf_counter() - started
    pixels = np.asarray(decoded.pixels)
    response = service_pb2.DecodeImageResponse(
        bit_exact=bool(decoded.bit_exact),
        # bit_exact means the codec found checksum(pixels) equal to the stream's: reuse it.
        output_checksum=msg.output_checksum if decoded.bit_exact else checksum(pixels),
        expected_checksum=msg.output_checksum,
        stats=stream_stats(msg, profile, seconds),
        height=pixels.shape[0], width=pixels.shape[1], channels=pixels.shape[2],
    )
    if output_format == service_pb2.OUTPUT_FORMAT_RAW:
        response.raw.CopyFrom(service_pb2.RawImage(
            height=pixels.shape[0], width=pixels.shape[1], channels=pixels.shape[2],
            pixels=np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(),
        ))
    else:
        response.png = imageio.encode_png(pixels)
    return response


# -- point clouds -------------------------------------------------------------------------


def cloud_points(request: service_pb2.EncodePointCloudRequest) -> np.ndarray:
    which = request.WhichOneof("input")
    if which == "ply":
        if not request.ply:
            raise InputError("the PLY file is empty (0 bytes); send a PLY with x, y, z vertices")
        from reprocodec.pointcloud import ply

        return ply.parse_ply(request.ply, where="request")
    if which == "points":
        return unpack_points(request.points.count, request.points.xyz_float32, np.float32)
    raise InputError("the request carries no point cloud; set ply (file bytes) or points")


def unpack_points(count: int, data: bytes, dtype: Any) -> np.ndarray:
    expected = count * 3 * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise InputError(
            f"{count} packed points need {expected} bytes, got {len(data)}; "
            "send little-endian x y z triples"
        )
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(count, 3)


def encode_point_cloud(codecs: Codecs, request: service_pb2.EncodePointCloudRequest,
                       points: np.ndarray, profile: str) -> service_pb2.EncodeResponse:
    kind = bitstream_pb2.CODEC_KIND_POINT_CLOUD
    entry = codecs.resolve(request.model, 0, kind)
    mode = options.mode_of(request.safeguard_mode)
    codec = codecs.codec(entry)
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"depth": request.depth} if request.depth else {}
    if request.smallest:
        kwargs["coders"] = "smallest"
    written = codecs.bitstream_format  # --bitstream-format, lowered by the request's
    if request.max_format_version:
        # "at most": a newer format than this service knows (a client of a later release)
        # means its own newest; an older one than it writes is refused
        if request.max_format_version < min(container.SUPPORTED_VERSIONS):
            raise InputError(f"max_format_version {request.max_format_version} is not one "
                             f"this service writes ({sorted(container.SUPPORTED_VERSIONS)})")
        written = min(written, request.max_format_version)
    kwargs["bitstream_format"] = written  # the codec writes no payload newer than this
    msg = codec.encode(points, mode=mode, **kwargs)
    seconds = time.perf_counter() - started
    container.at_version(msg, written)
    return service_pb2.EncodeResponse(bitstream=msg, stats=stream_stats(msg, profile, seconds))


def decode_point_cloud(codecs: Codecs, msg: bitstream_pb2.Bitstream, output_format: int,
                       profile: str) -> service_pb2.DecodePointCloudResponse:
    entry = codecs.check_stream(msg, bitstream_pb2.CODEC_KIND_POINT_CLOUD)
    codec = codecs.codec(entry)
    started = time.perf_counter()
    decoded = codec.decode(msg)
    seconds = time.perf_counter() - started
    voxels = np.ascontiguousarray(decoded.voxels, dtype="<i4")
    points = np.ascontiguousarray(decoded.points, dtype="<f4")
    response = service_pb2.DecodePointCloudResponse(
        points=service_pb2.PackedPoints(
            count=len(voxels), xyz_int32=voxels.tobytes(), xyz_float32=points.tobytes(),
        ),
        bit_exact=bool(getattr(decoded, "bit_exact", True)),
        output_checksum=checksum(np.asarray(decoded.voxels)),
        expected_checksum=msg.output_checksum,
        stats=stream_stats(msg, profile, seconds),
    )
    if output_format != service_pb2.OUTPUT_FORMAT_RAW:
        response.ply = _ply_bytes(np.asarray(decoded.points))
    return response


def _ply_bytes(points: np.ndarray) -> bytes:
    """Binary PLY through the point-cloud package's writer (which writes to a path)."""
    import tempfile

    from reprocodec.pointcloud import ply

    with tempfile.TemporaryDirectory(prefix="reprocodec-ply-") as tmp:
        path = Path(tmp) / "out.ply"
        ply.write_ply(path, points, binary=True)
        return path.read_bytes()
