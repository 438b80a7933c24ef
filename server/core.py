"""What every RPC of both services goes through: admission, deadline, cancellation, errors,
metrics, chunks.

A heavy request (encode/decode) goes through `ServiceCore.admitted` *after* its cheap
validation (image header, container framing, model and weights), so a malformed request is
INVALID_ARGUMENT / FAILED_PRECONDITION and never a deadline or overload refusal. Then:

1. **Deadline check.** `CostModel` estimates the work's seconds (fixed cost + per-element rate,
   robust, bounded: see its docstring). When the time left is below that estimate the request
   is refused with DEADLINE_EXCEEDED ("too short for this work") before it waits or runs.
2. **Wait queue.** At most `max_concurrency` requests run at once. Others wait, first come
   first served, in a queue of at most `queue_length`. RESOURCE_EXHAUSTED only when the queue
   is full, or the wait passed `max_queue_wait` seconds, or the deadline left after waiting no
   longer covers the estimate (the server was too busy for it). Queue time is the
   `reprocodec_queue_wait_seconds` histogram.
3. **Cancellation.** The running request carries a `reprocodec.cancel.CancelToken`, cancelled
   when the client cancels or its deadline passes and at shutdown (`ServiceCore.shutdown`).
   The codecs poll it (`reprocodec.cancel.check()`); the core polls it after the queue and
   after the work, so a request whose client is gone never answers OK.

Memory: before anything else, `admitted` refuses a request whose estimated extra memory
(`request_memory`: a documented fixed + per-pixel / per-point cost per method, an upper bound
of measurements) is over `max_request_memory` (--max-request-memory-mb) with
RESOURCE_EXHAUSTED, reason too_large; so the work of at most max_concurrency requests of at
most that much each runs at once. Messages held by requests: a unary request is fully
received by gRPC before its handler runs, a chunked one is joined before admission, so up to
(max_concurrency + queue_length + the server's extra threads) requests of at most
--max-message-mb each may be held at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from reprocodec import cancel, chunking
from reprocodec.errors import InputError

from . import allocator, status
from .metrics import DECODE_FAILURE_REASONS, ServiceMetrics

request_log = logging.getLogger("reprocodec.requests")
_CODEC_NAMES = {1: "image", 2: "point_cloud"}  # bitstream_pb2.CodecKind

# Defaults of the --queue-length / --max-queue-wait flags: 16 clients against the default
# 4 workers wait (12 queued) instead of being refused.
DEFAULT_QUEUE_LENGTH = 16
DEFAULT_MAX_QUEUE_WAIT = 30.0
# A call that ends this close to its deadline ended because of it: the server's copy of the
# deadline is later than the client's (gRPC starts it when the server parses the headers,
# which under CPU starvation was seen seconds after the client started its clock: the 16-client
# soak on one core counted 4 of 6 client deadlines as cancellations with a fixed 0.25 s). So
# the slack grows with the timeout: 0.25 s, or 10 % of the timeout when that is more.
_DEADLINE_SLACK = 0.25
_DEADLINE_SLACK_FRACTION = 0.1


def deadline_slack(timeout: float) -> float:
    return max(_DEADLINE_SLACK, _DEADLINE_SLACK_FRACTION * timeout)


# ------------------------------------------------------------------------ memory budget


@dataclass(frozen=True)
class MemoryCost:
    """Upper bound of the extra resident memory one request of a method takes:
    `fixed + per_element * elements` bytes (elements: pixels, points), over the server's
    resident size with its models loaded. Measured with `bench/memory.py --budget` (peak RSS
    of each call in a fresh process) and set above every measurement, see MEMORY_COSTS."""

    fixed: int
    per_element: float
    unit: str

    def estimate(self, elements: int) -> int:
        return int(self.fixed + self.per_element * max(elements, 0))


# Images (N=64, M=128 models): the full-size arrays are the float64 synthesis output and the
# safeguard's int64 pixel indices (8 bytes per pixel and channel each), the uint8 pixels, the
# PNG and the response; g_a and g_s run in tiles of fixed size (reprocodec/image/codec.py),
# which with the allocators' caches make the fixed part. Measured through the services'
# request handling (`bench/memory.py --service`, PNG in and out, bmshj2018 q3, syndrome,
# level both, profile cpu), extra peak MB encode / decode: 0.26 MP 294 / 277, 0.52 MP 368 /
# 361, 1.05 MP 434 / 426, 2.07 MP 529 / 535, 4.19 MP 585 / 555, 24 MP 1538 / 1427; the codec
# alone at 24 MP 1661 / 1484 (allocator noise is ~10 %); at 4.19 MP cpu-nomkldnn 636 / 560,
# mbt2018-mean 579 / 580, greyscale flags 517 / 503. Estimate: 553, 568, 600, 661, 789, 1977
# (at least 19 % above each).
# Point clouds: octree levels and per-node features, per input point; the worst case is the
# deepest octree (16). Measured at depth 16 (`bench/memory.py --clouds ... --depth 16`):
# 1M points 1277 / 680 MB, 3M points 3265 / 1584 MB (depth 10, 1M: 259 / 118); estimate
# 1503 / 818 and 3703 / 1918.
MEMORY_COSTS = {
    "EncodeImage": MemoryCost(fixed=512 << 20, per_element=60.0, unit="pixels"),
    "DecodeImage": MemoryCost(fixed=512 << 20, per_element=60.0, unit="pixels"),
    "EncodePointCloud": MemoryCost(fixed=384 << 20, per_element=1100.0, unit="points"),
    "DecodePointCloud": MemoryCost(fixed=256 << 20, per_element=550.0, unit="points"),
}
# Default of --max-request-memory-mb: a 50 MP image (the default --max-pixels) fits.
DEFAULT_MAX_REQUEST_MEMORY = 4096 << 20


# Default of --max-memory-mb: this share of the memory the process may use (its cgroup's limit
# in a container, else the machine's), leaving the rest to the resident models, the messages
# held and the allocator's slack.
MEMORY_POOL_SHARE = 0.75


def memory_available(cgroup: Path = Path("/sys/fs/cgroup"),
                     physical: int | None = None) -> int:
    """Bytes this process may use: the cgroup v2 (memory.max) or v1
    (memory/memory.limit_in_bytes) limit when there is one, else physical memory."""
    if physical is None:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (cgroup / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:  # "max" or v1's huge "no limit"
            return int(text)
    return physical


def request_memory(method: str, elements: int) -> int:
    """The memory budget check's estimate for one request, in bytes (0 for cheap methods)."""
    cost = MEMORY_COSTS.get(method.removesuffix("Stream"))
    return cost.estimate(elements) if cost else 0


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
    queue_length: int = DEFAULT_QUEUE_LENGTH
    max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT
    max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY  # bytes; see MEMORY_COSTS
    max_memory: int | None = None  # bytes all running requests share (None: no pool)
    trim_memory: bool = True  # malloc_trim once idle after requests (allocator.IdleTrim)
    trim_delay: float = allocator.DEFAULT_TRIM_DELAY  # ... for this many seconds


