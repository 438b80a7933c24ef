"""mbt2018-mean-checkerboard: two decoding passes (anchors, then non-anchors from the anchors'
context), each with its own protected decisions, resolved before the pass is entropy-decoded.
Random models in the shipped format (no trained weights); the cross-profile checks run
through the real CLI in one process per numerics profile, as for the hyperprior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("compressai")

import torch  # noqa: E402

from reprocodec import container  # noqa: E402
from reprocodec.errors import ContainerError, VerificationError  # noqa: E402
from reprocodec.image.checkerboard import (  # noqa: E402
    ARCHITECTURE,
    MeanScaleCheckerboard,
    anchor_mask,
    pass_mask,
)
from reprocodec.image.codec import ImageCodec  # noqa: E402
from reprocodec.image.testing import (  # noqa: E402
    decode_matches_capture,
    run_cli,
    sample_crop,
    write_crossprofile_inputs,
    write_random_model,
)
from reprocodec.v1 import bitstream_pb2 as pb  # noqa: E402

PASS_RECORDS = ["scale_index.anchors", "mean_grid.anchors",
                "scale_index.non_anchors", "mean_grid.non_anchors"]
# Wide bounds (still within the decoder's 16x rule of themselves): every pass then has risky
# elements, so its side information is what makes a noisy decoder reproduce the encoder.
WIDE = {"scale_index": {"kind": "relative", "value": 1e-3},
        "mean_grid": {"kind": "absolute", "value": 1e-3},
        "pixels": {"kind": "absolute", "value": 1e-3}}
DECODER_PROFILES = ["cpu-nomkldnn", "cpu-channels-last", "emulate-splitk", "emulate-tf32"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cb-weights")
    write_random_model(d, ARCHITECTURE, name="cb", seed=0)
    write_random_model(d, ARCHITECTURE, name="cb-wide", seed=0, bounds=WIDE)
    write_random_model(d, "mbt2018-mean", name="mbt", seed=0)
    return d


@pytest.fixture(scope="module")
def codec(weights) -> ImageCodec:
    return ImageCodec.load("cb", str(weights))


@pytest.fixture(scope="module")
def wide(weights) -> ImageCodec:
    return ImageCodec.load("cb-wide", str(weights))


def _reframed(msg: pb.Bitstream, edit) -> pb.Bitstream:
    """A copy of the stream changed by `edit`, every CRC valid (as an attacker would frame it)."""
    out = pb.Bitstream()
    out.CopyFrom(msg)
    edit(out)
    for t in out.protected:
        t.side_info_crc32 = container.crc32(t.side_info)
    for p in out.payloads:
        p.crc32 = container.crc32(p.data)
    return container.unpack(out.SerializeToString(deterministic=True))


@pytest.mark.parametrize("mode", ["syndrome", "flags", "simplified", "none"])
@pytest.mark.parametrize("hwc", [(70, 90, 3), (33, 130, 1)])
def test_round_trip_is_bit_exact(codec, mode, hwc):
    h, w, c = hwc
    pixels = np.ascontiguousarray(sample_crop(height=h, width=w)[:, :, :c])
    capture: dict = {}
    msg = codec.encode(pixels, mode, "both", capture=capture)
    assert sorted(p.name for p in msg.payloads) == ["y.anchors", "y.non_anchors", "z"]
    assert sorted(t.name for t in msg.protected) == sorted([*PASS_RECORDS, "pixels"])
    back: dict = {}
    out = codec.decode(container.unpack(container.pack(msg)), capture=back)
    assert out.bit_exact and out.pixels.shape == (h, w, c)
    assert np.array_equal(out.pixels, capture["output"])
    assert torch.equal(back["y_hat"], capture["y_hat"])
    for name in PASS_RECORDS:
        assert np.array_equal(back[f"{name}_indices"], capture[f"{name}_indices"])


def test_the_two_passes_split_the_latents_exactly(codec):
    pixels = sample_crop(height=70, width=90)  # 128 x 128 padded: an 8 x 8 latent grid
    capture: dict = {}
    msg = codec.encode(pixels, "syndrome", "both", capture=capture)
    m, (h, w) = codec.model.M, capture["y_hat"].shape[-2:]
    payloads = {p.name: p for p in msg.payloads}
    anchors = anchor_mask(h, w)
    assert anchors.sum() == (~anchors).sum() == h * w // 2
    assert anchors[0, 0] and not anchors[0, 1] and anchors[1, 1]  # CompressAI's "even"
    for tag, mask in (("anchors", anchors), ("non_anchors", ~anchors)):
        assert list(payloads[f"y.{tag}"].shape) == [m, 1, int(mask.sum())]
        for kind in ("scale_index", "mean_grid"):
            t = next(t for t in msg.protected if t.name == f"{kind}.{tag}")
            assert list(t.shape) == [1, m, 1, int(mask.sum())]
    # Each pass's y_hat is its symbols plus its grid means, at exactly its own positions.
    y_hat = capture["y_hat"][0].numpy()
    for step, tag in enumerate(("anchors", "non_anchors")):
        mask = pass_mask(h, w, step)
        means = capture[f"mean_grid.{tag}_indices"][0, :, 0] / 32.0
        pass_values = y_hat[:, mask]
        assert np.array_equal(pass_values - means, np.round(pass_values - means))
    # the non-anchors' context depends on the anchors: their parameters change with them
    hyper = codec._hyper(capture["z_hat"])
    y64 = capture["y_hat"].to(torch.float64) * torch.from_numpy(anchors)
    with torch.no_grad():
        base = codec.model.pass_params(hyper, y64, ~anchors)
        y64[0, :, 0, 0] += 3.0
        moved = codec.model.pass_params(hyper, y64, ~anchors)
    assert not torch.equal(base, moved)


def test_each_pass_is_resolved_before_it_is_entropy_decoded(codec, monkeypatch):
    from reprocodec.decision import ProtectedDecision

    msg = codec.encode(sample_crop(), "syndrome", "both")
    events: list[str] = []
    resolve, decode = ProtectedDecision.resolve, codec.checkerboard.latent.decode

    def logged_resolve(self, t, *args, **kwargs):
        events.append(f"resolve {t.name}")
        return resolve(self, t, *args, **kwargs)

    def logged_decode(data, scale_index, *args, **kwargs):
        events.append(f"decode {scale_index.shape[-1]}")
        return decode(data, scale_index, *args, **kwargs)

    monkeypatch.setattr(ProtectedDecision, "resolve", logged_resolve)
    monkeypatch.setattr(codec.checkerboard.latent, "decode", logged_decode)
    assert codec.decode(msg).bit_exact
    n = int(anchor_mask(8, 8).sum())
    assert events == ["resolve scale_index.anchors", "resolve mean_grid.anchors", f"decode {n}",
                      "resolve scale_index.non_anchors", "resolve mean_grid.non_anchors",
                      f"decode {n}", "resolve pixels"]


def test_pass_two_side_information_is_needed_and_tampering_never_returns_an_image(wide):
    pixels = sample_crop()
    msg = wide.encode(pixels, "flags", "both")
    records = {t.name: t for t in msg.protected}
    assert all(records[n].risky_count > 0 for n in PASS_RECORDS), \
        {n: records[n].risky_count for n in PASS_RECORDS}

    # Every single-bit change of pass 2's side information (the flags' direction bits sit at
    # its end) is refused: malformed (INVALID_ARGUMENT) or wrong indices (DATA_LOSS, caught
    # by pass 2's index checksum before its symbols are decoded); never an image.
    for name in ("scale_index.non_anchors", "mean_grid.non_anchors"):
        outcomes = set()
        size = len(records[name].side_info)
        for bit in range(8 * max(0, size - 2), 8 * size):
            def flip(out: pb.Bitstream, name=name, bit=bit) -> None:
                t = next(t for t in out.protected if t.name == name)
                data = bytearray(t.side_info)
                data[bit // 8] ^= 1 << (bit % 8)
                t.side_info = bytes(data)

            with pytest.raises((ContainerError, VerificationError)) as exc:
                wide.decode(_reframed(msg, flip))
            assert name in str(exc.value)
            outcomes.add(exc.type)
        assert VerificationError in outcomes, (name, outcomes)

    def drop_pass_two(out: pb.Bitstream) -> None:
        keep = [t for t in out.protected if not t.name.endswith(".non_anchors")]
        del out.protected[:]
        out.protected.extend(keep)

    with pytest.raises(ContainerError, match="protects"):
        wide.decode(_reframed(msg, drop_pass_two))

    def swap_passes(out: pb.Bitstream) -> None:  # pass 1's payload where pass 2's belongs
        p = {p.name: p for p in out.payloads}
        p["y.anchors"].data, p["y.non_anchors"].data = (p["y.non_anchors"].data,
                                                        p["y.anchors"].data)

    with pytest.raises((ContainerError, VerificationError)):
        wide.decode(_reframed(msg, swap_passes))


class NetworkRan(AssertionError):
    pass


def _fail(*args, **kwargs):
    raise NetworkRan("a network ran on a stream with a hostile error bound")


@pytest.mark.parametrize("factor", [1e6, 17.0])
def test_hostile_bound_on_either_pass_refused_before_any_network(codec, monkeypatch, factor):
    msg = codec.encode(sample_crop(height=40, width=40), "syndrome", "both")
    for name in ("h_s", "g_s", "context_prediction", "entropy_parameters"):
        monkeypatch.setattr(getattr(codec.model, name), "forward", _fail)
    with pytest.raises(NetworkRan):  # the blocked networks do run on the honest stream
        codec.decode(_reframed(msg, lambda out: None))
    for name in [*PASS_RECORDS, None]:
        def widen(out: pb.Bitstream, name=name) -> None:
            for t in out.protected:
                if name is None or t.name == name:
                    t.bound.value *= factor

        with pytest.raises(ContainerError, match="bound"):
            codec.decode(_reframed(msg, widen))


def test_calibration_floats_are_the_passes_floats(codec):
    """network_floats (what `reprocodec calibrate` compares) reports both passes under
    scale_index / mean_grid: each position's float from its own pass, so one calibrated bound
    covers both passes' decisions."""
    pixels = sample_crop(height=50, width=70)
    capture: dict = {}
    codec.encode(pixels, "none", "both", capture=capture)
    floats = codec.network_floats(codec.calibration_sample(pixels))
    h, w = capture["y_hat"].shape[-2:]
    assert floats["scale_index"].shape == floats["mean_grid"].shape == (1, codec.model.M, h, w)
    for step, tag in enumerate(("anchors", "non_anchors")):
        mask = pass_mask(h, w, step)
        for kind in ("scale_index", "mean_grid"):
            d = codec.decisions[f"{kind}.{tag}"]
            assert d.bound == codec.decisions[kind].bound
            got = d.quantizer.index(floats[kind][0][:, mask])
            assert np.array_equal(got, capture[f"{kind}.{tag}_indices"][0, :, 0])


