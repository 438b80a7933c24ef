"""What every RPC of both services goes through: admission, deadline, errors, metrics, chunks.

A request is admitted only while fewer than --max-concurrency encode/decode requests are in
flight (else RESOURCE_EXHAUSTED at once: a queue would only turn overload into timeouts), and
only starts heavy work when its deadline leaves time for it (estimated from the server's own
recent seconds per pixel or point).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from reprocodec.client import chunking
from reprocodec.errors import InputError

from . import status
from .metrics import DECODE_FAILURE_REASONS, ServiceMetrics


@dataclass(frozen=True)
class ServeConfig:
    service: str  # "encoder" | "decoder"
    profile: str
    device: str
    max_concurrency: int = 4
    max_message_bytes: int = 64 << 20
    max_pixels: int = 50_000_000
    tls: bool = False
    auth: bool = False


class Admission:
    """At most `limit` heavy requests at once; the next one is refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise status.overloaded(self.limit)
        try:
            yield
        finally:
            self._slots.release()


class CostModel:
    """Seconds per element (pixel / point) of a method, as a running maximum-biased average.

    Used only to refuse work whose deadline is already too short; it starts at 0 (admit all),
    so the first request of each kind is never refused on a guess.
    """

    def __init__(self) -> None:
        self._per_element: dict[str, float] = {}
        self._lock = threading.Lock()

    def estimate(self, method: str, elements: int) -> float:
        return self._per_element.get(method, 0.0) * elements

    def observe(self, method: str, elements: int, seconds: float) -> None:
        if elements <= 0:
            return
        rate = seconds / elements
        with self._lock:
            old = self._per_element.get(method)
            # Half-way towards the new sample: adapts within a few requests to a loaded machine.
            self._per_element[method] = rate if old is None else 0.5 * (old + rate)


class ServiceCore:
    def __init__(self, config: ServeConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config.max_concurrency)
        self.costs = CostModel()
        self._count_decode_failures = config.service == "decoder"

    # -- per request -----------------------------------------------------------------------

    def check_deadline(self, context: grpc.ServicerContext, method: str, elements: int) -> float:
        """Refuse with DEADLINE_EXCEEDED when the time left cannot cover the work."""
        remaining = context.time_remaining()
        estimate = self.costs.estimate(method, elements)
        if remaining is not None and remaining < max(estimate, 1e-3):
            raise status.deadline(remaining, estimate)
        return time.perf_counter()

    def done(self, method: str, elements: int, started: float) -> None:
        self.costs.observe(method, elements, time.perf_counter() - started)

    def observe_stream(self, stats: Any) -> None:
        self.metrics.observe_stream(stats)

    # -- the two call shapes ---------------------------------------------------------------

    def unary(self, method: str, request: Message, context: grpc.ServicerContext,
              work: Callable[[Message, grpc.ServicerContext], Message],
              heavy: bool = True) -> Message:
        started = time.perf_counter()
        self.metrics.received_bytes.labels(self.config.service, method).inc(request.ByteSize())
        code = "OK"
        try:
            with self._admitted(heavy):
                response = work(request, context)
            self.metrics.sent_bytes.labels(self.config.service, method).inc(response.ByteSize())
            return response
        except Exception as exc:  # every failure becomes a status, a metric and a message
            failure = status.classify(exc)
            code = failure.code.name
            self._count_failure(failure)
            context.abort(failure.code, failure.message)
            raise  # unreachable: abort raises
        finally:
            self.metrics.observe_request(method, code, time.perf_counter() - started)

    def chunked(self, method: str, chunks: Iterable[Any], context: grpc.ServicerContext,
                request_type: type[Message],
                work: Callable[[Message, grpc.ServicerContext], Message]) -> Iterator[Any]:
        """The ...Stream twin: same request and response messages, cut into chunks."""
        started = time.perf_counter()
        code = "OK"
        try:
            with self._admitted(True):
                data = chunking.join(chunks, self.config.max_message_bytes)
                self.metrics.received_bytes.labels(self.config.service, method).inc(len(data))
                request = request_type()
                try:
                    request.ParseFromString(data)
                except DecodeError as exc:
                    raise InputError(
                        f"chunks do not form a {request_type.__name__}; send the serialized "
                        "request message cut into chunks"
                    ) from exc
                response = work(request, context).SerializeToString()
            self.metrics.sent_bytes.labels(self.config.service, method).inc(len(response))
            yield from chunking.split(response)
        except Exception as exc:
            failure = status.classify(exc)
            code = failure.code.name
            self._count_failure(failure)
            context.abort(failure.code, failure.message)
        finally:
            self.metrics.observe_request(method, code, time.perf_counter() - started)

    # -- helpers ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admitted(self, heavy: bool) -> Iterator[None]:
        if not heavy:
            yield
            return
        gauge = self.metrics.in_flight.labels(self.config.service)
        with self.admission.slot():
            gauge.inc()
            try:
                yield
            finally:
                gauge.dec()

    def _count_failure(self, failure: status.Failure) -> None:
        if self._count_decode_failures and failure.reason in DECODE_FAILURE_REASONS:
            self.metrics.decode_failures.labels(self.config.service, failure.reason).inc()
