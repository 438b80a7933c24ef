"""The Encoder and Decoder gRPC servicers: thin, mirrored glue between ServiceCore and backend.

Each heavy method has a unary form and a chunked `...Stream` twin that share one `_work`
function, so large payloads take exactly the code path small ones do. A `_work` function first
runs the checks that need no heavy work (image header, PLY header, container framing, model,
weights, parameters), so a malformed request is answered INVALID_ARGUMENT or
FAILED_PRECONDITION, never a deadline or overload refusal; then `core.admitted` (memory
budget, deadline, queue, cancel token) wraps the heavy part: the element counts it gets
(pixels from the image or stream header, points from the PLY header or packed count) are
known before a pixel or point is decoded.
"""

from __future__ import annotations

import platform

import grpc

import reprocodec
from reprocodec import cancel, container, options
from reprocodec.errors import InputError, TooLargeError, UnknownModelError
from reprocodec.image import io as imageio
from reprocodec.pointcloud import ply
from reprocodec.v1 import bitstream_pb2, service_pb2, service_pb2_grpc

from . import backend
from .core import ServiceCore

_IMAGE = bitstream_pb2.CODEC_KIND_IMAGE
_CLOUD = bitstream_pb2.CODEC_KIND_POINT_CLOUD


class _Common:
    """ListModels and GetServerInfo, identical on both services."""

    def __init__(self, core: ServiceCore, codecs: backend.Codecs) -> None:
        self.core = core
        self.codecs = codecs

    def ListModels(self, request, context):  # noqa: N802 - gRPC method name
        return self.core.unary("ListModels", request, context, self._list_models)

    def GetServerInfo(self, request, context):  # noqa: N802
        return self.core.unary("GetServerInfo", request, context, self._server_info)

    def _list_models(self, request, context):
        defaults = set()
        for kind in (_IMAGE, _CLOUD):
            try:
                defaults.add(self.codecs.default_model(kind))
            except UnknownModelError:  # a kind without models has no default
                pass
        return service_pb2.ListModelsResponse(models=self.codecs.model_infos(defaults))

    def _server_info(self, request, context):
        c = self.core.config
        return service_pb2.ServerInfo(
            service=c.service, version=reprocodec.__version__, profile=c.profile,
            device=c.device, torch_version=_torch_version(),
            max_message_bytes=c.max_message_bytes, max_concurrency=c.max_concurrency,
            tls=c.tls, auth=c.auth, device_name=_device_name(c.device),
            format_version=self.codecs.bitstream_format,
        )


class EncoderServicer(_Common, service_pb2_grpc.EncoderServicer):
    def EncodeImage(self, request, context):  # noqa: N802
        return self.core.unary("EncodeImage", request, context, self._encode_image)

    def EncodeImageStream(self, chunks, context):  # noqa: N802
        return self.core.chunked("EncodeImageStream", chunks, context,
                                 service_pb2.EncodeImageRequest, self._encode_image)

    def EncodePointCloud(self, request, context):  # noqa: N802
        return self.core.unary("EncodePointCloud", request, context, self._encode_point_cloud)

    def EncodePointCloudStream(self, chunks, context):  # noqa: N802
        return self.core.chunked("EncodePointCloudStream", chunks, context,
                                 service_pb2.EncodePointCloudRequest, self._encode_point_cloud)

    def _encode_image(self, request, context):
        elements = image_elements(request, self.core.config.max_pixels)
        self._check_parameters(request, _IMAGE, request.quality)
        with self.core.admitted(context, "EncodeImage", elements):
            pixels = backend.image_pixels(request, self.core.config.max_pixels)
            cancel.check()
            response = backend.encode_image(self.codecs, request, pixels,
                                            self.core.config.profile)
        self.core.observe_stream(response.stats)
        return response

    def _encode_point_cloud(self, request, context):
        elements = cloud_elements(request)
        self._check_parameters(request, _CLOUD, 0)
        with self.core.admitted(context, "EncodePointCloud", elements):
            points = ply.check_coordinates(backend.cloud_points(request), "request")
            cancel.check()
            response = backend.encode_point_cloud(self.codecs, request, points,
                                                  self.core.config.profile)
        self.core.observe_stream(response.stats)
        return response

    def _check_parameters(self, request, kind: int, quality: int) -> None:
        """Model, safeguard mode and level: refused before the request waits or runs."""
        self.codecs.resolve(request.model, quality, kind)
        options.mode_of(request.safeguard_mode)
        if kind == _IMAGE:
            options.level_of(request.level)


