"""Services under pressure, at the level of server/core.py (no codec, no child process):

- the cost model cannot be poisoned (1x1 then 768x512, outliers, any sequence stays bounded);
- the wait queue: 16 clients against 4 workers queue, a full queue and a long wait refuse;
- cooperative cancellation: a deadline, a client cancel and shutdown stop polling work, and a
  request cancelled while queued gives its place up;
- chunked-upload errors and cancellation map to their own statuses and reasons.

The gRPC tests run a real in-process gRPC server on loopback whose handler is
`ServiceCore.unary` around a work function that polls `reprocodec.cancel.check()`, as the
codecs do between their stages.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from reprocodec import cancel, chunking
from reprocodec.server import status
from reprocodec.server.core import (
    DEFAULT_QUEUE_LENGTH,
    MEMORY_POOL_SHARE,
    PRIORS,
    Admission,
    CostModel,
    ServeConfig,
    ServiceCore,
    memory_available,
)
from reprocodec.server.main import memory_pool
from reprocodec.server.metrics import ServiceMetrics
from reprocodec.v1 import service_pb2

KODAK = 768 * 512


# ------------------------------------------------------------------------ the cost model


def test_one_tiny_image_cannot_poison_the_estimate():
    """The reported sequence: a 1x1 image, then every 768x512 image was refused ("about
    4,881 s"). The 1x1 teaches only the fixed cost."""
    costs = CostModel()
    costs.observe("EncodeImage", 1, 0.0124)  # 1x1 encode: 12 ms, all fixed cost
    assert costs.estimate("EncodeImage", KODAK) < 0.1  # was 0.0124 * 393216 = 4,881 s
    for _ in range(50):  # a flood of tiny slow requests moves only the bounded fixed cost
        costs.observe("EncodeImage", 1, 30.0)
    prior = PRIORS["EncodeImage"]
    assert costs.estimate("EncodeImage", KODAK) <= prior.max_fixed + prior.rate * KODAK
    # Normal requests keep completing and teach the real rate.
    costs = CostModel()
    costs.observe("EncodeImage", 1, 0.0124)
    for _ in range(5):
        costs.observe("EncodeImage", KODAK, 0.30)
    assert costs.estimate("EncodeImage", KODAK) == pytest.approx(0.30, rel=0.05)


def test_one_outlier_never_drives_the_estimate():
    costs = CostModel()
    costs.observe("DecodeImage", KODAK, 60.0)  # a cold start that took a minute
    costs.observe("DecodeImage", KODAK, 0.2)
    assert costs.estimate("DecodeImage", KODAK) == pytest.approx(0.2, rel=0.05)
    for _ in range(4):
        costs.observe("DecodeImage", KODAK, 0.2)
    costs.observe("DecodeImage", KODAK, 500.0)  # one huge outlier among normal requests
    assert costs.estimate("DecodeImage", KODAK) == pytest.approx(0.2, rel=0.05)


def test_no_sequence_pushes_an_estimate_past_its_bound():
    rng = np.random.default_rng(17)
    costs = CostModel()
    for _ in range(2000):
        method = str(rng.choice(sorted(PRIORS)))
        elements = int(rng.choice([1, 3, 4095, 4096, 10**5, 10**7]))
        costs.observe(method, elements, float(rng.choice([0.0, 1e-3, 1.0, 1e3, 1e9])))
        for n in (1, KODAK, 50_000_000):
            p = PRIORS[method]
            assert 0 < costs.estimate(method, n) <= p.max_fixed + p.max_rate * n
    costs.observe("EncodeImage", KODAK, float("nan"))  # ignored, not stored
    costs.observe("EncodeImage", KODAK, -1.0)
    assert np.isfinite(costs.estimate("EncodeImage", KODAK))


def test_estimates_decay_back_to_the_prior():
    costs = CostModel(max_age=60.0)
    for _ in range(5):
        costs.observe("EncodePointCloud", 10**6, 100.0, now=1000.0)  # a very loaded minute
    assert costs.estimate("EncodePointCloud", 10**6, now=1001.0) > 50
    p = PRIORS["EncodePointCloud"]
    assert costs.estimate("EncodePointCloud", 10**6, now=1061.0) == pytest.approx(
        p.fixed + p.rate * 10**6)


def test_the_first_request_has_a_nonzero_prior():
    costs = CostModel()
    for method in PRIORS:
        assert costs.estimate(method, 10**7) > 0


# ---------------------------------------------------------------------------- the queue


def _hold(admission: Admission, results: list, release: threading.Event, name: str,
          token: cancel.CancelToken | None = None, budget: float | None = None,
          memory: int = 0) -> None:
    try:
        admission.acquire(token, budget, memory)
    except (status.Failure, cancel.CancelledError) as exc:
        results.append((name, exc))
        return
    results.append((name, "ran"))
    release.wait(10)
    admission.release(memory)


def _start(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_sixteen_clients_against_four_workers_queue_rather_than_refuse():
    admission = Admission(4)  # the defaults: --max-concurrency 4, --queue-length 16
    assert admission.queue_length == DEFAULT_QUEUE_LENGTH >= 12
    running, peak, refused = [0], [0], []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(3):
            try:
                with admission.slot():
                    with lock:
                        running[0] += 1
                        peak[0] = max(peak[0], running[0])
                    time.sleep(0.02)
                    with lock:
                        running[0] -= 1
            except status.Failure as exc:
                refused.append(exc)

    threads = [_start(client) for _ in range(16)]
    for t in threads:
        t.join(30)
    assert refused == []
    assert peak[0] == 4  # never more than the workers at once
    assert admission.running == 0 and admission.waiting == 0


def test_queue_is_fifo_and_refuses_only_when_full():
    admission = Admission(1, queue_length=2, max_wait=10)
    results: list = []
    release = [threading.Event() for _ in range(4)]
    _start(_hold, admission, results, release[0], "A")
    assert _until(lambda: results == [("A", "ran")])
    _start(_hold, admission, results, release[1], "B")
    assert _until(lambda: admission.waiting == 1)
    _start(_hold, admission, results, release[2], "C")
    assert _until(lambda: admission.waiting == 2)
    _hold(admission, results, release[3], "D")  # queue full: refused at once
    name, exc = results[-1]
    assert name == "D" and exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in exc.message and "--queue-length" in exc.message
    release[0].set()
    assert _until(lambda: ("B", "ran") in results)
    assert ("C", "ran") not in results  # B came first
    release[1].set()
    assert _until(lambda: ("C", "ran") in results)
    release[2].set()
    assert _until(lambda: admission.running == 0)


def test_queue_wait_limit_and_deadline_budget_refuse_with_resource_exhausted():
    admission = Admission(1, queue_length=4, max_wait=0.3)
    hold = threading.Event()
    results: list = []
    _start(_hold, admission, results, hold, "A")
    assert _until(lambda: results == [("A", "ran")])
    started = time.monotonic()
    _hold(admission, results, threading.Event(), "B")
    assert 0.25 <= time.monotonic() - started < 3
    assert results[-1][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-queue-wait" in results[-1][1].message
    _hold(admission, results, threading.Event(), "C", budget=0.1)  # deadline - estimate
    assert results[-1][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deadline no longer covers" in results[-1][1].message
    assert admission.waiting == 0
    hold.set()
    assert _until(lambda: admission.running == 0)


def test_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on():
    admission = Admission(1, queue_length=4, max_wait=10)
    results: list = []
    hold, later = threading.Event(), threading.Event()
    _start(_hold, admission, results, hold, "A")
    assert _until(lambda: results == [("A", "ran")])
    token = cancel.CancelToken()
    _start(_hold, admission, results, threading.Event(), "B", token)
    assert _until(lambda: admission.waiting == 1)
    _start(_hold, admission, results, later, "C")
    assert _until(lambda: admission.waiting == 2)
    token.cancel("cancelled")
    assert _until(lambda: any(n == "B" for n, _ in results))
    assert isinstance(dict(results)["B"], cancel.CancelledError)
    assert admission.waiting == 1
    hold.set()  # A's slot goes to C, not to the cancelled B
    assert _until(lambda: ("C", "ran") in results)
    later.set()
    assert _until(lambda: admission.running == 0 and admission.waiting == 0)


# ----------------------------------------------------------------------- cancel tokens


def test_the_memory_pool_queues_what_does_not_fit_in_order():
    # 4 workers but a pool of 10 units: two 6-unit requests never run together; a small
    # request behind a waiting large one waits too (FIFO), so the large one cannot starve.
    admission = Admission(4, queue_length=8, max_wait=10, memory=10)
    results: list = []
    release = {name: threading.Event() for name in "ABCD"}
    _start(_hold, admission, results, release["A"], "A", None, None, 6)
    assert _until(lambda: results == [("A", "ran")])
    assert admission.memory_held == 6
    _start(_hold, admission, results, release["B"], "B", None, None, 6)
    assert _until(lambda: admission.waiting == 1)
    _start(_hold, admission, results, release["C"], "C", None, None, 1)
    assert _until(lambda: admission.waiting == 2)
    time.sleep(0.2)
    assert [n for n, _ in results] == ["A"]  # C fits the pool but is behind B
    release["A"].set()
    # B and C start together (6 + 1 <= 10), so their threads may record in either order.
    assert _until(lambda: sorted(n for n, _ in results) == ["A", "B", "C"])
    assert admission.memory_held == 7 and admission.running == 2
    _start(_hold, admission, results, release["D"], "D", None, None, 3)  # 7 + 3 fits at once
    assert _until(lambda: ("D", "ran") in results)
    assert admission.memory_held == 10
    for event in release.values():
        event.set()
    assert _until(lambda: admission.running == 0)
    assert admission.memory_held == 0 and admission.waiting == 0
    with pytest.raises(ValueError):
        admission.acquire(memory=11)  # the service refuses these before (check_memory)


def test_a_large_head_that_gives_up_lets_the_requests_behind_it_start():
    admission = Admission(4, queue_length=8, max_wait=10, memory=10)
    results: list = []
    hold = threading.Event()
    _start(_hold, admission, results, hold, "A", None, None, 8)
    assert _until(lambda: results == [("A", "ran")])
    token = cancel.CancelToken()
    _start(_hold, admission, results, threading.Event(), "B", token, None, 5)
    assert _until(lambda: admission.waiting == 1)
    _start(_hold, admission, results, hold, "C", None, None, 2)
    assert _until(lambda: admission.waiting == 2)
    token.cancel("cancelled")  # B leaves; C (2 units) fits beside A at once
    assert _until(lambda: ("C", "ran") in results)
    hold.set()
    assert _until(lambda: admission.running == 0 and admission.memory_held == 0)


def test_memory_pool_default_follows_the_cgroup_limit(tmp_path):
    physical = 64 << 30
    assert memory_available(tmp_path, physical) == physical  # no cgroup files
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit
    assert memory_available(tmp_path, physical) == physical
    (tmp_path / "memory.max").write_text(f"{8 << 30}\n")
    assert memory_available(tmp_path, physical) == 8 << 30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert memory_available(v1, physical) == physical
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    assert memory_available(v1, physical) == 4 << 30
    assert memory_pool(0) is None and memory_pool(1024) == 1 << 30
    assert memory_pool(None) == int(MEMORY_POOL_SHARE * memory_available())


def test_token_check_deadline_and_context():
    cancel.check()  # no token outside a request: a no-op
    token = cancel.CancelToken(deadline=time.monotonic() + 0.05)
    with cancel.using(token):
        cancel.check()
        time.sleep(0.08)
        with pytest.raises(cancel.CancelledError) as info:
            cancel.check()
    assert info.value.reason == "deadline" and info.value.grpc_status == "DEADLINE_EXCEEDED"
    assert cancel.current() is None
    token = cancel.CancelToken()
    seen = []
    token.on_cancel(lambda: seen.append(1))
    assert token.cancel("shutdown") and not token.cancel("cancelled")  # first reason stays
    assert token.reason == "shutdown" and seen == [1]
    with pytest.raises(cancel.CancelledError):
        token.check()


@pytest.mark.parametrize(("reason", "code"), [
    ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED),
    ("cancelled", grpc.StatusCode.CANCELLED),
    ("shutdown", grpc.StatusCode.UNAVAILABLE),
])
def test_cancelled_error_statuses(reason, code):
    failure = status.classify(cancel.CancelledError(reason))
    assert (failure.code, failure.reason) == (code, reason)
    assert len(failure.message) > 30


# --------------------------------------------------------------------- chunk errors


def _chunks(*parts: tuple[bytes, int]) -> list[service_pb2.Chunk]:
    return [service_pb2.Chunk(data=d, total_bytes=t) for d, t in parts]


@pytest.mark.parametrize(("chunks", "code", "reason", "words"), [
    (_chunks((b"a" * 10, 30), (b"b" * 10, 0)), "INVALID_ARGUMENT", "bad_chunks", "missing"),
    (_chunks((b"a" * 10, 20), (b"b" * 10, 0), (b"b" * 10, 0)), "INVALID_ARGUMENT",
     "bad_chunks", "sent twice"),
    (_chunks((b"a" * 10, 0), (b"b" * 10, 0)), "INVALID_ARGUMENT", "bad_chunks",
     "total_bytes"),
    ([], "INVALID_ARGUMENT", "bad_chunks", "no chunks"),
    (_chunks((bytes(chunking.MAX_CHUNK_BYTES + 1), chunking.MAX_CHUNK_BYTES + 1)),
     "RESOURCE_EXHAUSTED", "chunk_too_large", "MiB"),
    (_chunks((b"a", 10 << 20)), "RESOURCE_EXHAUSTED", "too_large", "--max-message-mb"),
])
def test_chunk_errors_have_their_own_status_and_reason(chunks, code, reason, words):
    with pytest.raises(Exception) as info:
        chunking.join(iter(chunks), limit=8 << 20)
    failure = status.classify(info.value)
    assert (failure.code.name, failure.reason) == (code, reason)
    assert words in failure.message


def test_good_chunks_and_the_empty_message_still_join():
    data = np.random.default_rng(1).bytes(3 * chunking.CHUNK_BYTES + 5)
    assert chunking.join(chunking.split(data), limit=len(data)) == data
    assert chunking.join(chunking.split(b"")) == b""


# --------------------------------------------------- a real gRPC server around the core

_METHOD = "/reprocodec.test.Work/Run"


class _Harness:
    """ServiceCore + in-process gRPC server. A request is a Chunk: total_bytes = elements,
    data = b"loop" (work polls cancel.check() until released) or b"quick"."""

    def __init__(self, **config) -> None:
        self.metrics = ServiceMetrics("decoder")
        self.core = ServiceCore(ServeConfig("decoder", "cpu", "cpu", **config), self.metrics)
        self.release = threading.Event()
        self.started = threading.Event()
        self.stopped: list[tuple[str, float]] = []  # (reason, monotonic time)
        handler = grpc.method_handlers_generic_handler("reprocodec.test.Work", {
            "Run": grpc.unary_unary_rpc_method_handler(
                self._run, request_deserializer=service_pb2.Chunk.FromString,
                response_serializer=service_pb2.Chunk.SerializeToString)})
        self.handlers = futures.ThreadPoolExecutor(16)
        self.server = grpc.server(self.handlers, handlers=[handler])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.call = self.channel.unary_unary(
            _METHOD, request_serializer=service_pb2.Chunk.SerializeToString,
            response_deserializer=service_pb2.Chunk.FromString)

    def _run(self, request, context):
        return self.core.unary("DecodeImage", request, context, self._work)

    def _work(self, request, context):
        with self.core.admitted(context, "DecodeImage", int(request.total_bytes)):
            if request.data == b"loop":
                self.started.set()
                try:
                    while not self.release.is_set():
                        cancel.check()  # what a codec does between its stages
                        time.sleep(0.01)
                except cancel.CancelledError as exc:
                    self.stopped.append((exc.reason, time.monotonic()))
                    raise
        return service_pb2.Chunk(data=b"done")

    def count(self, code: str) -> float:
        return self.metrics.registry.get_sample_value(
            "reprocodec_requests_total",
            {"service": "decoder", "method": "DecodeImage", "code": code}) or 0.0

    def close(self) -> None:
        self.release.set()
        self.channel.close()
        self.server.stop(None).wait()
        # A cancelled call's handler still logs its request after the client has its status:
        # let it finish while the test's log capture is open (it logged to a closed stream)
        self.handlers.shutdown(wait=True)


@pytest.fixture
def harness():
    h = _Harness(max_concurrency=1, queue_length=4, max_queue_wait=10)
    yield h
    h.close()


def test_work_stops_within_a_second_of_the_deadline(harness):
    sent = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        harness.call(service_pb2.Chunk(data=b"loop", total_bytes=100), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _until(lambda: harness.stopped, timeout=3)
    reason, when = harness.stopped[0]
    assert reason == "deadline" and when - sent < 1.5  # deadline 0.5 s + at most ~1 s
    assert _until(lambda: harness.count("DEADLINE_EXCEEDED") == 1)
    assert harness.metrics.registry.get_sample_value(
        "reprocodec_decode_failures_total", {"service": "decoder", "reason": "deadline"}) == 1
    assert harness.core.in_flight() == 0
    assert harness.call(service_pb2.Chunk(data=b"quick", total_bytes=100),
                        timeout=5).data == b"done"  # the slot was given back


def test_client_cancel_stops_the_work(harness):
    future = harness.call.future(service_pb2.Chunk(data=b"loop", total_bytes=100), timeout=30)
    assert harness.started.wait(10)
    cancelled_at = time.monotonic()
    future.cancel()
    assert _until(lambda: harness.stopped, timeout=3)
    reason, when = harness.stopped[0]
    assert reason == "cancelled" and when - cancelled_at < 1.0
    assert _until(lambda: harness.core.in_flight() == 0)


def test_a_request_cancelled_in_the_queue_never_runs(harness):
    blocker = harness.call.future(service_pb2.Chunk(data=b"loop", total_bytes=100), timeout=30)
    assert harness.started.wait(10)
    waiting = harness.call.future(service_pb2.Chunk(data=b"quick", total_bytes=100), timeout=30)
    assert _until(lambda: harness.core.admission.waiting == 1)
    assert harness.metrics.registry.get_sample_value(
        "reprocodec_queued_requests", {"service": "decoder"}) == 1
    waiting.cancel()
    assert _until(lambda: harness.core.admission.waiting == 0, timeout=2)
    harness.release.set()
    assert blocker.result(10).data == b"done"
    wait_count = harness.metrics.registry.get_sample_value(
        "reprocodec_queue_wait_seconds_count", {"service": "decoder", "method": "DecodeImage"})
    assert wait_count == 2  # the blocker (0 s) and the cancelled waiter
    assert harness.count("OK") == 1


def test_deadline_too_short_is_told_apart_from_malformed(harness):
    # 50 M elements at the prior's rate (1 s) cannot fit in 0.3 s: refused before it waits.
    with pytest.raises(grpc.RpcError) as info:
        harness.call(service_pb2.Chunk(data=b"quick", total_bytes=50_000_000), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "too short for this work" in info.value.details()
    assert "not started" in info.value.details()


def test_shutdown_cancels_running_work_and_refuses_new(harness):
    future = harness.call.future(service_pb2.Chunk(data=b"loop", total_bytes=100), timeout=30)
    assert harness.started.wait(10)
    assert harness.core.shutdown() == 1
    with pytest.raises(grpc.RpcError) as info:
        future.result(5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert harness.stopped[0][0] == "shutdown"
    with pytest.raises(grpc.RpcError) as info:
        harness.call(service_pb2.Chunk(data=b"quick", total_bytes=100), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in info.value.details()


# ------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("argv", [
    ["--queue-length", "-1"],
    ["--max-queue-wait", "-1"],
    ["--cancel-wait", "-1"],
    ["--max-memory-mb", "-1"],
])
def test_bad_queue_and_shutdown_flags_are_usage_errors(argv, capsys):
    from reprocodec.server.main import serve

    with pytest.raises(SystemExit) as info:
        serve("encoder", argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_queue_flag_defaults():
    from reprocodec.server.main import build_parser

    args = build_parser("decoder").parse_args([])
    assert (args.max_concurrency, args.queue_length, args.max_queue_wait) == (4, 16, 30.0)
    args = build_parser("decoder").parse_args(["--queue-length", "0"])  # refuse at once
    assert args.queue_length == 0
    admission = Admission(1, queue_length=0)
    admission.acquire()
    with pytest.raises(status.Failure, match="queue is full"):
        admission.acquire()
    admission.release()


def test_deadline_slack_grows_with_the_timeout():
    """A client's cancel at its own deadline reaches a starved server before the server's copy
    of the deadline (which starts when the server reads the headers): counted as a deadline."""
    from reprocodec.server.core import deadline_slack

    assert deadline_slack(0.5) == 0.25 and deadline_slack(2.5) == 0.25
    assert deadline_slack(120.0) == pytest.approx(12.0)
