"""Prometheus metrics of the encoder and decoder services.

The names and labels are a contract with the deployment's dashboards and alert rules
(deploy/): `METRIC_NAMES` lists exactly what a scrape exposes (tests/test_deploy.py checks the
dashboards against it). Each service process owns one registry, served on its own HTTP port
(--metrics-port), separate from the gRPC port.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

# The `_created` timestamp series double every scrape and no dashboard uses them.
disable_created_metrics()

# The metric families as a scrape shows them (counters get the `_total` suffix).
METRIC_NAMES = (
    "reprocodec_requests_total",
    "reprocodec_request_duration_seconds",
    "reprocodec_decode_failures_total",
    "reprocodec_safeguard_overhead_ratio",
    "reprocodec_safeguard_risky_elements",
    "reprocodec_safeguard_candidate_elements",
    "reprocodec_received_bytes_total",
    "reprocodec_sent_bytes_total",
    "reprocodec_in_flight_requests",
    "reprocodec_queued_requests",
    "reprocodec_queue_wait_seconds",
    "reprocodec_memory_reserved_bytes",
    "reprocodec_memory_pool_bytes",
    "reprocodec_build_info",
)

DECODE_FAILURE_REASONS = (
    "verification",
    "malformed",
    "model_mismatch",
    "unknown_model",
    "too_large",
    "bad_chunks",  # chunked upload: no total_bytes, a chunk missing or sent twice
    "chunk_too_large",  # one chunk over chunking.MAX_CHUNK_BYTES
    "deadline",
    "internal",
)

# Latency: a small image on a GPU takes ~10 ms, a large one on a CPU many seconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Queue wait: 0 when a worker is free (the first bucket), up to --max-queue-wait (30 s default).
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Protection bytes / payload bytes: typically 1e-3..1e-2; alerts fire well above that.
_RATIO_BUCKETS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Element counts per protected tensor and request: 0 matters (nothing was risky).
_COUNT_BUCKETS = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 100000, 1000000)


class ServiceMetrics:
    """All metrics of one service, labelled with its name ("encoder" | "decoder")."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if registry is None:
            # The standard process_* (CPU seconds, RSS, open fds) and python_* (GC, version)
            # families, which a custom registry does not get by itself.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        self.requests = Counter(
            "reprocodec_requests", "RPCs finished, by method and gRPC status code",
            ("service", "method", "code"), registry=r,
        )
        self.duration = Histogram(
            "reprocodec_request_duration_seconds", "RPC latency in the server",
            ("service", "method"), buckets=_DURATION_BUCKETS, registry=r,
        )
        self.decode_failures = Counter(
            "reprocodec_decode_failures", "Decodes that returned no output, by reason",
            ("service", "reason"), registry=r,
        )
        self.overhead_ratio = Histogram(
            "reprocodec_safeguard_overhead_ratio", "Safeguard protection bytes / payload bytes",
            ("service", "codec", "mode", "level", "model"), buckets=_RATIO_BUCKETS, registry=r,
        )
        self.risky = Histogram(
            "reprocodec_safeguard_risky_elements",
            "Elements within the error bound of a decision threshold, per protected tensor",
            ("service", "tensor"), buckets=_COUNT_BUCKETS, registry=r,
        )
        self.candidates = Histogram(
            "reprocodec_safeguard_candidate_elements",
            "Safeguard candidate elements (syndrome: the encoder's 2e zone), per tensor",
            ("service", "tensor"), buckets=_COUNT_BUCKETS, registry=r,
        )
        self.received_bytes = Counter(
            "reprocodec_received_bytes", "Request message bytes received",
            ("service", "method"), registry=r,
        )
        self.sent_bytes = Counter(
            "reprocodec_sent_bytes", "Response message bytes sent",
            ("service", "method"), registry=r,
        )
        self.in_flight = Gauge(
            "reprocodec_in_flight_requests", "Encode/decode RPCs being processed",
            ("service",), registry=r,
        )
        self.queued = Gauge(
            "reprocodec_queued_requests", "Encode/decode RPCs waiting for a worker",
            ("service",), registry=r,
        )
        self.queue_wait = Histogram(
            "reprocodec_queue_wait_seconds",
            "Time an encode/decode RPC waited for a worker (also when it was then refused); "
            "method: the unary name, the ...Stream twin counts under it",
            ("service", "method"), buckets=_WAIT_BUCKETS, registry=r,
        )
        self.memory_reserved = Gauge(
            "reprocodec_memory_reserved_bytes",
            "Memory estimates (--max-request-memory-mb's formula) of the running encodes/decodes",
            ("service",), registry=r,
        )
        self.memory_pool = Gauge(
            "reprocodec_memory_pool_bytes",
            "Memory the running encodes/decodes may reserve together (--max-memory-mb; 0: no "
            "shared limit)",
            ("service",), registry=r,
        )
        self.build_info = Gauge(
            "reprocodec_build_info", "Constant 1; the labels describe the running server",
            ("service", "version", "profile", "device"), registry=r,
        )
        # Series that dashboards divide by exist from the start (at 0), not only after a failure.
        for reason in DECODE_FAILURE_REASONS if service == "decoder" else ():
            self.decode_failures.labels(service, reason)
        self.in_flight.labels(service).set(0)
        self.queued.labels(service).set(0)
        self.memory_reserved.labels(service).set(0)
        self.memory_pool.labels(service).set(0)

    def set_build_info(self, version: str, profile: str, device: str) -> None:
        self.build_info.labels(self.service, version, profile, device).set(1)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(self.service, method, code).inc()
        self.duration.labels(self.service, method).observe(seconds)

    def observe_stream(self, stats) -> None:
        """Safeguard statistics of one encoded/decoded stream (a service_pb2.StreamStats)."""
        from reprocodec.v1 import bitstream_pb2

        codec = {
            bitstream_pb2.CODEC_KIND_IMAGE: "image",
            bitstream_pb2.CODEC_KIND_POINT_CLOUD: "point_cloud",
        }.get(stats.codec, "unknown")
        mode = mode_label(stats.mode)
        self.overhead_ratio.labels(self.service, codec, mode, level_label(stats),
                                   stats.model).observe(stats.overhead_ratio)
        for tensor in stats.tensors:
            self.risky.labels(self.service, tensor.name).observe(tensor.risky_count)
            self.candidates.labels(self.service, tensor.name).observe(tensor.candidate_count)

    def serve(self, port: int, host: str):
        """Start the HTTP exporter thread; returns (http server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)


def level_label(stats) -> str:
    """The levels a stream protects: decoding, reconstruction, both, or none."""
    from reprocodec.v1 import bitstream_pb2

    levels = {t.level for t in stats.tensors if t.mode != bitstream_pb2.SAFEGUARD_MODE_NONE}
    names = {bitstream_pb2.PROTECTION_LEVEL_DECODING: "decoding",
             bitstream_pb2.PROTECTION_LEVEL_RECONSTRUCTION: "reconstruction"}
    found = sorted(names[x] for x in levels if x in names)
    return "both" if len(found) == 2 else (found[0] if found else "none")


def mode_label(mode: int) -> str:
    """'syndrome' for SAFEGUARD_MODE_SYNDROME, etc. (the values of safeguard.Mode)."""
    from reprocodec.v1 import bitstream_pb2

    try:
        name = bitstream_pb2.SafeguardMode.Name(mode)
    except ValueError:  # a number from a newer contract
        return "unknown"
    return name.removeprefix("SAFEGUARD_MODE_").lower()