class DecoderServicer(_Common, service_pb2_grpc.DecoderServicer):
    def DecodeImage(self, request, context):  # noqa: N802
        return self.core.unary("DecodeImage", request, context, self._decode_image)

    def DecodeImageStream(self, chunks, context):  # noqa: N802
        return self.core.chunked("DecodeImageStream", chunks, context,
                                 service_pb2.DecodeRequest, self._decode_image)

    def DecodePointCloud(self, request, context):  # noqa: N802
        return self.core.unary("DecodePointCloud", request, context, self._decode_point_cloud)

    def DecodePointCloudStream(self, chunks, context):  # noqa: N802
        return self.core.chunked("DecodePointCloudStream", chunks, context,
                                 service_pb2.DecodeRequest, self._decode_point_cloud)

    def _decode_image(self, request, context):
        msg = request_stream(request)
        self.codecs.check_stream(msg, _IMAGE)  # kind, model, weights: before any wait
        elements = msg.image.height * msg.image.width
        if elements > self.core.config.max_pixels:
            raise TooLargeError(
                f"stream declares a {msg.image.width} x {msg.image.height} image "
                f"({elements / 1e6:.1f} MP), above this decoder's limit of "
                f"{self.core.config.max_pixels / 1e6:.1f} MP (--max-pixels)"
            )
        with self.core.admitted(context, "DecodeImage", elements):
            response = backend.decode_image(self.codecs, msg, request.output_format,
                                            self.core.config.profile)
        self.core.observe_stream(response.stats)
        return response

    def _decode_point_cloud(self, request, context):
        msg = request_stream(request)
        self.codecs.check_stream(msg, _CLOUD)
        elements = msg.point_cloud.num_points
        with self.core.admitted(context, "DecodePointCloud", elements):
            response = backend.decode_point_cloud(self.codecs, msg, request.output_format,
                                                  self.core.config.profile)
        self.core.observe_stream(response.stats)
        return response


def image_elements(request: service_pb2.EncodeImageRequest, max_pixels: int) -> int:
    """Pixels of an encode request from the image header or the raw fields, after every check
    that needs no pixel decoded (size limit, bombs, bit depth, mode, raw byte count)."""
    which = request.WhichOneof("input")
    if which == "image_file":
        h, w = imageio.probe_image(request.image_file, max_pixels)
        return h * w
    if which == "raw":
        raw = request.raw
        imageio.check_raw(raw.height, raw.width, raw.channels, len(raw.pixels), max_pixels)
        return raw.height * raw.width
    raise InputError("the request carries no image; set image_file (PNG/JPEG bytes) or raw")


def cloud_elements(request: service_pb2.EncodePointCloudRequest) -> int:
    """Points of an encode request from the PLY header or the packed count (size checked)."""
    which = request.WhichOneof("input")
    if which == "ply":
        if not request.ply:
            raise InputError("the PLY file is empty (0 bytes); send a PLY with x, y, z vertices")
        return ply.vertex_count(request.ply, where="request")
    if which == "points":
        count, data = request.points.count, request.points.xyz_float32
        if len(data) != count * 12:
            raise InputError(
                f"{count} packed points need {count * 12} bytes, got {len(data)}; "
                "send little-endian x y z float32 triples"
            )
        return int(count)
    raise InputError("the request carries no point cloud; set ply (file bytes) or points")


def request_stream(request: service_pb2.DecodeRequest) -> bitstream_pb2.Bitstream:
    """The request's stream, validated by the container (ContainerError when malformed)."""
    which = request.WhichOneof("stream")
    if which == "container":
        return container.unpack(request.container)
    if which == "bitstream":
        container.validate(request.bitstream)
        return request.bitstream
    raise InputError("the request carries no stream; set container (.rpc file bytes) or bitstream")


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        return ""
    return str(torch.__version__)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return str(torch.cuda.get_device_name(torch.device(device)))
        except Exception:  # noqa: BLE001 - informational only
            return "cuda (unknown)"
    return platform.processor() or platform.machine()


def add_to_server(server: grpc.Server, service: str, core: ServiceCore,
                  codecs: backend.Codecs) -> str:
    """Register the servicer; returns its full service name (for health and reflection)."""
    if service == "encoder":
        service_pb2_grpc.add_EncoderServicer_to_server(EncoderServicer(core, codecs), server)
        return service_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
    service_pb2_grpc.add_DecoderServicer_to_server(DecoderServicer(core, codecs), server)
    return service_pb2.DESCRIPTOR.services_by_name["Decoder"].full_name
