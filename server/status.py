"""Exceptions -> gRPC status code, failure-metric reason and the message the caller sees.

The mapping lives on the exception classes (reprocodec/errors.py, DESIGN.md section 5); this
module only adds the few exceptions raised outside reprocodec's own hierarchy.
"""

from __future__ import annotations

import logging

import grpc

from reprocodec.client.chunking import ChunkLimitError
from reprocodec.errors import ReprocodecError

log = logging.getLogger("reprocodec.server")


class Failure(Exception):
    """A request refused or failed: abort the RPC with this status (raised inside handlers)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # decode-failure metric label
        self.message = message


def overloaded(limit: int) -> Failure:
    return Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded",
        f"server busy: {limit} requests already in flight (--max-concurrency); "
        "retry with backoff or add replicas",
    )


def deadline(remaining: float, estimate: float) -> Failure:
    return Failure(
        grpc.StatusCode.DEADLINE_EXCEEDED, "deadline",
        f"deadline too short: {remaining:.3f} s left, the work takes about {estimate:.3f} s; "
        "retry with a longer deadline",
    )


def classify(exc: BaseException) -> Failure:
    """Status, reason and message for an exception raised while serving a request."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, ReprocodecError):
        return Failure(grpc.StatusCode[exc.grpc_status], exc.reason, str(exc))
    if isinstance(exc, ChunkLimitError):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large", str(exc))
    try:  # safeguard may land after this module; its error means "not reproduced"
        from reprocodec.safeguard import SafeguardError
    except ImportError:  # pragma: no cover - safeguard is part of the core package
        SafeguardError = ()  # type: ignore[assignment]  # noqa: N806
    if SafeguardError and isinstance(exc, SafeguardError):
        return Failure(
            grpc.StatusCode.DATA_LOSS, "verification",
            f"safeguard could not reproduce the encoder's indices ({exc}); the decoder's "
            "numerics differ beyond the stream's error bound: re-encode with a larger bound "
            "or decode on a calibrated profile",
        )
    log.exception("internal error while serving a request")
    return Failure(
        grpc.StatusCode.INTERNAL, "internal",
        f"internal error ({type(exc).__name__}); see the server log and report it",
    )
