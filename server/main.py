"""Entry points `reprocodec-encoder` and `reprocodec-decoder`.

    reprocodec-encoder --port 50051 --metrics-port 9101 --profile cpu
    reprocodec-decoder --port 50052 --metrics-port 9102 --profile cpu-nomkldnn

One process runs one service under one numerics profile (profiles are process-global). On
start it lists and loads its models, then reports SERVING on grpc.health.v1 and prints a
`READY ...` line with the bound addresses (ports may be 0: the OS picks). On SIGTERM/SIGINT it
reports NOT_SERVING first, waits --drain-seconds for load balancers to notice, stops accepting
calls, lets in-flight calls finish (up to --shutdown-grace seconds), then cancels what still
runs (the codecs stop at their next cancellation check; the callers get UNAVAILABLE) and exits
0. Work that ignores cancellation for another --cancel-wait seconds is abandoned: the process
exits anyway (status 0, with a warning in the log) instead of blocking its own shutdown. The
exit itself is bounded too: EXIT_SLACK seconds past those steps it happens whatever holds it.
"""

from __future__ import annotations

import argparse
import faulthandler
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import reprocodec
from reprocodec import container

from . import allocator, security
from .backend import Codecs
from .core import (
    DEFAULT_MAX_QUEUE_WAIT,
    DEFAULT_MAX_REQUEST_MEMORY,
    DEFAULT_QUEUE_LENGTH,
    MEMORY_POOL_SHARE,
    ServeConfig,
    ServiceCore,
    memory_available,
)
from .metrics import ServiceMetrics
from .servicers import add_to_server

log = logging.getLogger("reprocodec.server")

DEFAULT_PORTS = {"encoder": (50051, 9101), "decoder": (50052, 9102)}
# Threads beyond the workers and the queue: health, ListModels, chunk uploads and immediate
# refusals stay served while every worker is busy and the queue is full.
_EXTRA_THREADS = 8


