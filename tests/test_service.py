"""Integration: real encoder and decoder processes on loopback under different numerics
profiles (cpu vs cpu-nomkldnn), real codecs (small random-weight models in the shipped format,
so the tests do not depend on the trained weights' numbers), committed sample images.

Two processes for the whole module (CI has 2 cores): tests read metric *deltas*, so their order
does not matter.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import reprocodec
from reprocodec import container
from reprocodec.client import DecoderClient, EncoderClient, ServiceError, image_pixels
from reprocodec.image.io import decode_image_bytes, encode_png
from reprocodec.server.testing import ServerProcess
from reprocodec.v1 import bitstream_pb2, service_pb2

SAMPLES = Path(reprocodec.__file__).parent / "samples"
HYPERPRIOR = "bmshj2018-hyperprior-random0"
MEAN_SCALE = "mbt2018-mean-random1"
CLOUD_MODEL = "octree-random"
DECODER_MAX_MB = 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from reprocodec.image.testing import write_random_model

    d = tmp_path_factory.mktemp("weights")
    write_random_model(d, "bmshj2018-hyperprior", seed=0)
    write_random_model(d, "mbt2018-mean", seed=1)
    _write_random_cloud_model(d, CLOUD_MODEL)
    return d


def _write_random_cloud_model(weights_dir: Path, name: str) -> None:
    """A small random occupancy model in the shipped point-cloud weights format."""
    import json

    import torch

    from reprocodec.image.models import sha256_file
    from reprocodec.pointcloud.networks import ARCHITECTURE, OccupancyMLP, save_weights

    torch.manual_seed(0)
    pt = weights_dir / f"{name}.pt"
    save_weights(str(pt), OccupancyMLP((16,)))
    (weights_dir / f"{name}.json").write_text(json.dumps({
        "name": name, "architecture": ARCHITECTURE, "weights_sha256": sha256_file(pt)}))


@pytest.fixture(scope="module")
def servers(weights):
    enc = ServerProcess("encoder", "--profile", "cpu", "--weights-dir", str(weights),
                        "--max-pixels", "4000000", "--preload", "all")
    dec = ServerProcess("decoder", "--profile", "cpu-nomkldnn", "--weights-dir", str(weights),
                        "--max-concurrency", "1", "--max-message-mb", str(DECODER_MAX_MB),
                        "--preload", "all")
    try:
        yield enc.ready(), dec.ready()
    finally:
        for p in (enc, dec):
            p.stop()


@pytest.fixture(scope="module")
def encoder(servers):
    with EncoderClient(servers[0].target, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def decoder(servers):
    with DecoderClient(servers[1].target, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sample() -> bytes:
    return (SAMPLES / "astronaut.png").read_bytes()


@pytest.fixture(scope="module")
def encoded(encoder, sample) -> bitstream_pb2.Bitstream:
    return encoder.encode_image(sample, model=HYPERPRIOR).bitstream


def _counter(proc, name, **labels) -> float:
    return proc.metric(name, **labels)


# ----------------------------------------------------------------------- the happy path


@pytest.mark.parametrize(("model", "mode", "level"), [
    (HYPERPRIOR, "syndrome", "both"),
    (HYPERPRIOR, "flags", "reconstruction"),
    (MEAN_SCALE, "simplified", "both"),
    (MEAN_SCALE, "syndrome", "decoding"),
])
def test_cross_profile_roundtrip_is_byte_identical(servers, encoder, decoder, weights,
                                                   model, mode, level):
    enc_proc, dec_proc = servers
    image = (SAMPLES / "coffee.png").read_bytes()
    before = {
        "enc_ok": _counter(enc_proc, "reprocodec_requests_total", method="EncodeImage", code="OK"),
        "dec_ok": _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage", code="OK"),
        "recv": _counter(dec_proc, "reprocodec_received_bytes_total", method="DecodeImage"),
        "ratio": _counter(dec_proc, "reprocodec_safeguard_overhead_ratio_count",
                          codec="image", mode=mode, level=level, model=model),
        "risky": _counter(enc_proc, "reprocodec_safeguard_risky_elements_sum",
                          tensor="scale_index"),
    }
    response = encoder.encode_image(image, model=model, mode=mode, level=level)
    stream = response.bitstream
    assert stream.encoder_profile == "cpu" and stream.model == model
    assert response.stats.profile == "cpu"
    assert response.stats.protection_bytes == sum(len(t.side_info) for t in stream.protected)
    file_bytes = stream.SerializeToString(deterministic=True)

    decoded = decoder.decode_image(file_bytes)
    assert decoded.stats.profile == "cpu-nomkldnn"
    assert decoded.expected_checksum == stream.output_checksum
    if level == "decoding":  # pixels unprotected: exactness is reported, not promised
        assert decoded.bit_exact == (decoded.output_checksum == decoded.expected_checksum)
    else:
        assert decoded.bit_exact and decoded.output_checksum == decoded.expected_checksum
    again = decoder.decode_image(stream)  # the message form decodes to the same bytes
    assert again.png == decoded.png

    # The same stream decoded in this process (default profile, another process than both
    # services) gives the very same PNG bytes.
    from reprocodec.image import ImageCodec

    local = ImageCodec.load(model, weights_dir=str(weights)).decode(container.unpack(file_bytes))
    if level != "decoding":
        assert local.bit_exact and encode_png(local.pixels) == decoded.png
    assert decode_image_bytes(decoded.png).shape == decode_image_bytes(image).shape

    stats = response.stats
    assert stats.overhead_ratio == pytest.approx(stats.protection_bytes / stats.payload_bytes)
    risky = next(t.risky_count for t in stats.tensors if t.name == "scale_index")
    assert _counter(enc_proc, "reprocodec_requests_total", method="EncodeImage",
                    code="OK") == before["enc_ok"] + 1
    assert _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage",
                    code="OK") == before["dec_ok"] + 2
    assert _counter(dec_proc, "reprocodec_received_bytes_total",
                    method="DecodeImage") >= before["recv"] + 2 * len(file_bytes)
    assert _counter(dec_proc, "reprocodec_safeguard_overhead_ratio_count", codec="image",
                    mode=mode, level=level, model=model) == before["ratio"] + 2
    assert _counter(enc_proc, "reprocodec_safeguard_risky_elements_sum",
                    tensor="scale_index") == before["risky"] + risky


def test_raw_pixels_greyscale_and_raw_output(encoder, decoder):
    grey = decode_image_bytes((SAMPLES / "chelsea.png").read_bytes())[:123, :201].mean(
        axis=2, keepdims=True).astype(np.uint8)
    stream = encoder.encode_image(grey, model=HYPERPRIOR).bitstream
    assert stream.image.channels == 1
    pixels = decoder.decode_image_pixels(stream)
    assert pixels.shape == (123, 201, 1) and pixels.dtype == np.uint8
    png = decoder.decode_image(stream)
    assert np.array_equal(image_pixels(png), pixels)


def test_large_request_goes_through_the_chunked_method(servers, encoder, decoder):
    enc_proc = servers[0]
    before = _counter(enc_proc, "reprocodec_requests_total", method="EncodeImageStream",
                      code="OK")
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, size=(1100, 1100, 3), dtype=np.uint8)  # 3.6 MB raw > 3 MB
    response = encoder.encode_image(big, model=HYPERPRIOR)
    assert _counter(enc_proc, "reprocodec_requests_total", method="EncodeImageStream",
                    code="OK") == before + 1
    assert response.bitstream.image.height == 1100
    # The decoded raw pixels (3.6 MB) come back through the chunked twin as well.
    small_limit = DecoderClient(servers[1].target, chunk_threshold=0)
    try:
        assert small_limit.decode_image_pixels(response.bitstream).shape == (1100, 1100, 3)
    finally:
        small_limit.close()


def test_list_models_and_server_info(encoder, decoder):
    for client, service, profile in ((encoder, "encoder", "cpu"),
                                     (decoder, "decoder", "cpu-nomkldnn")):
        info = client.server_info()
        assert (info.service, info.profile, info.device) == (service, profile, "cpu")
        assert info.version == reprocodec.__version__
        models = {m.name: m for m in client.list_models().models}
        assert set(models) == {HYPERPRIOR, MEAN_SCALE, CLOUD_MODEL}
        assert models[CLOUD_MODEL].codec == bitstream_pb2.CODEC_KIND_POINT_CLOUD
        assert {b.tensor for b in models[MEAN_SCALE].bounds} == {
            "scale_index", "mean_grid", "pixels"}
        assert len(models[HYPERPRIOR].weights_sha256) == 32
    assert decoder.server_info().max_message_bytes == DECODER_MAX_MB << 20


def test_health_and_reflection(servers):
    for proc, name in zip(servers, ("Encoder", "Decoder"), strict=True):
        with EncoderClient(proc.target) as client:
            assert client.health() == "SERVING"
            assert client.health(f"reprocodec.v1.{name}") == "SERVING"
            services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
        assert f"reprocodec.v1.{name}" in services
        assert "grpc.health.v1.Health" in services
        text = proc.scrape()
        info = [k for k in text if k[0] == "reprocodec_build_info"]
        assert len(info) == 1 and text[info[0]] == 1.0


def _sphere(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return 5.0 + 3.0 * v / np.linalg.norm(v, axis=1, keepdims=True)


def test_point_cloud_roundtrip_across_profiles(servers, encoder, decoder, tmp_path):
    from reprocodec.client import cloud_points, cloud_voxels
    from reprocodec.pointcloud import octree, ply

    points = _sphere(3000, seed=2)
    expected = octree.voxelize(points, 7).voxels  # the voxel set the stream must carry
    ply.write_ply(tmp_path / "in.ply", points)
    for cloud in (points, (tmp_path / "in.ply").read_bytes()):
        encoded = encoder.encode_point_cloud(cloud, model=CLOUD_MODEL, depth=7, mode="flags")
        assert encoded.bitstream.point_cloud.num_points == len(expected)
        assert encoded.stats.num_elements == len(expected)
        decoded = decoder.decode_point_cloud(encoded.bitstream)
        assert decoded.bit_exact and decoded.output_checksum == decoded.expected_checksum
        assert np.array_equal(cloud_voxels(decoded), expected)
        assert cloud_points(decoded).shape == expected.shape
        (tmp_path / "out.ply").write_bytes(decoded.ply)
        assert len(ply.read_ply(tmp_path / "out.ply")) == len(expected)
    # An image stream is not a point cloud: the decoder says where to send it.
    image = encoder.encode_image((SAMPLES / "coffee.png").read_bytes(), model=HYPERPRIOR)
    with pytest.raises(ServiceError) as info:
        decoder.decode_point_cloud(image.bitstream)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeImage" in info.value.details
    with pytest.raises(ServiceError) as info:
        encoder.encode_point_cloud(b"ply\nformat ascii 1.0\nend_header\n", model=CLOUD_MODEL)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- bad input


def _tamper(encoded: bitstream_pb2.Bitstream, change) -> bytes:
    msg = bitstream_pb2.Bitstream()
    msg.CopyFrom(encoded)
    change(msg)
    return msg.SerializeToString()


def _flip_payload_bit(msg):
    data = bytearray(msg.payloads[-1].data)
    data[len(data) // 2] ^= 0x10
    msg.payloads[-1].data = bytes(data)


def _point_cloud_stream(msg):
    msg.point_cloud.CopyFrom(container.point_cloud_header(10, 1, [0, 0, 0], 1.0))
    msg.codec = bitstream_pb2.CODEC_KIND_POINT_CLOUD
    container.pack(msg)


def _wrong_indices_checksum(msg):
    msg.protected[0].indices_checksum ^= 1


BAD_STREAMS = {
    # name: (bytes from the good stream, status code, decode-failure reason)
    "truncated": (lambda s: s.SerializeToString()[: s.ByteSize() // 2],
                  grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "bit_flipped_payload": (lambda s: _tamper(s, _flip_payload_bit),
                            grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "empty": (lambda s: b"", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "garbage": (lambda s: np.random.default_rng(7).bytes(5000),
                grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "png_instead_of_stream": (lambda s: (SAMPLES / "coffee.png").read_bytes(),
                              grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "encode_request_instead_of_stream": (
        lambda s: service_pb2.EncodeImageRequest(image_file=b"x" * 100).SerializeToString(),
        grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "point_cloud_stream_to_image_decoder": (lambda s: _tamper(s, _point_cloud_stream),
                                            grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "wrong_weights_hash": (
        lambda s: _tamper(s, lambda m: setattr(m, "weights_sha256", bytes(32))),
        grpc.StatusCode.FAILED_PRECONDITION, "model_mismatch"),
    # Neither the name nor the weights are installed (a stream whose name alone is unknown
    # decodes with the model holding its weights: tests/test_renamed_models.py).
    "unknown_model": (lambda s: _tamper(s, lambda m: (setattr(m, "model", "no-such-model"),
                                                      setattr(m, "weights_sha256", bytes(32)))),
                      grpc.StatusCode.FAILED_PRECONDITION, "unknown_model"),
    # A valid container whose protected indices cannot be reproduced: DATA_LOSS, no image.
    "indices_not_reproduced": (lambda s: _tamper(s, _wrong_indices_checksum),
                               grpc.StatusCode.DATA_LOSS, "verification"),
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_is_refused_counted_and_server_stays_healthy(servers, decoder, encoded,
                                                                case):
    dec_proc = servers[1]
    make, code, reason = BAD_STREAMS[case]
    data = make(encoded)
    failures = _counter(dec_proc, "reprocodec_decode_failures_total", reason=reason)
    requests = _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage",
                        code=code.name)
    with pytest.raises(ServiceError) as info:
        decoder.decode_image(data)
    assert info.value.code == code, info.value.details
    assert len(info.value.details) > 20  # a message that says what to do, not just a code
    assert _counter(dec_proc, "reprocodec_decode_failures_total", reason=reason) == failures + 1
    assert _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage",
                    code=code.name) == requests + 1
    assert decoder.health() == "SERVING"
    assert decoder.decode_image(encoded).bit_exact  # and it still decodes good streams


def test_oversized_stream_is_refused_before_it_is_read(servers, decoder):
    dec_proc = servers[1]
    too_big = bytes((DECODER_MAX_MB << 20) + 1000)
    failures = _counter(dec_proc, "reprocodec_decode_failures_total", reason="too_large")
    chunked = DecoderClient(dec_proc.target, chunk_threshold=0)  # force the chunked method
    try:
        with pytest.raises(ServiceError) as info:
            chunked.decode_image(too_big)
    finally:
        chunked.close()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-message-mb" in info.value.details
    assert _counter(dec_proc, "reprocodec_decode_failures_total",
                    reason="too_large") == failures + 1
    with pytest.raises(ServiceError) as info:  # unary: gRPC's own limit, set from the flag
        decoder.decode_image(too_big)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert decoder.health() == "SERVING"


@pytest.mark.parametrize(("image", "model", "code"), [
    (b"", HYPERPRIOR, grpc.StatusCode.INVALID_ARGUMENT),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), HYPERPRIOR, grpc.StatusCode.INVALID_ARGUMENT),
    ("sample", "no-such-model", grpc.StatusCode.FAILED_PRECONDITION),
    ("huge", HYPERPRIOR, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_bad_encode_input(servers, encoder, sample, image, model, code):
    enc_proc = servers[0]
    if image == "sample":
        image = sample
    elif image == "huge":  # 2100 x 2000 = 4.2 MP > --max-pixels 4 MP; a tiny PNG file
        image = encode_png(np.zeros((2100, 2000, 1), np.uint8))
    before = _counter(enc_proc, "reprocodec_requests_total", method="EncodeImage",
                      code=code.name)
    with pytest.raises(ServiceError) as info:
        encoder.encode_image(image, model=model)
    assert info.value.code == code, info.value.details
    assert _counter(enc_proc, "reprocodec_requests_total", method="EncodeImage",
                    code=code.name) == before + 1
    assert encoder.health() == "SERVING"


def test_wrong_raw_size_is_invalid(encoder):
    request = service_pb2.EncodeImageRequest(
        raw=service_pb2.RawImage(height=10, width=10, channels=3, pixels=bytes(299)))
    with pytest.raises(ServiceError) as info:
        encoder._call(encoder._stub.EncodeImage, request, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "300 bytes" in info.value.details


# ------------------------------------------------------------- deadlines and overload


@pytest.fixture(scope="module")
def big_stream(encoder) -> bitstream_pb2.Bitstream:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8)
    return encoder.encode_image(pixels, model=MEAN_SCALE).bitstream


def test_deadline_too_short_is_refused_before_the_work(servers, decoder, big_stream):
    dec_proc = servers[1]
    decoder.decode_image(big_stream, raw=True)  # the server learns how long this takes
    failures = _counter(dec_proc, "reprocodec_decode_failures_total", reason="deadline")
    refused = _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage",
                       code="DEADLINE_EXCEEDED")
    with pytest.raises(ServiceError) as info:
        decoder.decode_image(big_stream, raw=True, timeout=0.2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server itself refused (counted), rather than working past the deadline.
    assert _counter(dec_proc, "reprocodec_decode_failures_total",
                    reason="deadline") == failures + 1
    assert _counter(dec_proc, "reprocodec_requests_total", method="DecodeImage",
                    code="DEADLINE_EXCEEDED") == refused + 1


def test_over_the_concurrency_limit_requests_wait_in_the_queue(servers, big_stream):
    dec_proc = servers[1]  # --max-concurrency 1: the others queue (refusal when the queue is
    # full is tested in test_service_pressure_live.py)
    waited = _counter(dec_proc, "reprocodec_queue_wait_seconds_count", method="DecodeImage")
    clients = [DecoderClient(dec_proc.target, retries=0) for _ in range(4)]
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.decode_image, big_stream, raw=True) for c in clients]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result().bit_exact)
                except ServiceError as exc:
                    outcomes.append(exc.code)
    finally:
        for c in clients:
            c.close()
    assert outcomes == [True] * 4  # all served, one at a time
    assert _counter(dec_proc, "reprocodec_queue_wait_seconds_count",
                    method="DecodeImage") == waited + 4
    assert dec_proc.metric("reprocodec_in_flight_requests") == 0


# ------------------------------------------------------------------------ the CLI verbs


def test_cli_remote_verbs(servers, tmp_path, capsys):
    from reprocodec.cli import main

    enc_proc, dec_proc = servers
    inputs = [str(SAMPLES / "coffee.png"), str(SAMPLES / "chelsea.png")]
    assert main(["encode", *inputs, "-o", str(tmp_path / "rpc"), "--encoder", enc_proc.target,
                 "--model", "mbt2018-mean", "--safeguard", "flags"]) == 0
    streams = sorted((tmp_path / "rpc").glob("*.rpc"))
    assert [p.stem for p in streams] == ["chelsea", "coffee"]
    assert container.unpack(streams[0].read_bytes()).model == MEAN_SCALE
    assert main(["decode", *map(str, streams), "-o", str(tmp_path / "png"),
                 "--decoder", dec_proc.target]) == 0
    decoded = decode_image_bytes((tmp_path / "png" / "coffee.png").read_bytes())
    assert decoded.shape == decode_image_bytes(Path(inputs[0]).read_bytes()).shape
    out = capsys.readouterr().out
    assert out.count("bit-exact") == 2 and "NOT" not in out
    assert "encode: 2 of 2 inputs done" in out and "decode: 2 of 2 inputs done" in out
    assert "[2/2]" in out  # remote batches show progress

    assert main(["models", dec_proc.target, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["server"]["service"] == "decoder"
    assert listed["server"]["format_version"] == container.FORMAT_VERSION
    by_name = {m["name"]: m for m in listed["models"]}
    assert by_name[MEAN_SCALE]["loaded"]  # it just decoded with it
    assert all(len(m["weights_sha256"]) == 64 and m["format_version"] == container.FORMAT_VERSION
               for m in listed["models"])

    # An integer voxel cloud is written in format 3; --bitstream-format 2 writes what a 0.2.0
    # decoder reads (the placement written out), and both decode to the same points.
    camel = str(SAMPLES / "camel_d6.ply")
    for fmt in ("3", "2"):
        out = tmp_path / f"camel{fmt}.rpc"
        assert main(["encode", camel, "-o", str(out), "--encoder", enc_proc.target,
                     "--depth", "6", "--bitstream-format", fmt]) == 0
        msg = container.unpack(out.read_bytes())
        assert msg.format_version == int(fmt) and len(msg.point_cloud.origin) == 3 * (fmt == "2")
        assert main(["decode", str(out), "-o", str(tmp_path / f"camel{fmt}.ply"),
                     "--decoder", dec_proc.target]) == 0
    assert (tmp_path / "camel3.ply").read_bytes() == (tmp_path / "camel2.ply").read_bytes()
    # --smallest mixes (format 4) unless the request asks for an older format: the request's
    # max_format_version reaches the service's codec, so no input fails client-side.
    for fmt in ("4", "3"):
        out = tmp_path / f"camel-smallest{fmt}.rpc"
        assert main(["encode", camel, "-o", str(out), "--encoder", enc_proc.target,
                     "--depth", "6", "--smallest", "--bitstream-format", fmt]) == 0
        msg = container.unpack(out.read_bytes())
        names = [p.name for p in msg.payloads]
        assert msg.format_version == int(fmt) and ("occupancy_mixed" in names) == (fmt == "4")
        assert main(["decode", str(out), "-o", str(tmp_path / f"camel-smallest{fmt}.ply"),
                     "--decoder", dec_proc.target]) == 0
        assert (tmp_path / f"camel-smallest{fmt}.ply").read_bytes() == \
            (tmp_path / "camel3.ply").read_bytes()
    capsys.readouterr()

    assert main(["roundtrip", *inputs, "--encoder", enc_proc.target,
                 "--decoder", dec_proc.target, "--model", HYPERPRIOR]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["coffee.png", "chelsea.png"]
    assert all(r[1] == "yes" and float(r[2]) > 0 and r[4].endswith("%") for r in rows)

    assert main(["health", enc_proc.target]) == 0
    assert "SERVING" in capsys.readouterr().out
    bad = tmp_path / "bad.rpc"
    bad.write_bytes(streams[0].read_bytes()[:50])
    assert main(["decode", str(bad), "-o", str(tmp_path / "x.png"),
                 "--decoder", dec_proc.target]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_every_preloaded_model_is_warmed_up_before_serving(servers):
    """--preload all: each model is loaded, then warmed up (its kernels and first inference
    run once, a round trip checked), all before the READY line."""
    for proc in servers:
        messages = [json.loads(ln)["msg"] for ln in proc.log.read_text().splitlines()
                    if ln.startswith("{") and '"msg"' in ln]
        for model in (HYPERPRIOR, MEAN_SCALE, CLOUD_MODEL):
            loaded = next(i for i, m in enumerate(messages) if m.startswith(f"loaded {model} "))
            assert messages[loaded + 1].startswith(f"warmed up {model} in "), messages


def test_every_request_writes_one_structured_log_line(servers, encoder, decoder, encoded):
    import grpc as _grpc

    enc_proc, dec_proc = servers
    decoder.decode_image(encoded)
    bad = bitstream_pb2.Bitstream()
    bad.CopyFrom(encoded)
    bad.protected[0].indices_checksum ^= 1  # DATA_LOSS
    with pytest.raises(ServiceError) as info:
        decoder.decode_image(bad)
    assert info.value.code == _grpc.StatusCode.DATA_LOSS
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in dec_proc.log.read_text().splitlines()
                 if ln.startswith("{") and '"method"' in ln]
        if any(r["status"] == "DATA_LOSS" for r in lines):
            break
        time.sleep(0.2)
    ok = [r for r in lines if r["method"] == "DecodeImage" and r["status"] == "OK"]
    lost = [r for r in lines if r["status"] == "DATA_LOSS"]
    assert ok and lost
    assert lost[-1]["reason"] == "verification" and lost[-1]["level"] == "WARNING"
    for key in ("request_id", "service", "method", "model", "codec", "bytes_in", "bytes_out",
                "protection_bytes", "status", "reason", "ms"):
        assert key in ok[-1], key
    assert ok[-1]["model"] and ok[-1]["codec"] == "image" and ok[-1]["bytes_in"] > 0
    # the standard process and Python families are scraped too
    scraped = dec_proc.scrape()
    assert scraped[("process_resident_memory_bytes", frozenset())] > 0
    assert any(name.startswith("python_gc_") for name, _ in scraped)
