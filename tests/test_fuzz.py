"""The decoder trust boundary under fuzzing (a CI-sized run of bench/fuzz.py) and hostile
error bounds refused before any network runs.

bench/fuzz.py runs each batch of streams in a worker subprocess, so a segmentation fault in
native code is a crash of that worker, seen here, never of pytest. The run below also injects
one native crash and one hang into the worker, to show that the harness sees both (otherwise
"no crash" would prove nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprocodec import container
from reprocodec.errors import ContainerError, ReprocodecError
from reprocodec.v1 import bitstream_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "bench" / "fuzz.py"
SAMPLES = REPO / "reprocodec" / "samples"
STREAMS = 2500
CRASH_AT, HANG_AT = 1500, 2200  # injected into the worker (harness self-test)
DOCUMENTED = {"ContainerError", "EntropyStreamError", "VerificationError",
              "ModelMismatchError", "UnknownModelError", "TooLargeError"}


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("fuzz")
    out = work / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--streams", str(STREAMS), "--batch-size", str(STREAMS),
         "--workdir", str(work / "run"), "--keep", "--json", str(out), "--hang-seconds", "3",
         "--inject-crash", str(CRASH_AT), "--inject-hang", str(HANG_AT), "--max-bisect", "1"],
        capture_output=True, text=True, timeout=400, cwd=str(REPO))
    assert out.exists(), f"fuzz run wrote no summary (rc {proc.returncode}):\n{proc.stderr}"
    summary = json.loads(out.read_text())
    summary["_stdout"] = proc.stdout
    summary["_rc"] = proc.returncode
    return summary


def test_every_stream_ends_in_a_documented_outcome(fuzz_run):
    s = fuzz_run
    assert s["streams"] == STREAMS  # every case ran, the ones after the crash and hang too
    undocumented = {o: n for o, n in s["totals"].items()
                    if o not in DOCUMENTED | {"ok bit-exact", "ok not bit-exact", "CRASH", "HANG"}}
    assert not undocumented, (undocumented, json.dumps(s["defects"][:3], indent=1))
    assert s["totals"].get("OTHER", 0) == 0


def test_no_crash_or_hang_but_the_injected_ones(fuzz_run):
    failures = {(f["outcome"], f["case"]) for f in fuzz_run["failures"]}
    assert failures == {("CRASH", CRASH_AT), ("HANG", HANG_AT)}, fuzz_run["failures"]
    crash = next(f for f in fuzz_run["failures"] if f["outcome"] == "CRASH")
    assert crash["exit"] < 0  # killed by a signal (SIGSEGV), seen by the parent
    assert crash["alone"]["outcome"] == "CRASH"  # reproduced in a fresh worker
    assert Path(crash["stream"]).is_file()  # the offending stream is kept
    hang = next(f for f in fuzz_run["failures"] if f["outcome"] == "HANG")
    assert "Timeout" in hang["stderr"]  # faulthandler's watchdog dumped the stack


def test_fuzzing_reaches_every_stage_of_the_decoder(fuzz_run):
    """Streams that only ever failed framing checks would prove nothing about the decoders."""
    totals, counts = fuzz_run["totals"], fuzz_run["counts"]
    for outcome in ("ok bit-exact", "ContainerError", "EntropyStreamError",
                    "VerificationError", "ModelMismatchError"):
        assert totals.get(outcome, 0) > 0, (outcome, totals)
    assert set(counts) >= {"truncation", "bytes", "wire", "fields", "payload", "runs",
                           "zero-head", "side-info", "bounds", "huge", "latents", "splice",
                           "crafted"}
    # crafted latents pass rANS and their symbol checksums, so the networks run on them
    assert counts["latents"].get("VerificationError", 0) > 0
    assert max(b["rss_mb"] for b in fuzz_run["batches"]) > 0


def test_hostile_bounds_are_refused_in_the_fuzz_run(fuzz_run):
    rows = fuzz_run["hostile"]
    assert {r["model"] for r in rows} >= {"bmshj2018-hyperprior-q2", "octree-ctx-v1"}
    for r in rows:
        assert r["all_refused"] and r["outcome"] == "ContainerError", r
        assert r["network_calls"] == 0, r


# ------------------------------------------------------------ hostile bounds, in-process


class NetworkRan(AssertionError):
    pass


def _fail(*args, **kwargs):
    raise NetworkRan("a network ran on a stream with a hostile error bound")


@pytest.fixture(scope="module")
def image_codec():
    from reprocodec.image import ImageCodec

    return ImageCodec.load("mbt2018-mean-q1")  # three protected decisions


@pytest.fixture(scope="module")
def cloud_codec():
    from reprocodec.pointcloud import PointCloudCodec

    return PointCloudCodec.load()


def _image_stream(codec) -> pb.Bitstream:
    from reprocodec.image.io import read_image

    pixels = read_image(SAMPLES / "chelsea.png")[:64, :64]
    return codec.encode(np.ascontiguousarray(pixels), "syndrome", "both")


def _cloud_stream(codec) -> pb.Bitstream:
    from reprocodec.pointcloud.ply import read_ply

    # Learned on every level: a stream with protected occupancy logits whose bound to tamper.
    return codec.encode(read_ply(SAMPLES / "camel_d6.ply"), "syndrome", depth=3,
                        coders="learned")


def _with_bounds(msg: pb.Bitstream, factor: float, only: str | None = None) -> bytes:
    """The stream with its bounds times `factor`, CRCs valid (as an attacker would frame it)."""
    out = pb.Bitstream()
    out.CopyFrom(msg)
    for t in out.protected:
        if only is None or t.name == only:
            t.bound.value *= factor
    for p in out.payloads:
        p.crc32 = container.crc32(p.data)
    return out.SerializeToString(deterministic=True)


def _block_networks(monkeypatch, codec) -> None:
    if codec.kind == "image":
        for name in ("h_s", "g_s"):
            monkeypatch.setattr(getattr(codec.model, name), "forward", _fail)
    else:
        for name in ("logits", "logits_of"):  # logits_of is what decode calls
            monkeypatch.setattr(codec.networks, name, _fail)


@pytest.mark.parametrize("factor", [1e6, 17.0])
def test_hostile_image_bound_refused_before_any_network(image_codec, monkeypatch, factor):
    msg = _image_stream(image_codec)
    _block_networks(monkeypatch, image_codec)
    # the blocked networks would run on the honest stream: the check below can fail
    with pytest.raises(NetworkRan):
        image_codec.decode(container.unpack(container.pack(msg)))
    for t in msg.protected:  # each decision alone, and all of them
        with pytest.raises(ContainerError, match="bound"):
            image_codec.decode(container.unpack(_with_bounds(msg, factor, t.name)))
    with pytest.raises(ContainerError, match="bound"):
        image_codec.decode(container.unpack(_with_bounds(msg, factor)))


@pytest.mark.parametrize("factor", [1e6, 17.0])
def test_hostile_cloud_bound_refused_before_any_network(cloud_codec, monkeypatch, factor):
    msg = _cloud_stream(cloud_codec)
    _block_networks(monkeypatch, cloud_codec)
    with pytest.raises(NetworkRan):
        cloud_codec.decode(container.unpack(container.pack(msg)))
    with pytest.raises(ContainerError, match="bound"):
        cloud_codec.decode(container.unpack(_with_bounds(msg, factor)))


@pytest.mark.parametrize("value", [0.1, 1e6])
def test_absolute_hostile_bounds_refused(image_codec, monkeypatch, value):
    """An absolute bound of 0.1 or 1e6 on the pixels (calibrated: about 1e-3)."""
    msg = _image_stream(image_codec)
    pixels = next(t for t in msg.protected if t.name == "pixels")
    pixels.bound.value = value
    _block_networks(monkeypatch, image_codec)
    with pytest.raises(ContainerError, match="bound"):
        image_codec.decode(container.unpack(_with_bounds(msg, 1.0)))


def test_crafted_latents_end_in_a_documented_outcome():
    """bench/fuzz.py 'latents': a well-formed y payload of extreme symbols with its symbol
    checksum reaches the synthesis (NaN or infinity in float32). With the pixels unprotected
    (level 'decoding') the decoder returns an image or answers with one of its documented
    errors, never another exception."""
    from reprocodec import entropy
    from reprocodec.checksum import checksum
    from reprocodec.image import ImageCodec
    from reprocodec.image.io import read_image

    codec = ImageCodec.load("bmshj2018-hyperprior-q1")
    pixels = read_image(SAMPLES / "chelsea.png")[:64, :64]
    capture: dict = {}
    msg = codec.encode(np.ascontiguousarray(pixels), "syndrome", "decoding", capture=capture)
    y = next(p for p in msg.payloads if p.name == "y")
    indexes = capture["scale_index_indices"].reshape(-1)
    for value in (entropy.MAX_MAGNITUDE - 1024, -(entropy.MAX_MAGNITUDE - 1024)):
        symbols = np.full(indexes.size, value, np.int32)
        y.data = entropy.encode(symbols, indexes, codec.latent.tables)
        y.symbols_checksum = checksum(symbols.reshape(tuple(y.shape)))
        try:
            decoded = codec.decode(container.unpack(container.pack(msg)))
        except ReprocodecError:
            continue
        assert decoded.pixels.shape == (64, 64, 3) and decoded.pixels.dtype == np.uint8
