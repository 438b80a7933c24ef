"""`EncoderClient` and `DecoderClient`: the light Python client of the reprocodec services.

Imports grpc, protobuf, numpy and Pillow only (no torch, no compressai). Every call has a
deadline (`timeout` seconds, shared by all attempts), is retried with exponential backoff on
UNAVAILABLE only (the server was unreachable or restarting: nothing ran; any other status is
an answer and is raised as `ServiceError`), and switches to the chunked `...Stream` method
when its request exceeds what a unary gRPC message may carry.

    with EncoderClient("127.0.0.1:50051") as enc, DecoderClient("127.0.0.1:50052") as dec:
        encoded = enc.encode_image(Path("photo.png").read_bytes())
        pixels = dec.decode_image_pixels(encoded.bitstream)
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reprocodec import chunking, options
from reprocodec.v1 import bitstream_pb2, service_pb2, service_pb2_grpc


class ServiceError(Exception):
    """The service answered with a non-OK status; `code` is a grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str) -> None:
        super().__init__(f"{target}: {code.name}: {details}")
        self.code = code
        self.details = details
        self.target = target


def _read(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _Client:
    """Channel, credentials, deadline and retry logic shared by both clients."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.2,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        client_cert: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        token: str | None = None,
        max_message_mb: float = 64.0,
        chunk_threshold: int = chunking.UNARY_LIMIT_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.chunk_threshold = chunk_threshold
        token = token if token is not None else os.environ.get("REPROCODEC_AUTH_TOKEN")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        limit = int(max_message_mb * 2**20) + (1 << 16)  # + room for the message framing
        options = [("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit)]
        if tls or root_certificates or client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(root_certificates),
                private_key=_read(client_key),
                certificate_chain=_read(client_cert),
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        """fn(request, timeout=, metadata=) with one deadline over all attempts."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return fn(request, timeout=max(remaining, 0.0), metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                # Backoff doubles per attempt; jitter keeps many clients from retrying in step.
                pause = self.backoff * (2**attempt) * (0.5 + random.random() / 2)
                if (code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries
                        or time.monotonic() + pause >= deadline):
                    raise ServiceError(code, exc.details() or "", self.target) from None
                time.sleep(pause)
                attempt += 1

    def _unary_or_chunked(self, unary: Callable, stream: Callable, request: Any,
                          response_type: type, timeout: float | None) -> Any:
        data = request.SerializeToString()
        if len(data) <= self.chunk_threshold:
            return self._call(unary, request, timeout)

        def chunked(payload: bytes, timeout: float, metadata: Any) -> Any:
            chunks = stream(chunking.split(payload), timeout=timeout, metadata=metadata)
            response = response_type()
            response.ParseFromString(chunking.join(chunks))
            return response

        return self._call(chunked, data, timeout)

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """'SERVING', 'NOT_SERVING', ... of the server ("") or of one service name."""
        response = self._call(self._health.Check,
                              health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self, timeout: float | None = None) -> service_pb2.ListModelsResponse:
        return self._call(self._stub.ListModels, service_pb2.ListModelsRequest(), timeout)

    def server_info(self, timeout: float | None = None) -> service_pb2.ServerInfo:
        return self._call(self._stub.GetServerInfo, service_pb2.ServerInfoRequest(), timeout)


class EncoderClient(_Client):
    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.EncoderStub(self.channel)

    def encode_image(self, image: bytes | np.ndarray, *, model: str = "", quality: int = 0,
                     mode: str = "syndrome", level: str = "both",
                     timeout: float | None = None) -> service_pb2.EncodeResponse:
        """image: file bytes (PNG, JPEG, ...) or uint8 pixels H x W (x C, C = 1 or 3)."""
        request = service_pb2.EncodeImageRequest(
            model=model, quality=quality, safeguard_mode=options.mode_proto(mode),
            level=options.level_proto(level))
        if isinstance(image, np.ndarray):
            pixels = image if image.ndim == 3 else image[:, :, None]
            if pixels.dtype != np.uint8:
                raise TypeError(f"pixels must be uint8, not {pixels.dtype}")
            request.raw.CopyFrom(service_pb2.RawImage(
                height=pixels.shape[0], width=pixels.shape[1], channels=pixels.shape[2],
                pixels=np.ascontiguousarray(pixels).tobytes()))
        else:
            request.image_file = bytes(image)
        return self._unary_or_chunked(self._stub.EncodeImage, self._stub.EncodeImageStream,
                                      request, service_pb2.EncodeResponse, timeout)

    def encode_point_cloud(self, cloud: bytes | np.ndarray, *, model: str = "", depth: int = 0,
                           mode: str = "syndrome", smallest: bool = False,
                           max_format_version: int = 0,
                           timeout: float | None = None) -> service_pb2.EncodeResponse:
        """cloud: PLY file bytes or an (N, 3) array of coordinates. smallest: each octree
        level's coder chosen by bits alone (slower to decode on sparse clouds).
        max_format_version: the newest bitstream format the stream may need (0: the
        service's own setting)."""
        request = service_pb2.EncodePointCloudRequest(
            model=model, depth=depth, safeguard_mode=options.mode_proto(mode),
            smallest=smallest, max_format_version=max_format_version)
        if isinstance(cloud, np.ndarray):
            xyz = np.ascontiguousarray(cloud, dtype="<f4").reshape(-1, 3)
            request.points.CopyFrom(service_pb2.PackedPoints(count=len(xyz),
                                                             xyz_float32=xyz.tobytes()))
        else:
            request.ply = bytes(cloud)
        return self._unary_or_chunked(
            self._stub.EncodePointCloud, self._stub.EncodePointCloudStream,
            request, service_pb2.EncodeResponse, timeout)


class DecoderClient(_Client):
    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.DecoderStub(self.channel)

    def decode_image(self, stream: bytes | bitstream_pb2.Bitstream, *, raw: bool = False,
                     timeout: float | None = None) -> service_pb2.DecodeImageResponse:
        """stream: .rpc file bytes or a Bitstream message. raw=True: pixels instead of PNG."""
        request = _decode_request(stream, raw)
        return self._unary_or_chunked(self._stub.DecodeImage, self._stub.DecodeImageStream,
                                      request, service_pb2.DecodeImageResponse, timeout)

    def decode_image_pixels(self, stream: bytes | bitstream_pb2.Bitstream,
                            timeout: float | None = None) -> np.ndarray:
        """Decoded uint8 pixels H x W x C."""
        return image_pixels(self.decode_image(stream, raw=True, timeout=timeout))

    def decode_point_cloud(self, stream: bytes | bitstream_pb2.Bitstream, *, raw: bool = False,
                           timeout: float | None = None) -> service_pb2.DecodePointCloudResponse:
        request = _decode_request(stream, raw)
        return self._unary_or_chunked(
            self._stub.DecodePointCloud, self._stub.DecodePointCloudStream,
            request, service_pb2.DecodePointCloudResponse, timeout)


def _decode_request(stream: bytes | bitstream_pb2.Bitstream, raw: bool) -> Any:
    fmt = service_pb2.OUTPUT_FORMAT_RAW if raw else service_pb2.OUTPUT_FORMAT_ENCODED
    if isinstance(stream, bitstream_pb2.Bitstream):
        return service_pb2.DecodeRequest(bitstream=stream, output_format=fmt)
    return service_pb2.DecodeRequest(container=bytes(stream), output_format=fmt)


def image_pixels(response: service_pb2.DecodeImageResponse) -> np.ndarray:
    """uint8 H x W x C from a decode response (raw or PNG)."""
    if response.HasField("raw"):
        raw = response.raw
        return np.frombuffer(raw.pixels, dtype=np.uint8).reshape(
            raw.height, raw.width, raw.channels).copy()
    from reprocodec.image.io import decode_image_bytes

    return decode_image_bytes(response.png)


def cloud_voxels(response: service_pb2.DecodePointCloudResponse) -> np.ndarray:
    """int32 (N, 3) sorted voxel coordinates from a decode response."""
    p = response.points
    return np.frombuffer(p.xyz_int32, dtype="<i4").reshape(int(p.count), 3).copy()


def cloud_points(response: service_pb2.DecodePointCloudResponse) -> np.ndarray:
    """float32 (N, 3) world coordinates from a decode response."""
    p = response.points
    return np.frombuffer(p.xyz_float32, dtype="<f4").reshape(int(p.count), 3).copy()