# ------------------------------------------------------------------------------ admission


class _Waiter:
    __slots__ = ("event", "granted", "memory")

    def __init__(self, memory: int = 0) -> None:
        self.event = threading.Event()
        self.granted = False
        self.memory = memory


class Admission:
    """`limit` slots, and a FIFO queue of at most `queue_length` requests waiting for one.

    `slot(...)` blocks until a slot is free, the queue wait passes `max_wait`, the time
    budget passes, or the request's cancel token is cancelled. Free slots are handed to the
    head of the queue directly, so a newcomer cannot overtake a waiting request.

    With `memory` (bytes, --max-memory-mb) the running requests also share one memory pool:
    a request holds its estimate (`request_memory`) while it runs, and the head of the queue
    starts only when a slot is free and the pool has room for it, so the process's work never
    needs more than the pool however large the requests that arrive together. Requests larger
    than the pool are refused before they queue (ServiceCore.check_memory).
    """

    # How often a waiter re-checks its token and budget: the longest a cancelled or timed-out
    # request keeps its place after the fact.
    POLL_SECONDS = 0.05

    def __init__(self, limit: int, queue_length: int = DEFAULT_QUEUE_LENGTH,
                 max_wait: float = DEFAULT_MAX_QUEUE_WAIT, memory: int | None = None) -> None:
        if limit < 1 or queue_length < 0 or max_wait < 0 or (memory is not None
                                                             and memory <= 0):
            raise ValueError("need limit >= 1, queue_length >= 0, max_wait >= 0, memory > 0")
        self.limit = limit
        self.queue_length = queue_length
        self.max_wait = max_wait
        self.memory = memory
        self._lock = threading.Lock()
        self._free = limit
        self._memory_free = memory
        self._queue: deque[_Waiter] = deque()
        self._closed = False

    @property
    def running(self) -> int:
        with self._lock:
            return self.limit - self._free

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def memory_held(self) -> int:
        """Bytes of the pool the running requests hold (0 without a pool)."""
        with self._lock:
            return 0 if self.memory is None else self.memory - self._memory_free

    def close(self) -> None:
        """Refuse every later request and wake the waiting ones (shutdown)."""
        with self._lock:
            self._closed = True
            waiters = list(self._queue)
        for w in waiters:
            w.event.set()

    def acquire(self, token: cancel.CancelToken | None = None,
                budget: float | None = None, memory: int = 0) -> float:
        """Wait for a slot (and `memory` bytes of the pool); returns the seconds waited.
        Raises status.Failure (queue full, waited too long, budget gone, server closing) or
        cancel.CancelledError. Release with the same `memory`."""
        if self.memory is not None and memory > self.memory:
            raise ValueError(f"{memory} bytes can never fit a pool of {self.memory}")
        started = time.monotonic()
        waiter = _Waiter(memory)
        with self._lock:
            if self._closed:
                raise status.shutting_down()
            if not self._queue and self._fits_locked(memory):
                self._take_locked(memory)
                return 0.0
            if len(self._queue) >= self.queue_length:
                raise status.queue_full(self.limit, self.queue_length)
            self._queue.append(waiter)
        limit = self.max_wait if budget is None else min(self.max_wait, max(budget, 0.0))
        try:
            while True:
                waited = time.monotonic() - started
                left = limit - waited
                if waiter.event.wait(min(self.POLL_SECONDS, max(left, 0.0))):
                    if waiter.granted:
                        return time.monotonic() - started
                    if self._closed:
                        raise status.shutting_down()
                if token is not None:
                    token.check()
                if time.monotonic() - started >= limit:
                    if budget is not None and budget < self.max_wait:
                        raise status.busy_past_deadline(time.monotonic() - started)
                    raise status.waited_too_long(time.monotonic() - started, self.max_wait)
        except BaseException:
            with self._lock:
                if waiter.granted:  # granted while giving up: pass the slot on
                    self._release_locked(memory)
                else:
                    self._queue.remove(waiter)
                    self._grant_locked()  # a head that waited for memory may leave room
            raise

    def release(self, memory: int = 0) -> None:
        with self._lock:
            self._release_locked(memory)

    def _fits_locked(self, memory: int) -> bool:
        return self._free > 0 and (self._memory_free is None or memory <= self._memory_free)

    def _take_locked(self, memory: int) -> None:
        self._free -= 1
        if self._memory_free is not None:
            self._memory_free -= memory

    def _release_locked(self, memory: int) -> None:
        self._free += 1
        if self._memory_free is not None:
            self._memory_free += memory
        self._grant_locked()

    def _grant_locked(self) -> None:
        """Start queued requests in order while the head fits (FIFO: a small request never
        overtakes a large head waiting for memory, so the large one cannot starve)."""
        while self._queue and self._fits_locked(self._queue[0].memory):
            waiter = self._queue.popleft()
            self._take_locked(waiter.memory)
            waiter.granted = True
            waiter.event.set()

    @contextlib.contextmanager
    def slot(self, token: cancel.CancelToken | None = None,
             budget: float | None = None, memory: int = 0) -> Iterator[float]:
        waited = self.acquire(token, budget, memory)
        try:
            yield waited
        finally:
            self.release(memory)


