"""Optional transport security: TLS (server certificate, optionally mutual) and a shared token.

Both are off by default; the server then binds loopback only (main.py). The token travels as
gRPC metadata `authorization: Bearer TOKEN` and is compared in constant time. Health checks are
exempt: orchestrator probes (Kubernetes' native gRPC probe) cannot send metadata, and health
reveals nothing but SERVING / NOT_SERVING.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

import grpc

from .metrics import ServiceMetrics

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"--auth-token-file {path} is empty; put the shared token in it")
    return token


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, token: str, metrics: ServiceMetrics) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details):
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(handler_call_details)
        # Counted, but kept out of the latency histogram: no work was done.
        self._metrics.requests.labels(self._metrics.service, method.rsplit("/", 1)[-1],
                                      "UNAUTHENTICATED").inc()
        handler = continuation(handler_call_details)
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    message = ("missing or wrong token: send metadata 'authorization: Bearer TOKEN' with the "
               "token from the server's --auth-token-file")

    def abort_unary(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def abort_stream(request_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:  # unknown method: still refuse without telling what exists
        return grpc.unary_unary_rpc_method_handler(abort_unary)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            abort_stream, handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            abort_stream, handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort_unary, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort_unary, handler.request_deserializer, handler.response_serializer)
