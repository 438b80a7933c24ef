"""Image codec, in process (profile cpu), on tiny random models built by the shipped loader."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("compressai")

from reprocodec import container, numerics  # noqa: E402
from reprocodec.errors import (  # noqa: E402
    ContainerError,
    InputError,
    ModelMismatchError,
    TooLargeError,
    UnknownModelError,
    VerificationError,
)
from reprocodec.image import ImageCodec, list_models  # noqa: E402
from reprocodec.image.io import decode_image_bytes, encode_png  # noqa: E402
from reprocodec.image.testing import sample_crop, write_test_models  # noqa: E402

MODES = ["none", "flags", "simplified", "syndrome"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    names = write_test_models(d)
    return {k: ImageCodec.load(v, str(d)) for k, v in names.items()} | {"dir": d}


def roundtrip(codec, pixels, mode="syndrome", level="both"):
    capture: dict = {}
    data = container.pack(codec.encode(pixels, mode, level, capture=capture))
    return codec.decode(container.unpack(data)), capture


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", ["decoding", "reconstruction", "both"])
def test_roundtrip_reproduces_encoder_output(models, mode, level):
    pixels = sample_crop()
    decoded, enc = roundtrip(models["mbt"], pixels, mode, level)
    assert decoded.bit_exact
    assert decoded.pixels.shape == pixels.shape and decoded.pixels.dtype == np.uint8
    assert np.array_equal(decoded.pixels, enc["output"])
    names = {t.name for t in decoded.tensors}
    assert names == {"scale_index", "mean_grid"} | ({"pixels"} if level != "decoding" else set())


@pytest.mark.parametrize("shape", [(1, 1, 3), (65, 3, 3), (17, 130, 1), (64, 64, 1)])
def test_odd_sizes_and_greyscale(models, shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    decoded, enc = roundtrip(models["bmshj"], pixels)
    assert decoded.pixels.shape == shape
    assert decoded.bit_exact and np.array_equal(decoded.pixels, enc["output"])


def test_greyscale_output_is_the_protected_value(models):
    grey = sample_crop()[:, :, :1]
    decoded, enc = roundtrip(models["mbt"], grey)
    assert decoded.pixels.shape == grey.shape
    assert np.array_equal(decoded.pixels, enc["pixels_indices"].astype(np.uint8))
    # a real reconstruction, not a constant image
    assert decoded.pixels.std() > 1


def test_weights_mismatch_is_refused(models):
    msg = models["bmshj"].encode(sample_crop())
    with pytest.raises(ModelMismatchError, match="weights"):
        models["other"].decode(msg)


def _perturb_with(monkeypatch, eps: float, only: str | None = None, seed: int = 1):
    """Emulate a decoder whose protected floats differ by up to eps (x|v| if relative)."""
    rng = np.random.default_rng(seed)

    def perturb(name, values, bound):
        if only is not None and name != only:
            return values
        noise = rng.uniform(-eps, eps, size=values.shape)
        return values + (noise * np.abs(values) if bound.kind == "relative" else noise)

    monkeypatch.setattr(numerics, "perturb", perturb)


@pytest.mark.parametrize("mode", ["flags", "simplified", "syndrome"])
def test_noise_within_bound_decodes_exactly(models, monkeypatch, mode):
    codec = models["mbt"]
    msg = codec.encode(sample_crop(), mode, "both")
    # 0.9 x the smallest bound in the stream keeps every tensor inside its own bound
    eps = 0.9 * min(t.bound.value for t in msg.protected)
    _perturb_with(monkeypatch, eps)
    decoded = codec.decode(msg)
    assert decoded.bit_exact


@pytest.mark.parametrize("mode", MODES)
def test_noise_beyond_bound_is_detected(models, monkeypatch, mode):
    codec = models["mbt"]
    msg = codec.encode(sample_crop(), mode, "both")
    _perturb_with(monkeypatch, 0.05)  # far beyond every default bound
    with pytest.raises(VerificationError):
        codec.decode(msg)
    # the benchmark's unverified path decodes on and reports the mismatch instead
    decoded = codec.decode(msg, verify=False)
    assert not all(t.matched for t in decoded.tensors)


def test_decoding_level_reports_output_mismatch_without_error(models, monkeypatch):
    codec = models["mbt"]
    msg = codec.encode(sample_crop(), "syndrome", "decoding")
    _perturb_with(monkeypatch, 0.6, only="pixels")  # pixel floats move by up to 0.6 of a level
    decoded = codec.decode(msg)
    assert decoded.bit_exact is False
    assert all(t.matched for t in decoded.tensors)


def test_mode_none_flip_is_detected_by_checksum(models):
    codec = models["bmshj"]
    msg = codec.encode(sample_crop(), "none", "decoding")
    msg.protected[0].indices_checksum ^= 1  # as if one index had flipped on this decoder
    with pytest.raises(VerificationError, match="scale_index"):
        codec.decode(msg)


def test_corrupt_streams_never_reach_rans(models):
    codec = models["bmshj"]
    data = bytearray(container.pack(codec.encode(sample_crop())))
    msg = container.unpack(bytes(data))
    y = next(p for p in msg.payloads if p.name == "y")
    y.data = bytes([y.data[0] ^ 0xFF]) + y.data[1:]  # crc no longer matches
    with pytest.raises(ContainerError):
        codec.decode(msg)
    msg = container.unpack(bytes(data))
    msg.image.height += 64  # header and payload shapes disagree
    with pytest.raises(ContainerError):
        codec.decode(msg)
    msg = container.unpack(bytes(data))
    del msg.protected[0]
    with pytest.raises(ContainerError):
        codec.decode(msg)


def _png(pixels):
    return encode_png(pixels)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", None],
    ids=["empty", "garbage", "truncated"],
)
def test_unreadable_images_raise_input_error(data):
    if data is None:
        data = _png(sample_crop())[:200]
    with pytest.raises(InputError):
        decode_image_bytes(data)


def test_too_large_and_bad_arrays(models):
    with pytest.raises(TooLargeError):
        decode_image_bytes(_png(sample_crop()), max_pixels=100)
    with pytest.raises(InputError):
        models["bmshj"].encode(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(InputError):
        models["bmshj"].encode(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(InputError):
        models["bmshj"].encode(np.zeros((5, 5, 4), np.uint8))


def test_any_pillow_format_and_greyscale_modes():
    from PIL import Image

    rgb = sample_crop()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    assert decode_image_bytes(buf.getvalue()).shape == rgb.shape
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(buf, format="PNG")
    assert decode_image_bytes(buf.getvalue()).shape == (*rgb.shape[:2], 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="GIF")
    assert decode_image_bytes(buf.getvalue()).shape == rgb.shape


def test_official_checkpoint_is_imported_once_then_loads_like_shipped_weights(tmp_path):
    import torch
    from compressai.models import MeanScaleHyperprior

    from reprocodec.image.models import import_checkpoint

    torch.manual_seed(3)
    net = MeanScaleHyperprior(8, 12)
    raw = tmp_path / "before_update.pth.tar"
    torch.save({"state_dict": net.state_dict()}, raw)  # a training checkpoint: no tables yet
    net.update(force=True)
    updated = tmp_path / "mbt2018-mean-official.pth"
    torch.save(net.state_dict(), updated)  # what CompressAI's zoo ships
    out = tmp_path / "weights"
    calls: list = []
    for i, path in enumerate((raw, updated)):
        info = import_checkpoint(path, "mbt2018-mean", f"imported-{i}", out_dir=out)
        assert (info.N, info.M) == (8, 12)
        codec = ImageCodec.load(info.name, str(out))  # verifies the written file's SHA-256
        codec.model.update = lambda *a, **k: calls.append(a)  # decoding never recomputes
        decoded, enc = roundtrip(codec, sample_crop(height=40, width=50))
        assert decoded.bit_exact and np.array_equal(decoded.pixels, enc["output"])
    assert calls == []
    with pytest.raises(InputError):
        import_checkpoint(raw, "bmshj2018-hyperprior", "wrong", out_dir=out)  # architecture
    with pytest.raises(InputError):
        import_checkpoint(tmp_path / "missing.pth", "mbt2018-mean", "x", out_dir=out)


def test_list_models_reads_the_weights_folder(models):
    infos = list_models(models["dir"])
    assert {i.architecture for i in infos} == {"bmshj2018-hyperprior", "mbt2018-mean"}
    assert all(len(i.weights_sha256) == 64 for i in infos)


def test_bad_parameters_are_input_errors(models):
    with pytest.raises(InputError, match="mode"):
        models["bmshj"].encode(sample_crop(), "paranoid")
    with pytest.raises(InputError, match="level"):
        models["bmshj"].encode(sample_crop(), "syndrome", "everything")


def test_a_stream_cannot_name_a_weights_file_outside_the_weights_folder(models):
    msg = models["bmshj"].encode(sample_crop(), "syndrome")
    for name in ("/tmp/elsewhere/planted", "../weights/x", "a b"):
        msg.model = name
        with pytest.raises(ContainerError, match="model name"):
            container.unpack(msg.SerializeToString())
        with pytest.raises(UnknownModelError):
            ImageCodec.load(name, str(models["dir"]))


def test_protected_pixels_with_an_altered_output_checksum_are_refused(models):
    msg = models["bmshj"].encode(sample_crop(), "syndrome", "both")
    msg.output_checksum ^= 1
    with pytest.raises(ContainerError, match="output checksum"):
        models["bmshj"].decode(container.unpack(container.pack(msg)))
    decoding_only = models["bmshj"].encode(sample_crop(), "syndrome", "decoding")
    decoding_only.output_checksum ^= 1  # unprotected pixels: exactness is reported
    assert not models["bmshj"].decode(container.unpack(container.pack(decoding_only))).bit_exact


def test_large_images_synthesize_in_tiles_within_the_pixel_bound(models, monkeypatch):
    """Tiled float64 synthesis computes the same expression as the whole image (the halo
    covers g_s's receptive field): differences are summation-order noise, far inside the
    bound, and a stream decodes bit-exactly whichever way each side tiles."""
    import torch

    from reprocodec.image import codec as codec_module

    codec = models["bmshj"]
    y_hat = torch.randn(1, codec.model.M, 70, 68) * 3  # 70 x 68 latents: 9 tiles of 32
    tiled = codec._synthesis(y_hat, 1110, 1080, 3)
    monkeypatch.setattr(codec_module, "SYNTHESIS_TILE", 10_000)
    whole = codec._synthesis(y_hat, 1110, 1080, 3)
    difference = float(np.abs(tiled - whole).max())
    assert difference < 1e-9 < codec.decisions["pixels"].bound.value
    pixels = np.tile(sample_crop(height=100, width=120), (12, 9, 1))[:1110, :1080]
    msg = container.unpack(container.pack(codec.encode(pixels)))  # encoder: whole
    monkeypatch.setattr(codec_module, "SYNTHESIS_TILE", 48)
    decoded = codec.decode(msg)  # decoder: tiles
    assert decoded.bit_exact