# ------------------------------------------------------------------------------ cost model


@dataclass(frozen=True)
class Prior:
    """Documented constants of one method's cost.

    `rate` (seconds per element) and `fixed` (seconds per request) are the estimate before
    anything was measured. They are optimistic on purpose (about GPU speed): the estimate only
    serves to refuse work that surely cannot finish, and a request admitted on too low an
    estimate is stopped at its deadline by cancellation, while one refused on too high an
    estimate is lost. `min_rate`/`max_rate` bound every measured rate: `max_rate` is about
    25x this project's 2-core CPU under load (README numbers), so no measurement can make the
    estimate of a normal request exceed what a very slow machine needs. `max_fixed` bounds the
    learned per-request cost likewise.
    """

    rate: float
    min_rate: float
    max_rate: float
    fixed: float = 0.005
    max_fixed: float = 1.0


# Measured on the 2-core CPU (README): image encode 0.30 s / decode 0.18 s per 768x512
# (0.76 / 0.46 us per pixel), point clouds 10.5-13.4 s per million points with one thread.
PRIORS = {
    "EncodeImage": Prior(rate=0.02e-6, min_rate=0.002e-6, max_rate=25e-6),
    "DecodeImage": Prior(rate=0.02e-6, min_rate=0.002e-6, max_rate=25e-6),
    "EncodePointCloud": Prior(rate=0.5e-6, min_rate=0.05e-6, max_rate=300e-6),
    "DecodePointCloud": Prior(rate=0.5e-6, min_rate=0.05e-6, max_rate=300e-6),
}
_DEFAULT_PRIOR = Prior(rate=0.02e-6, min_rate=0.002e-6, max_rate=300e-6)