def build_parser(service: str) -> argparse.ArgumentParser:
    port, metrics_port = DEFAULT_PORTS[service]
    p = argparse.ArgumentParser(
        prog=f"reprocodec-{service}",
        description=f"The reprocodec {service} gRPC service (statuses, flags and metrics: "
                    "README.md, sections gRPC API and Metrics).",
    )
    p.add_argument("--port", type=int, default=port, help=f"gRPC port (default {port}; 0: any)")
    p.add_argument("--metrics-port", type=int, default=metrics_port,
                   help=f"Prometheus HTTP port (default {metrics_port}; 0: any)")
    p.add_argument("--profile", default="cpu",
                   help="numerics profile: cpu, cpu-nomkldnn, cpu-channels-last, cpu-1thread, "
                        "emulate-tf32, emulate-splitk, cuda, cuda-tf32, noise:EPS (default cpu)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N; must agree with the profile (default: the profile's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; 0.0.0.0 to serve the network)")
    p.add_argument("--metrics-host", default=None, help="metrics bind address (default --host)")
    p.add_argument("--max-concurrency", type=int, default=4,
                   help="encode/decode requests running at once; more wait in the queue "
                        "(default 4)")
    p.add_argument("--cloud-threads", type=int, default=1,
                   help="threads each point-cloud request's network runs on (default 1: "
                        "--max-concurrency requests already run side by side; results never "
                        "depend on it)")
    p.add_argument("--queue-length", type=int, default=DEFAULT_QUEUE_LENGTH,
                   help="encode/decode requests that may wait for a worker; beyond it they "
                        f"are refused with RESOURCE_EXHAUSTED (default {DEFAULT_QUEUE_LENGTH})")
    p.add_argument("--max-queue-wait", type=float, default=DEFAULT_MAX_QUEUE_WAIT,
                   help="seconds a request may wait for a worker before it is refused with "
                        f"RESOURCE_EXHAUSTED (default {DEFAULT_MAX_QUEUE_WAIT:g}; the "
                        "request's own deadline also ends its wait)")
    p.add_argument("--max-message-mb", type=float, default=64.0,
                   help="largest request accepted, unary or chunked, in MiB (default 64)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image accepted, in pixels (default 50 MP)")
    p.add_argument("--max-request-memory-mb", type=float,
                   default=DEFAULT_MAX_REQUEST_MEMORY / 2**20,
                   help="memory budget of one encode/decode in MiB: a request whose estimate "
                        "(fixed + per pixel / per point, README) is larger is refused with "
                        "RESOURCE_EXHAUSTED before it starts; the work of --max-concurrency "
                        f"requests takes at most that many times it (default "
                        f"{DEFAULT_MAX_REQUEST_MEMORY / 2**20:.0f}: a 50 MP image fits)")
    p.add_argument("--max-memory-mb", type=float, default=None,
                   help="memory all running encodes/decodes share, in MiB: a request holds its "
                        "estimate while it runs and waits in the queue until it fits (default: "
                        f"{MEMORY_POOL_SHARE * 100:.0f}%% of the container's memory limit, "
                        "else of the machine's memory; 0: no shared limit)")
    p.add_argument("--malloc-arenas", type=int, default=allocator.DEFAULT_ARENAS,
                   help="glibc malloc arenas shared by the worker threads (default "
                        f"{allocator.DEFAULT_ARENAS}; 0 keeps glibc's 8 per core; the "
                        "MALLOC_ARENA_MAX environment variable wins): fewer arenas keep RSS "
                        "from creeping up under mixed load")
    p.add_argument("--malloc-mmap-mb", type=int, default=allocator.DEFAULT_MMAP_MB,
                   help="glibc's mmap threshold in MiB, fixed (the trim threshold twice it; "
                        f"default {allocator.DEFAULT_MMAP_MB}; 0 keeps glibc's dynamic ones; "
                        "MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ in the environment "
                        "win): a request's buffers below it are reused, not faulted in again")
    p.add_argument("--no-malloc-trim", dest="malloc_trim", action="store_false",
                   help="do not return freed heap pages to the OS when idle")
    p.add_argument("--malloc-trim-delay", type=float, default=allocator.DEFAULT_TRIM_DELAY,
                   help="seconds without a request before the freed heap pages go back to "
                        f"the OS (default {allocator.DEFAULT_TRIM_DELAY:g}; 0: as soon as "
                        "none runs): back-to-back requests reuse them instead of faulting "
                        "them in again")
    p.add_argument("--bitstream-format", type=int, choices=sorted(container.SUPPORTED_VERSIONS),
                   default=container.FORMAT_VERSION,
                   help="encoder: the newest bitstream format it writes (default "
                        f"{container.FORMAT_VERSION}); 7 while decoders of reprocodec 0.7 "
                        "remain (the point-cloud mixer's second version), 6 while 0.6 ones do "
                        "remain (the point-cloud mixer's first version), 5 while 0.5.0 ones do "
                        "(the neighbour coder's first model), 4 while 0.4.0 ones do "
                        "(no neighbour-coded point-cloud levels), 3 while 0.3.0 ones do "
                        "(no mixed probabilities either), 2 while 0.2.0 "
                        "ones do (also integer voxel clouds' placement written out)")
    p.add_argument("--tls-cert", type=Path, help="PEM server certificate (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path,
                   help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    p.add_argument("--auth-token-file", type=Path,
                   help="file holding a shared token; calls must send 'authorization: Bearer T'")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="directory of <model>.pt + <model>.json (default: the shipped weights)")
    p.add_argument("--preload", choices=("all", "default", "none"), default="default",
                   help="models to load and warm up (each compiled kernel and first inference run "
                        "once) before reporting SERVING (default: the default models)")
    p.add_argument("--drain-seconds", type=float, default=1.0,
                   help="on SIGTERM, seconds to report NOT_SERVING before refusing calls")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight calls may take to finish")
    p.add_argument("--cancel-wait", type=float, default=5.0,
                   help="on SIGTERM, after --shutdown-grace: seconds cancelled work may take to "
                        "stop before the process exits anyway (default 5)")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO (one line per request), WARNING (failures only), ERROR")
    p.add_argument("--log-format", choices=("json", "text"), default="json",
                   help="json: one JSON object per line (for log collectors); text: for people")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_concurrency < 1:
        p.error("--max-concurrency must be at least 1")
    if args.queue_length < 0:
        p.error("--queue-length must be 0 (no queue: refuse at once) or more")
    if args.cloud_threads < 1:
        p.error("--cloud-threads must be at least 1")
    if args.cancel_wait < 0 or args.shutdown_grace < 0 or args.drain_seconds < 0:
        p.error("--drain-seconds, --shutdown-grace and --cancel-wait cannot be negative")
    if not 0 <= args.max_queue_wait <= 3600:
        p.error("--max-queue-wait must be in [0, 3600] seconds")
    if not 0 < args.max_message_mb <= 2047:
        p.error("--max-message-mb must be in (0, 2047] (gRPC's limit is 2 GiB)")
    if not args.max_request_memory_mb > 0:
        p.error("--max-request-memory-mb must be more than 0")
    if not 0 <= args.malloc_trim_delay <= 3600:
        p.error("--malloc-trim-delay must be in [0, 3600] seconds")
    if args.max_memory_mb is not None and args.max_memory_mb < 0:
        p.error("--max-memory-mb must be 0 (no shared limit) or more")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")


