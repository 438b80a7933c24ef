"""Bounded memory (issue 17): the per-request memory budget refuses before any work, and the
image codec's tiled analysis / synthesis keep the stream bit-exact.

The budget tests run the real Encoder and Decoder servicers in an in-process gRPC server on
tiny random models; a refused request never loads a model or decodes a pixel.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from concurrent import futures

import grpc
import numpy as np
import pytest

pytest.importorskip("compressai")

from reprocodec import container  # noqa: E402
from reprocodec.checksum import checksum  # noqa: E402
from reprocodec.image import ImageCodec  # noqa: E402
from reprocodec.image import codec as codec_module  # noqa: E402
from reprocodec.image.testing import sample_crop, write_test_models  # noqa: E402
from reprocodec.server import allocator, backend  # noqa: E402
from reprocodec.server.core import (  # noqa: E402
    DEFAULT_MAX_REQUEST_MEMORY,
    MEMORY_COSTS,
    ServeConfig,
    ServiceCore,
    request_memory,
)
from reprocodec.server.main import _check_args, build_parser  # noqa: E402
from reprocodec.server.metrics import ServiceMetrics  # noqa: E402
from reprocodec.server.servicers import add_to_server  # noqa: E402
from reprocodec.v1 import service_pb2, service_pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return d, write_test_models(d)


@pytest.fixture(scope="module")
def codec(weights):
    d, names = weights
    return ImageCodec.load(names["bmshj"], str(d))


# ---------------------------------------------------------------------------- the formula


def test_the_estimate_is_the_documented_formula():
    for method, cost in MEMORY_COSTS.items():
        for n in (0, 1, 10**6, 24 * 10**6):
            assert request_memory(method, n) == int(cost.fixed + cost.per_element * n)
            assert request_memory(method + "Stream", n) == request_memory(method, n)
    assert request_memory("ListModels", 10**9) == 0
    # The target: a 24 MP photo within 2 GB, and the default budget admits an image
    # at the default --max-pixels (50 MP).
    for method in ("EncodeImage", "DecodeImage"):
        assert request_memory(method, 6000 * 4000) <= 2e9
        assert request_memory(method, 50_000_000) <= DEFAULT_MAX_REQUEST_MEMORY
    args = build_parser("encoder").parse_args(["--max-request-memory-mb", "1500"])
    assert args.max_request_memory_mb == 1500


# ------------------------------------------------------------------ refusals through gRPC


class _Service:
    def __init__(self, service: str, weights_dir, budget: int, **config) -> None:
        self.metrics = ServiceMetrics(service)
        self.core = ServiceCore(ServeConfig(service, "cpu", "cpu", max_request_memory=budget,
                                            **config), self.metrics)
        self.codecs = backend.Codecs(weights_dir)
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        add_to_server(self.server, service, self.core, self.codecs)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image whose pixel data is not there: a
    server that decoded pixels before refusing would fail differently."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def _reasons(caplog) -> list[tuple[str, str]]:
    return [(json.loads(r.getMessage())["status"], json.loads(r.getMessage())["reason"])
            for r in caplog.records if r.name == "reprocodec.requests"]


def test_an_encode_over_the_budget_is_refused_before_any_work(weights, caplog):
    d, names = weights
    budget = request_memory("EncodeImage", 1000 * 1000)  # admits 1 MP, not 24 MP
    svc = _Service("encoder", d, budget)
    stub = service_pb2_grpc.EncoderStub(svc.channel)
    caplog.set_level(logging.INFO, logger="reprocodec.requests")
    try:
        for method in (stub.EncodeImage,):
            with pytest.raises(grpc.RpcError) as err:
                method(service_pb2.EncodeImageRequest(image_file=_png_header(6000, 4000),
                                                      model=names["bmshj"]), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            message = err.value.details()
            assert "memory budget" in message and "--max-request-memory-mb" in message
            assert "24000000 pixels" in message and "not started" in message
            assert f"{request_memory('EncodeImage', 24_000_000) / 2**20:.0f} MiB" in message
        assert not svc.codecs._loaded  # refused before the model was even loaded
        assert _reasons(caplog) == [("RESOURCE_EXHAUSTED", "too_large")]
        # Under the budget the same server encodes.
        pixels = sample_crop(height=48, width=64)
        raw = service_pb2.RawImage(height=48, width=64, channels=3, pixels=pixels.tobytes())
        response = stub.EncodeImage(service_pb2.EncodeImageRequest(raw=raw, model=names["bmshj"]),
                                    timeout=60)
        assert response.bitstream.image.height == 48
    finally:
        svc.close()


def test_a_decode_over_the_budget_is_refused_with_its_reason(weights, codec, caplog):
    d, _ = weights
    small = container.pack(codec.encode(sample_crop(height=32, width=32)))
    large = container.pack(codec.encode(sample_crop(height=96, width=128)))
    budget = (request_memory("DecodeImage", 32 * 32)
              + request_memory("DecodeImage", 96 * 128)) // 2
    svc = _Service("decoder", d, budget)
    stub = service_pb2_grpc.DecoderStub(svc.channel)
    caplog.set_level(logging.INFO, logger="reprocodec.requests")
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.DecodeImage(service_pb2.DecodeRequest(container=large), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory budget" in err.value.details()
        assert "12288 pixels" in err.value.details()
        assert not svc.codecs._loaded
        failures = svc.metrics.registry.get_sample_value(
            "reprocodec_decode_failures_total", {"service": "decoder", "reason": "too_large"})
        assert failures == 1
        ok = stub.DecodeImage(service_pb2.DecodeRequest(container=small), timeout=60)
        assert ok.bit_exact
        assert _reasons(caplog) == [("RESOURCE_EXHAUSTED", "too_large"), ("OK", "")]
    finally:
        svc.close()


# ------------------------------------------------------------------- tiles in the codec


def test_tiled_analysis_codes_bit_exactly_at_a_size_that_is_no_multiple_of_a_tile(
        codec, monkeypatch):
    """Tiny tiles (5 latents, halo 4) on a 333 x 250 image (16 x 24 latents once
    replicate-padded to the 64-pixel grid, so edge tiles are partial and reach into the
    padding): the stream decodes bit-exactly, and the tiled y is the whole-image y up to
    float32 summation order (the halo covers g_a's receptive field)."""
    import torch

    pixels = np.tile(sample_crop(height=100, width=120), (4, 3, 1))[:250, :333]
    whole_y = codec._analysis(pixels)
    monkeypatch.setattr(codec_module, "ANALYSIS_TILE", 5)
    monkeypatch.setattr(codec_module, "SYNTHESIS_TILE", 6)
    assert len(codec_module._tiles(16, 24, 5)) == 20
    tiled_y = codec._analysis(pixels)
    assert tiled_y.shape == whole_y.shape == (1, codec.model.M, 16, 24)
    assert float(torch.abs(tiled_y - whole_y).max()) < 1e-3
    for px in (pixels, pixels[:, :, :1]):  # RGB and greyscale
        msg = container.unpack(container.pack(codec.encode(px, "syndrome", "both")))
        decoded = codec.decode(msg)
        assert decoded.bit_exact and decoded.pixels.shape == px.shape


def test_tiled_and_whole_synthesis_decode_identically(codec, monkeypatch):
    pixels = np.tile(sample_crop(height=100, width=120), (3, 3, 1))[:270, :301]
    msg = container.unpack(container.pack(codec.encode(pixels, "syndrome", "both")))
    monkeypatch.setattr(codec_module, "SYNTHESIS_TILE", 10_000)
    whole = codec.decode(msg)
    monkeypatch.setattr(codec_module, "SYNTHESIS_TILE", 7)
    tiled = codec.decode(msg)
    assert whole.bit_exact and tiled.bit_exact
    assert np.array_equal(whole.pixels, tiled.pixels)


@pytest.mark.parametrize("shape", [(1, 1, 1), (300, 7, 3), (513, 260, 1), (0, 4, 3)])
def test_chunked_pixel_checksum_and_clip_equal_the_whole_array_ones(shape):
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    assert codec_module.pixel_checksum(pixels) == checksum(pixels)
    indices = rng.integers(-3, 260, size=shape, dtype=np.int64)
    clipped = codec_module._to_uint8(indices)
    assert clipped.dtype == np.uint8
    assert np.array_equal(clipped, np.clip(indices, 0, 255).astype(np.uint8))


# ------------------------------------------------------------- freed memory goes back


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc's malloc_trim (Linux) only")
def test_trim_returns_freed_heap_holes_that_free_alone_keeps():
    # 96 KiB blocks come from the heap (under glibc's 128 KiB mmap threshold). Keeping every
    # 16th block alive leaves the freed ones as holes below the heap top, which free() never
    # returns: this is how RSS crept up in the soak. malloc_trim hands the holes back.
    blocks = [np.ones(96 * 1024 // 8) for _ in range(2048)]  # 192 MiB
    kept = blocks[::16]
    del blocks
    before = _rss_bytes()
    assert allocator.trim()
    freed = before - _rss_bytes()
    assert freed > 100 * 2**20, f"trim returned only {freed / 2**20:.0f} MiB"
    assert all(float(b[0]) == 1.0 for b in kept)  # live blocks untouched


def test_arena_limit_leaves_an_operators_malloc_arena_max_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.limit_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert allocator.limit_arenas(0) is False  # 0: keep glibc's default
    args = build_parser("decoder").parse_args([])
    assert args.malloc_arenas == allocator.DEFAULT_ARENAS and args.malloc_trim is True
    args = build_parser("decoder").parse_args(["--malloc-arenas", "0", "--no-malloc-trim"])
    assert args.malloc_arenas == 0 and args.malloc_trim is False


_CHURN = """
import resource, sys
import numpy as np
from reprocodec.server import allocator
applied = allocator.fix_thresholds() if sys.argv[1] == "fixed" else None
first = np.ones(5 << 17); del first  # a 5 MiB block freed: glibc's thresholds rise to it
faults = []
for _ in range(12):  # 20 MiB of 1 MiB buffers made and freed, as a request's are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [np.ones(1 << 17) for _ in range(20)]
    del buffers
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))
"""


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc's mallopt (Linux) only")
def test_fixed_malloc_thresholds_keep_a_requests_freed_buffers_for_the_next():
    """With glibc's dynamic thresholds, 20 MiB freed at the heap top (over twice the largest
    block freed so far) go back to the OS and are faulted in again the next time; with them
    fixed (fix_thresholds: mmap 32 MiB, trim 64) they stay. An operator's environment
    variables win, and 0 keeps glibc's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {mode: subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True,
                                 text=True, check=True, env=env, timeout=120).stdout.split()
            for mode in ("dynamic", "fixed")}
    assert runs["fixed"][0] == "True"
    assert int(runs["dynamic"][1]) > 20 * 256  # ~5,120 a round: 20 MiB of 4 KiB pages
    assert int(runs["fixed"][1]) < 500
    assert allocator.fix_thresholds(0) is False
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        out = subprocess.run([sys.executable, "-c", _CHURN, "fixed"], capture_output=True,
                             text=True, check=True, env={**env, name: "131072"},
                             timeout=120).stdout.split()
        assert out[0] == "False"
    args = build_parser("encoder").parse_args([])
    assert args.malloc_mmap_mb == allocator.DEFAULT_MMAP_MB
    assert build_parser("encoder").parse_args(["--malloc-mmap-mb", "0"]).malloc_mmap_mb == 0


@pytest.mark.parametrize("trim_memory", [True, False])
def test_the_heap_is_trimmed_once_the_service_is_idle_unless_disabled(weights, monkeypatch,
                                                                      trim_memory):
    """With no delay the heap goes back after each request that leaves the service idle
    (never for a request refused before admission); with trimming off, never."""
    d, names = weights
    calls = []
    monkeypatch.setattr(allocator, "trim", lambda: calls.append(1) or True)
    svc = _Service("encoder", d, DEFAULT_MAX_REQUEST_MEMORY, trim_memory=trim_memory,
                   trim_delay=0.0)
    stub = service_pb2_grpc.EncoderStub(svc.channel)
    try:
        pixels = sample_crop(height=32, width=48)
        raw = service_pb2.RawImage(height=32, width=48, channels=3, pixels=pixels.tobytes())
        for _ in range(2):
            stub.EncodeImage(service_pb2.EncodeImageRequest(raw=raw, model=names["bmshj"]),
                             timeout=60)
        with pytest.raises(grpc.RpcError):  # refused before admission: nothing to trim
            stub.EncodeImage(service_pb2.EncodeImageRequest(image_file=b"not an image"),
                             timeout=60)
    finally:
        svc.close()
    assert len(calls) == (2 if trim_memory else 0)


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_idle_trim_waits_for_the_service_to_be_idle(monkeypatch):
    """IdleTrim trims once nothing has run for its delay: not while a request runs, however
    long; once after a request; not between requests that follow one another within the
    delay; never after close(); at once after a large request."""
    calls = []
    monkeypatch.setattr(allocator, "trim", lambda: calls.append(time.monotonic()) or True)
    idle = allocator.IdleTrim(0.2)
    idle.begin()
    idle.begin()
    idle.end()  # one still runs
    time.sleep(0.5)
    assert calls == []
    ended = time.monotonic()
    idle.end()
    assert _wait_for(lambda: len(calls) == 1) and calls[0] - ended >= 0.2
    slow = allocator.IdleTrim(1.0)  # back to back, well within its delay
    for _ in range(5):
        slow.begin()
        slow.end()
    time.sleep(0.2)
    assert len(calls) == 1
    slow.close()  # the pending trim is cancelled
    time.sleep(1.2)
    assert len(calls) == 1
    slow.begin()
    slow.begin()
    slow.end(large=True)  # a large request trims at once, though another one runs
    assert len(calls) == 2
    slow.end()
    slow.close()
    with pytest.raises(ValueError):
        allocator.IdleTrim(-1)
    assert build_parser("encoder").parse_args([]).malloc_trim_delay == \
        allocator.DEFAULT_TRIM_DELAY
    parser = build_parser("encoder")
    with pytest.raises(SystemExit):
        _check_args(parser, parser.parse_args(["--malloc-trim-delay", "-1"]))


def test_a_request_larger_than_the_shared_pool_is_refused_naming_the_pool(weights):
    d, names = weights
    pool = request_memory("EncodeImage", 1000 * 1000)
    svc = _Service("encoder", d, DEFAULT_MAX_REQUEST_MEMORY, max_memory=pool)
    stub = service_pb2_grpc.EncoderStub(svc.channel)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.EncodeImage(service_pb2.EncodeImageRequest(image_file=_png_header(3000, 2000),
                                                            model=names["bmshj"]), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "for all requests (--max-memory-mb)" in err.value.details()
        pixels = sample_crop(height=48, width=64)  # under the pool: encoded
        raw = service_pb2.RawImage(height=48, width=64, channels=3, pixels=pixels.tobytes())
        stub.EncodeImage(service_pb2.EncodeImageRequest(raw=raw, model=names["bmshj"]),
                         timeout=60)
        scrape = {s.name: s.value for m in svc.metrics.registry.collect() for s in m.samples}
        assert scrape["reprocodec_memory_pool_bytes"] == pool
        assert scrape["reprocodec_memory_reserved_bytes"] == 0  # returned after the request
    finally:
        svc.close()


def test_the_reserved_memory_gauge_reads_the_pool_at_each_scrape():
    """The gauge is the pool's held bytes when scraped (read under its lock), so interleaved
    requests can never leave it at a value one request old."""
    metrics = ServiceMetrics("decoder")
    core = ServiceCore(ServeConfig("decoder", "cpu", "cpu", max_memory=1000), metrics)

    def reserved() -> float:
        return metrics.registry.get_sample_value("reprocodec_memory_reserved_bytes",
                                                 {"service": "decoder"})

    assert reserved() == 0
    core.admission.acquire(memory=300)
    core.admission.acquire(memory=200)
    assert reserved() == 500
    core.admission.release(300)
    assert reserved() == 200
    core.admission.release(200)
    assert reserved() == 0