def test_mbt_weights_initialise_the_checkerboard_model(weights):
    """Every mbt2018-mean tensor has the same name and shape in the checkerboard model."""
    from reprocodec.train.models import build_model
    from reprocodec.train.train import load_init

    cb = build_model(ARCHITECTURE, 16, 24)
    assert isinstance(cb, MeanScaleCheckerboard)
    copied, _ = load_init(cb, str(weights / "mbt.pt"))
    mbt = build_model("mbt2018-mean", 16, 24)
    # everything but the CDF tables and scale_table, which export's update() rebuilds
    expected = {k for k in mbt.state_dict() if not k.endswith(
        ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"))}
    assert set(copied) == expected
    src = torch.load(weights / "mbt.pt", weights_only=True)["state_dict"]
    assert torch.equal(cb.state_dict()["h_s.4.weight"], src["h_s.4.weight"].float())
    assert not any(k.startswith(("context_prediction", "entropy_parameters")) for k in copied)


def smooth_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Low-frequency synthetic images (as tests/test_train.py's)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        f, ph = rng.uniform(0.5, 3.0, (3, 2)), rng.uniform(0, 6.3, 3)
        for c in range(3):
            wave = np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c])
            out[i, :, :, c] = np.clip(127.5 + 100 * wave, 0, 255)
    return out


def test_training_forward_export_and_codec_round_trip(tmp_path):
    from reprocodec.train.evaluate import code_image
    from reprocodec.train.export import export, load_shipped
    from reprocodec.train.train import TrainConfig, train

    np.save(tmp_path / "patches.npy", smooth_images(4, 96))
    cfg = TrainConfig(name="cb", arch=ARCHITECTURE, data=str(tmp_path / "patches.npy"),
                      runs=str(tmp_path / "runs"), steps=10, lr=1e-3, lmbda=0.01, N=16, M=24,
                      patch=64, batch=2, log_every=5, save_every=10, threads=1)
    result = train(cfg, log=lambda s: None)
    assert result["steps"] == 10 and all(np.isfinite(h["loss"]) for h in result["history"])
    # the two-pass forward trains the context networks
    ck = torch.load(result["checkpoint"], weights_only=False)["model"]
    fresh = MeanScaleCheckerboard(16, 24).state_dict()
    assert not torch.equal(ck["entropy_parameters.0.weight"], fresh["entropy_parameters.0.weight"])

    meta = export(Path(result["checkpoint"]), "cb-q1", 1, out_dir=tmp_path, aux_steps=0)
    assert meta["architecture"] == ARCHITECTURE
    model = load_shipped(tmp_path / "cb-q1.pt")
    assert isinstance(model, MeanScaleCheckerboard)
    pixels = smooth_images(1, 70, seed=3)[0]
    nbytes, rec = code_image(model, pixels)  # CompressAI-style compress / decompress
    assert nbytes > 0 and rec.shape == pixels.shape

    c = ImageCodec.load("cb-q1", str(tmp_path))
    msg = c.encode(pixels, "syndrome", "both")
    out = c.decode(container.unpack(container.pack(msg)))
    assert out.bit_exact and out.pixels.shape == pixels.shape


# ------------------------------------------------------------------ across numerics profiles

@pytest.fixture(scope="module")
def encoded(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("cb-xprofile")
    inputs = write_crossprofile_inputs(root)
    for model, mode in (("cb", "syndrome"), ("cb-wide", "syndrome"), ("cb-wide", "none")):
        done = run_cli(["encode", *inputs, "-o", str(root / f"{model}-{mode}"), "--local",
                        "--profile", "cpu", "--model", model, "--safeguard", mode, "--level",
                        "both", "--capture", str(root / f"enc-{model}-{mode}")], weights)
        assert done.returncode == 0, done.stderr
    return root


def _decoded_equal(root: Path, weights: Path, stem: str, profile: str) -> None:
    streams = sorted((root / stem).glob("*.rpc"))
    assert len(streams) == 3
    decode_matches_capture(streams, root / f"enc-{stem}",
                           root / f"dec-{stem}-{profile.replace(':', '_')}", profile, weights)


@pytest.mark.parametrize("profile", DECODER_PROFILES)
def test_other_profiles_decode_byte_identical_pngs(encoded, weights, profile):
    _decoded_equal(encoded, weights, "cb-syndrome", profile)


def test_noise_within_the_bound_decodes_only_with_protection(encoded, weights):
    """noise:5e-4 under bounds of 1e-3: every pass's side information repairs it; the same
    noise on an unprotected stream is detected (never an image)."""
    _decoded_equal(encoded, weights, "cb-wide-syndrome", "noise:0.0005")
    stream = sorted((encoded / "cb-wide-none").glob("*.rpc"))[0]
    done = run_cli(["decode", str(stream), "-o", str(encoded / "plain.png"), "--local",
                "--profile", "noise:0.0005"], weights)
    assert done.returncode == 3, done.stderr
    assert not (encoded / "plain.png").exists()


def test_noise_beyond_the_bound_fails_verification_with_one_line(encoded, weights):
    stream = sorted((encoded / "cb-syndrome").glob("*.rpc"))[0]
    done = run_cli(["decode", str(stream), "-o", str(encoded / "noisy.png"), "--local",
                "--profile", "noise:0.05"], weights)
    assert done.returncode == 3
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("reprocodec: error:")]
    assert len(errors) == 1 and "verification" in errors[0]
    assert not (encoded / "noisy.png").exists()


# Streams of the one-pass models written by the codec before the checkerboard existed (commit
# ebd89be), from fixed latents: g_a and h_a are replaced by fixed y and z tensors, so the
# hashes do not depend on this CPU's float32 analysis (h_s and g_s are float64 and protected).
ONE_PASS_STREAMS = {
    ("bmshj", "syndrome", "both"):
        "fbc684ee78e1939adc24f669743c23fde36a308cdb90ea01dff6465bca57ebd0",
    ("bmshj", "flags", "decoding"):
        "ceb1b6074db4e758a1f5598dbefa936dd84e910bd0cf376a6f3c01cfc2c92da6",
    ("bmshj", "none", "both"):
        "2302a3b4104d49ce8ec0e5c20afbb175759a8b2b7b6dcca2eff882ea35a3fa1e",
    ("mbt", "syndrome", "both"):
        "48e2eeccdab8a87e8ef9b2a78411fd157eaa8084089b25f6efbbe6bb573c620b",
    ("mbt", "flags", "decoding"):
        "d951a4437bd935df103c1b4e7cf9765d91a70067bb6f2250ea0abacbeaeebb9e",
    ("mbt", "none", "both"):
        "147dd30cd48514af40db508a0b4719821e50b63b21262377b610c4e683ba7e4a",
}


@pytest.mark.parametrize("key", ["bmshj", "mbt"])
def test_one_pass_streams_are_byte_identical_to_before_the_checkerboard(tmp_path, key):
    import hashlib

    from reprocodec.image.testing import write_test_models

    names = write_test_models(tmp_path)
    c = ImageCodec.load(names[key], str(tmp_path))
    g = torch.Generator().manual_seed(7)
    y = (torch.randn(1, 24, 8, 8, generator=g) * 6).to(torch.float32)
    z = (torch.randn(1, 16, 2, 2, generator=g) * 4).to(torch.float32)
    c._analysis = lambda pixels: y  # type: ignore[method-assign]
    c.model.h_a.forward = lambda t: z
    for (k, mode, level), digest in ONE_PASS_STREAMS.items():
        if k != key:
            continue
        msg = c.encode(np.zeros((70, 90, 3), np.uint8), mode, level)
        got = hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()
        assert got == digest, (mode, level)
        assert c.decode(msg).bit_exact