class _Samples:
    """The recent samples of one quantity: at most `size`, none older than `max_age` s."""

    def __init__(self, size: int, max_age: float) -> None:
        self.size = size
        self.max_age = max_age
        self._items: deque[tuple[float, float]] = deque(maxlen=size)  # (time, value)

    def add(self, value: float, now: float) -> None:
        self._items.append((now, value))

    def values(self, now: float) -> list[float]:
        while self._items and now - self._items[0][0] > self.max_age:
            self._items.popleft()
        return [v for _, v in self._items]


def robust(values: list[float]) -> float:
    """The median once there are 3 samples; before, the smallest (an early outlier high
    cannot hold the estimate up: the next normal sample replaces it)."""
    return statistics.median(values) if len(values) >= 3 else min(values)


class CostModel:
    """Seconds a method's work takes: `fixed + rate * elements`, per method.

    - rate and fixed start at the method's `Prior` and are replaced by the robust value
      (`robust`: median of 3+, else the minimum) of recent successful requests;
    - samples expire after `max_age` seconds and at most `window` are kept, so the estimate
      follows the machine's load and returns to the prior when idle;
    - a request of fewer than `min_rate_elements` elements (a 1x1 image) teaches only the fixed
      cost, never the rate; a larger one teaches the rate (seconds - fixed) / elements;
    - every sample is clamped to the prior's bounds before it is stored.

    No sequence of requests can make the estimate of a request exceed
    `max_fixed + max_rate * elements`, and no single request moves a median of 3+ samples.
    """

    def __init__(self, priors: dict[str, Prior] | None = None, window: int = 31,
                 max_age: float = 300.0, min_rate_elements: int = 4096) -> None:
        self.priors = dict(PRIORS if priors is None else priors)
        self.window = window
        self.max_age = max_age
        self.min_rate_elements = min_rate_elements
        self._rates: dict[str, _Samples] = {}
        self._fixed: dict[str, _Samples] = {}
        self._lock = threading.Lock()

    def prior(self, method: str) -> Prior:
        return self.priors.get(method, _DEFAULT_PRIOR)

    def _samples(self, table: dict[str, _Samples], method: str) -> _Samples:
        samples = table.get(method)
        if samples is None:
            samples = table[method] = _Samples(self.window, self.max_age)
        return samples

    def parameters(self, method: str, now: float | None = None) -> tuple[float, float, int]:
        """(fixed seconds, seconds per element, rate samples behind it)."""
        now = time.monotonic() if now is None else now
        p = self.prior(method)
        with self._lock:
            fixed = self._samples(self._fixed, method).values(now)
            rates = self._samples(self._rates, method).values(now)
        return (robust(fixed) if fixed else p.fixed, robust(rates) if rates else p.rate,
                len(rates))

    def estimate(self, method: str, elements: int, now: float | None = None) -> float:
        fixed, rate, _ = self.parameters(method, now)
        return fixed + rate * max(elements, 0)

    def observe(self, method: str, elements: int, seconds: float,
                now: float | None = None) -> None:
        """One successful request's work time (queue wait excluded)."""
        if seconds < 0 or seconds != seconds:  # negative or NaN: a clock problem, ignore
            return
        now = time.monotonic() if now is None else now
        p = self.prior(method)
        if elements < self.min_rate_elements:
            with self._lock:
                self._samples(self._fixed, method).add(min(seconds, p.max_fixed), now)
            return
        fixed, _, _ = self.parameters(method, now)
        rate = max(seconds - fixed, 0.0) / elements
        with self._lock:
            self._samples(self._rates, method).add(min(max(rate, p.min_rate), p.max_rate), now)


# ------------------------------------------------------------------------------ the core


