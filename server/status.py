"""Exceptions -> gRPC status code, failure-metric reason and the message the caller sees.

The mapping lives on the exception classes (reprocodec/errors.py, README "gRPC API"; the
chunking errors of reprocodec.chunking and reprocodec.cancel.CancelledError are
ReprocodecErrors too); this module adds the refusals of the core (queue, deadline, shutdown)
and the few exceptions raised outside reprocodec's own hierarchy.
"""

from __future__ import annotations

import logging

import grpc

from reprocodec.errors import ReprocodecError

log = logging.getLogger("reprocodec.server")


class Failure(Exception):
    """A request refused or failed: abort the RPC with this status (raised inside handlers)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # decode-failure metric label
        self.message = message


def queue_full(limit: int, queue_length: int) -> Failure:
    return Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded",
        f"server busy: {limit} requests running and {queue_length} waiting, the queue is full "
        "(--max-concurrency, --queue-length); retry with backoff or add replicas",
    )


def waited_too_long(waited: float, max_wait: float) -> Failure:
    return Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded",
        f"server busy: waited {waited:.1f} s in the queue without getting a worker "
        f"(--max-queue-wait {max_wait:g} s); retry with backoff or add replicas",
    )


def busy_past_deadline(waited: float) -> Failure:
    return Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded",
        f"server busy: after {waited:.1f} s in the queue the request's deadline no longer "
        "covers the work; retry with backoff, a longer deadline, or add replicas",
    )


def over_memory_budget(method: str, elements: int, what: str, estimate: int,
                       budget: int, flag: str = "--max-request-memory-mb") -> Failure:
    scope = "per request" if flag == "--max-request-memory-mb" else "for all requests"
    return Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large",
        f"request over this server's memory budget: {method} of {elements} {what} needs up to "
        f"{estimate / 2**20:.0f} MiB, the budget is {budget / 2**20:.0f} MiB {scope} "
        f"({flag}); send a smaller input or use a server with a larger "
        "budget. The request was not started",
    )


def shutting_down() -> Failure:
    return Failure(
        grpc.StatusCode.UNAVAILABLE, "shutdown",
        "the server is shutting down and takes no new work; retry on another replica",
    )


def deadline(remaining: float, estimate: float, elements: int, samples: int) -> Failure:
    basis = (f"measured on {samples} recent request(s)" if samples
             else "from the prior, nothing measured yet")
    return Failure(
        grpc.StatusCode.DEADLINE_EXCEEDED, "deadline",
        f"deadline too short for this work: {remaining:.3f} s left, {elements} elements take "
        f"about {estimate:.3f} s on this server ({basis}); retry with a longer deadline. "
        "The request was not started",
    )


def classify(exc: BaseException) -> Failure:
    """Status, reason and message for an exception raised while serving a request."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, ReprocodecError):
        return Failure(grpc.StatusCode[exc.grpc_status], exc.reason, str(exc))
    try:  # safeguard may land after this module; its error means "not reproduced"
        from reprocodec.safeguard import SafeguardError
    except ImportError:  # pragma: no cover - safeguard is part of the core package
        SafeguardError = ()  # type: ignore[assignment]  # noqa: N806
    if SafeguardError and isinstance(exc, SafeguardError):
        return Failure(
            grpc.StatusCode.DATA_LOSS, "verification",
            f"safeguard could not reproduce the encoder's indices ({exc}). Either the stream "
            "was altered after encoding (its CRCs matched, so not by a transport error) or "
            "the decoder's numerics differ beyond the stream's error bound: check where the "
            "stream came from, or re-encode with a larger bound / decode on a calibrated "
            "profile",
        )
    log.exception("internal error while serving a request")
    return Failure(
        grpc.StatusCode.INTERNAL, "internal",
        f"internal error ({type(exc).__name__}); see the server log and report it",
    )
