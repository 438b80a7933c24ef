"""The Encoder and Decoder gRPC servicers: thin, mirrored glue between ServiceCore and backend.

Each heavy method has a unary form and a chunked `...Stream` twin that share one `_work`
function, so large payloads take exactly the code path small ones do.
"""

from __future__ import annotations

import platform

import grpc

import reprocodec
from reprocodec import container
from reprocodec.errors import InputError, UnknownModelError
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
        return self.core.unary("ListModels", request, context, self._list_models, heavy=False)

    def GetServerInfo(self, request, context):  # noqa: N802
        return self.core.unary("GetServerInfo", request, context, self._server_info, heavy=False)

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
        pixels = backend.image_pixels(request, self.core.config.max_pixels)
        elements = pixels.shape[0] * pixels.shape[1]
        started = self.core.check_deadline(context, "EncodeImage", elements)
        response = backend.encode_image(self.codecs, request, pixels, self.core.config.profile)
        self.core.done("EncodeImage", elements, started)
        self.core.observe_stream(response.stats)
        return response

    def _encode_point_cloud(self, request, context):
        points = backend.cloud_points(request)
        started = self.core.check_deadline(context, "EncodePointCloud", len(points))
        response = backend.encode_point_cloud(self.codecs, request, points,
                                              self.core.config.profile)
        self.core.done("EncodePointCloud", len(points), started)
        self.core.observe_stream(response.stats)
        return response


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
        elements = msg.image.height * msg.image.width
        started = self.core.check_deadline(context, "DecodeImage", elements)
        response = backend.decode_image(self.codecs, msg, request.output_format,
                                        self.core.config.profile)
        self.core.done("DecodeImage", elements, started)
        self.core.observe_stream(response.stats)
        return response

    def _decode_point_cloud(self, request, context):
        msg = request_stream(request)
        elements = msg.point_cloud.num_points
        started = self.core.check_deadline(context, "DecodePointCloud", elements)
        response = backend.decode_point_cloud(self.codecs, msg, request.output_format,
                                              self.core.config.profile)
        self.core.done("DecodePointCloud", elements, started)
        self.core.observe_stream(response.stats)
        return response


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