class ServiceCore:
    def __init__(self, config: ServeConfig, metrics: ServiceMetrics,
                 costs: CostModel | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config.max_concurrency, config.queue_length,
                                   config.max_queue_wait, config.max_memory)
        self.costs = costs if costs is not None else CostModel()
        metrics.memory_pool.labels(config.service).set(config.max_memory or 0)
        # Read under the pool's lock at each scrape: always the current value, never one that
        # a request setting it after its release could leave a request old.
        metrics.memory_reserved.labels(config.service).set_function(
            lambda: self.admission.memory_held)
        self._count_decode_failures = config.service == "decoder"
        self._tokens: set[cancel.CancelToken] = set()
        self._tokens_lock = threading.Lock()
        self._stopping = False  # SIGTERM received: calls that end now end for shutdown
        self._closed = False  # shutdown(): cancel everything, admit nothing
        # The requests' buffers go back to the OS once the service is idle (allocator.py)
        self._idle_trim = allocator.IdleTrim(config.trim_delay) if config.trim_memory else None

    # -- per request -----------------------------------------------------------------------

    @contextlib.contextmanager
    def admitted(self, context: grpc.ServicerContext, method: str,
                 elements: int) -> Iterator[cancel.CancelToken]:
        """Deadline check, queue, then run the block with the request's cancel token current.

        Call it after the request's cheap validation, with the number of elements (pixels,
        points) the work is about. The block's time teaches the cost model when it succeeds.
        """
        memory = self.check_memory(method, elements)
        token = self._token(context)
        remaining = token.remaining()
        estimate = self.costs.estimate(method, elements)
        if remaining is not None and remaining < estimate:
            _, _, samples = self.costs.parameters(method)
            raise status.deadline(remaining, estimate, elements, samples)
        budget = None if remaining is None else remaining - estimate
        service = self.config.service
        queued = self.metrics.queued.labels(service)
        queued.inc()
        arrived = time.monotonic()
        try:
            self.admission.acquire(token, budget, memory)
        finally:  # refused or cancelled requests count with the time they waited, too
            queued.dec()
            self.metrics.queue_wait.labels(service, method).observe(time.monotonic() - arrived)
        gauge = self.metrics.in_flight.labels(service)
        gauge.inc()
        self._register(token)
        if self._idle_trim is not None:
            self._idle_trim.begin()
        try:
            token.check()  # cancelled while it waited
            started = time.perf_counter()
            with cancel.using(token):
                yield token
            token.check()  # the client is gone: do not answer OK to nobody
            self.costs.observe(method, elements, time.perf_counter() - started)
        finally:
            self._unregister(token)
            gauge.dec()
            self.admission.release(memory)
            # The request's buffers are free now: their pages go back to the OS once the
            # service has been idle a moment (at once after a large request), so that RSS is
            # not the high-water mark of every arena, while back-to-back small requests reuse
            # them (allocator.IdleTrim).
            if self._idle_trim is not None:
                self._idle_trim.end(large=memory >= allocator.TRIM_AFTER_BYTES)

    def check_memory(self, method: str, elements: int) -> int:
        """The request's memory estimate (`request_memory`); refuses it (RESOURCE_EXHAUSTED,
        reason too_large) before it waits or allocates when the estimate is over
        --max-request-memory-mb or over the whole pool (--max-memory-mb)."""
        estimate = request_memory(method, elements)
        budget, flag = self.config.max_request_memory, "--max-request-memory-mb"
        if self.config.max_memory is not None and self.config.max_memory < budget:
            budget, flag = self.config.max_memory, "--max-memory-mb"
        if estimate > budget:
            unit = MEMORY_COSTS[method.removesuffix("Stream")].unit
            raise status.over_memory_budget(method, elements, unit, estimate, budget, flag)
        return estimate

    def observe_stream(self, stats: Any) -> None:
        self.metrics.observe_stream(stats)

    # -- shutdown --------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """SIGTERM: nothing is cancelled yet (in-flight calls get the shutdown grace), but a
        call gRPC aborts from now on is reported as stopped for shutdown."""
        self._stopping = True

    def shutdown(self) -> int:
        """Cancel every running and waiting request (reason "shutdown") and refuse new ones;
        returns how many running requests were cancelled."""
        self._stopping = self._closed = True
        self.admission.close()
        if self._idle_trim is not None:
            self._idle_trim.close()
        with self._tokens_lock:
            tokens = list(self._tokens)
        return sum(t.cancel("shutdown") for t in tokens)

    def in_flight(self) -> int:
        return self.admission.running

    def _token(self, context: grpc.ServicerContext) -> cancel.CancelToken:
        remaining = context.time_remaining()
        # gRPC reports a huge number (not None) for calls without a deadline.
        deadline = (None if remaining is None or remaining > 1e8
                    else time.monotonic() + remaining)
        token = cancel.CancelToken(deadline)
        slack = deadline_slack(remaining) if deadline is not None else 0.0

        def terminated() -> None:  # gRPC: the RPC ended (cancelled, deadline, or answered)
            if self._stopping:
                token.cancel("shutdown")
            elif (token.deadline is not None
                  and time.monotonic() >= token.deadline - slack):
                token.cancel("deadline")
            else:
                token.cancel("cancelled")

        if not context.add_callback(terminated):  # already terminated
            terminated()
        return token

    def _register(self, token: cancel.CancelToken) -> None:
        with self._tokens_lock:
            self._tokens.add(token)
        if self._closed:
            token.cancel("shutdown")

    def _unregister(self, token: cancel.CancelToken) -> None:
        with self._tokens_lock:
            self._tokens.discard(token)

    # -- the two call shapes ---------------------------------------------------------------

    def unary(self, method: str, request: Message, context: grpc.ServicerContext,
              work: Callable[[Message, grpc.ServicerContext], Message]) -> Message:
        started = time.perf_counter()
        self.metrics.received_bytes.labels(self.config.service, method).inc(request.ByteSize())
        code, reason, response = "OK", "", None
        try:
            response = work(request, context)
            self.metrics.sent_bytes.labels(self.config.service, method).inc(response.ByteSize())
            return response
        except Exception as exc:  # every failure becomes a status, a metric and a message
            failure = status.classify(exc)
            code, reason = failure.code.name, failure.reason
            self._count_failure(failure)
            context.abort(failure.code, failure.message)
            raise  # unreachable: abort raises
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe_request(method, code, seconds)
            self._log_request(context, method, request.ByteSize(), response, code, reason,
                              seconds)

    def chunked(self, method: str, chunks: Iterable[Any], context: grpc.ServicerContext,
                request_type: type[Message],
                work: Callable[[Message, grpc.ServicerContext], Message]) -> Iterator[Any]:
        """The ...Stream twin: same request and response messages, cut into chunks."""
        started = time.perf_counter()
        code, reason, response_message, size_in = "OK", "", None, 0
        try:
            data = chunking.join(chunks, self.config.max_message_bytes)
            size_in = len(data)
            self.metrics.received_bytes.labels(self.config.service, method).inc(len(data))
            request = request_type()
            try:
                request.ParseFromString(data)
            except DecodeError as exc:
                raise InputError(
                    f"chunks do not form a {request_type.__name__}; send the serialized "
                    "request message cut into chunks"
                ) from exc
            del data
            response_message = work(request, context)
            response = response_message.SerializeToString()
            self.metrics.sent_bytes.labels(self.config.service, method).inc(len(response))
            yield from chunking.split(response)
        except Exception as exc:
            failure = status.classify(exc)
            code, reason = failure.code.name, failure.reason
            self._count_failure(failure)
            context.abort(failure.code, failure.message)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe_request(method, code, seconds)
            self._log_request(context, method, size_in, response_message, code, reason, seconds)

    # -- helpers ---------------------------------------------------------------------------

    def _log_request(self, context: grpc.ServicerContext, method: str, bytes_in: int,
                     response: Message | None, code: str, reason: str, seconds: float) -> None:
        """One structured line per request (logger reprocodec.requests, INFO; failures WARNING):
        request id (the client's x-request-id metadata, else generated), method, model,
        codec, bytes in/out, protection bytes, status, reason, milliseconds."""
        if not request_log.isEnabledFor(logging.INFO):
            return
        metadata = dict(context.invocation_metadata() or ())
        stats = getattr(response, "stats", None) if response is not None else None
        record = {
            "request_id": metadata.get("x-request-id") or uuid.uuid4().hex[:16],
            "service": self.config.service, "method": method,
            "model": getattr(stats, "model", "") or "",
            "codec": _CODEC_NAMES.get(getattr(stats, "codec", 0), ""),
            "bytes_in": bytes_in, "bytes_out": response.ByteSize() if response is not None else 0,
            "protection_bytes": int(getattr(stats, "protection_bytes", 0) or 0),
            "status": code, "reason": reason, "ms": round(seconds * 1000, 1),
        }
        level = logging.INFO if code == "OK" else logging.WARNING
        request_log.log(level, json.dumps(record, sort_keys=True), extra={"request": record})

    def _count_failure(self, failure: status.Failure) -> None:
        if self._count_decode_failures and failure.reason in DECODE_FAILURE_REASONS:
            self.metrics.decode_failures.labels(self.config.service, failure.reason).inc()