def _resolve_device(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    from reprocodec.numerics import parse_profile

    try:
        profile = parse_profile(args.profile)
    except ValueError as exc:
        p.error(str(exc))
    device = args.device or profile.device
    if device.split(":")[0] != profile.device:
        p.error(f"--device {device} disagrees with --profile {args.profile} "
                f"(which runs on {profile.device}); pick a {device.split(':')[0]} profile")
    return device


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _JsonLines(logging.Formatter):
    """One JSON object per record: time, service, level, logger, message, and a request
    record's fields at the top level."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "service": self.service,
               "level": record.levelname, "logger": record.name}
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            out |= request
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=False)


def _configure_logging(service: str, level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines(service) if fmt == "json" else logging.Formatter(
        f"%(asctime)s {service} %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def memory_pool(max_memory_mb: float | None) -> int | None:
    """--max-memory-mb in bytes: None (no pool) for 0, the documented default for None."""
    if max_memory_mb is None:
        return int(MEMORY_POOL_SHARE * memory_available())
    return int(max_memory_mb * 2**20) if max_memory_mb > 0 else None


def serve(service: str, argv: list[str] | None = None) -> int:
    parser = build_parser(service)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    _configure_logging(service, args.log_level, args.log_format)
    allocator.limit_arenas(args.malloc_arenas)  # before any worker thread allocates
    allocator.fix_thresholds(args.malloc_mmap_mb)
    device = _resolve_device(parser, args)

    from reprocodec.numerics import apply_profile

    apply_profile(args.profile)  # once per process, before any network is built
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(torch.device(device))

    metrics = ServiceMetrics(service)
    metrics.set_build_info(reprocodec.__version__, args.profile, device)
    max_message_bytes = int(args.max_message_mb * 2**20)
    token = security.read_token(args.auth_token_file) if args.auth_token_file else None
    # What the service reports it writes: a decoder writes nothing and reads every format.
    written = args.bitstream_format if service == "encoder" else container.FORMAT_VERSION
    config = ServeConfig(
        service=service, profile=args.profile, device=device,
        max_concurrency=args.max_concurrency, max_message_bytes=max_message_bytes,
        max_pixels=args.max_pixels, tls=args.tls_cert is not None, auth=token is not None,
        queue_length=args.queue_length, max_queue_wait=args.max_queue_wait,
        max_request_memory=int(args.max_request_memory_mb * 2**20),
        trim_memory=args.malloc_trim, trim_delay=args.malloc_trim_delay,
        max_memory=memory_pool(args.max_memory_mb),
    )
    codecs = Codecs(args.weights_dir, args.max_pixels, args.cloud_threads, written)
    _preload(codecs, args.preload)
    if args.malloc_trim:  # the warm-ups' freed pages back to the system, as after a request
        allocator.trim()
    core = ServiceCore(config, metrics)

    # Every running and every queued request holds a handler thread.
    threads = args.max_concurrency + args.queue_length + _EXTRA_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=service),
        interceptors=[security.TokenAuth(token, metrics)] if token else [],
        # The limit is on what clients send; answers (a decoded image can be 10x its stream)
        # are bounded by --max-pixels instead, and clients set what they accept.
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ],
        # A hard cap on calls gRPC holds (ours queue inside the handlers, bounded by
        # --queue-length); beyond it gRPC itself answers RESOURCE_EXHAUSTED.
        maximum_concurrent_rpcs=2 * threads,
    )
    service_name = add_to_server(server, service, core, codecs)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        port = server.add_secure_port(address, security.server_credentials(
            args.tls_cert, args.tls_key, args.tls_client_ca))
    else:
        port = server.add_insecure_port(address)
    if not _is_loopback(args.host) and not (args.tls_cert or token):
        log.warning("serving %s on %s without TLS or a token: anyone who can reach it may call it",
                    service, args.host)
    server.start()
    metrics_host = args.metrics_host or args.host
    httpd, _ = metrics.serve(args.metrics_port, metrics_host)
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = _stop_on_signals()
    print(f"READY service={service} grpc={args.host}:{port} "
          f"metrics={metrics_host}:{httpd.server_port} profile={args.profile} device={device} "
          f"memory_pool_mb={(config.max_memory or 0) / 2**20:.0f}",
          flush=True)
    _wait_for_stop(stop)

    log.info("shutting down: NOT_SERVING, draining %.1f s", args.drain_seconds)
    _bound_exit(args.drain_seconds + args.shutdown_grace + 0.5 + args.cancel_wait + EXIT_SLACK)
    core.begin_shutdown()
    health_servicer.enter_graceful_shutdown()
    time.sleep(args.drain_seconds)
    stopped = server.stop(args.shutdown_grace)
    if not stopped.wait(args.shutdown_grace + 0.5) or core.in_flight():
        cancelled = core.shutdown()
        log.warning("shutdown grace of %.1f s over: cancelled %d running request(s)",
                    args.shutdown_grace, cancelled)
    else:
        core.shutdown()
    stuck = _wait_idle(core, args.cancel_wait)
    httpd.shutdown()
    if stuck:
        # The handler threads are not daemons: a normal exit would wait for them. Leave now.
        log.warning("%d request(s) did not stop within %.1f s of cancellation; exiting anyway",
                    stuck, args.cancel_wait)
        _exit_now(0)
    log.info("stopped")
    return 0


# The longest the main thread sleeps between looks for a signal. The kernel may deliver
# SIGTERM to any thread of the process; CPython runs the Python handler in the main thread
# only, when that thread next runs: a main thread asleep in one long wait did not see a
# SIGTERM that landed on a worker thread until the wait ended (an hour; a shutdown test that
# waited 60 s saw no "shutting down" at all).
SIGNAL_POLL = 0.5


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (handlers installed; main thread only)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def _wait_for_stop(stop: threading.Event) -> None:
    """Sleep until `stop` is set, waking every SIGNAL_POLL s so that a signal's handler runs
    whichever thread the signal landed on."""
    while not stop.wait(SIGNAL_POLL):
        pass


# Seconds the exit itself may take after the shutdown steps' own bounds (drain, grace, cancel
# wait): stopping the metrics server, logging, and the interpreter's exit, which joins every
# non-daemon thread.
EXIT_SLACK = 2.0
# Seconds past the watchdog's deadline after which faulthandler, a C thread that needs
# neither the GIL nor any lock, writes every thread's stack to the log and ends the process
# (status 1): the last resort where the watchdog cannot run or log. A shutdown test once
# saw neither the exit after "exiting anyway" nor the watchdog within 60 s.
LAST_RESORT_SLACK = 5.0


def _exit_now(status: int) -> None:
    """Leave at once, without joining threads: flush the log and stdout first."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)


def _bound_exit(seconds: float, exit_now: Callable[[int], object] = _exit_now,
                last_resort: bool = True) -> threading.Thread:
    """Exit (status 0) `seconds` from now if the process has not exited by then, and with
    `last_resort` (status 1) LAST_RESORT_SLACK s later whatever holds the watchdog.

    Every shutdown step has its own bound, but the interpreter's exit then joins every
    non-daemon thread (gRPC's handler pool among them), which has no bound: one thread that
    never returns would keep a terminated server alive until the orchestrator's SIGKILL. The
    watchdog is a daemon thread, so a normal exit ends it; when it fires it logs the threads
    still alive, with their stacks, so that the log says what held the exit.
    """
    def fire() -> None:
        frames = sys._current_frames()
        alive = [t for t in threading.enumerate()
                 if t is not threading.current_thread() and not t.daemon]
        stacks = "\n".join(
            f"thread {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
            for t in alive if t.ident in frames)
        log.warning("the exit did not finish within %.1f s of the signal; exiting anyway. "
                    "Threads still running:\n%s", seconds, stacks or "(none)")
        exit_now(0)

    watchdog = threading.Timer(seconds, fire)
    watchdog.daemon = True
    watchdog.name = "reprocodec-exit-watchdog"
    watchdog.start()
    if last_resort:  # one per process (faulthandler's): the services arm it once, at SIGTERM
        faulthandler.dump_traceback_later(seconds + LAST_RESORT_SLACK, exit=True,
                                          file=sys.stderr)
    return watchdog


def _wait_idle(core: ServiceCore, timeout: float) -> int:
    """Wait until no request runs; returns how many still run after `timeout` s."""
    deadline = time.monotonic() + timeout
    while core.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    return core.in_flight()


def _preload(codecs: Codecs, which: str) -> None:
    if which == "none":
        return
    from reprocodec.safeguard import warm_up
    from reprocodec.v1 import bitstream_pb2

    warm_up()  # compiles or loads the syndrome kernels before SERVING, a self-check besides

    names = set()
    if which == "all":
        names = set(codecs.models)
    else:
        for kind in (bitstream_pb2.CODEC_KIND_IMAGE, bitstream_pb2.CODEC_KIND_POINT_CLOUD):
            if any(m.codec == kind for m in codecs.models.values()):
                names.add(codecs.default_model(kind))
    for name in sorted(names):
        codec = codecs.codec(codecs.models[name])
        started = time.perf_counter()
        codec.warm_up()  # its kernels and first inference now, not in the first request
        log.info("warmed up %s in %.2f s", name, time.perf_counter() - started)


def encoder_main(argv: list[str] | None = None) -> None:
    sys.exit(serve("encoder", argv))


def decoder_main(argv: list[str] | None = None) -> None:
    sys.exit(serve("decoder", argv))
