"""Training pipeline: a few steps learn, export ships exactly what update() saw, data crops."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reprocodec.train.data import grid_crops, jpeg_downscale_factor
from reprocodec.train.evaluate import code_image, load_checkpoint_model
from reprocodec.train.export import CDF_BUFFERS, export, load_shipped
from reprocodec.train.train import TrainConfig, load_init, train

TINY = dict(N=16, M=24, patch=64, batch=2, log_every=5, save_every=10, threads=1)


def smooth_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Low-frequency synthetic images: compressible, so a few steps measurably help."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        f = rng.uniform(0.5, 3.0, (3, 2))
        ph = rng.uniform(0, 6.3, 3)
        for c in range(3):
            wave = np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c])
            out[i, :, :, c] = np.clip(127.5 + 100 * wave, 0, 255)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, TrainConfig]:
    root = tmp_path_factory.mktemp("train")
    np.save(root / "patches.npy", smooth_images(6, 96))
    cfg = TrainConfig(name="tiny", data=str(root / "patches.npy"), runs=str(root / "runs"),
                      steps=40, lr=1e-3, lmbda=0.01, **TINY)
    return root, train(cfg, log=lambda s: None), cfg


def test_training_steps_reduce_the_loss(trained):
    _, result, _ = trained
    losses = [h["loss"] for h in result["history"]]
    assert result["steps"] == 40 and len(losses) == 8
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_rerun_resumes_from_the_checkpoint_instead_of_retraining(trained):
    _, result, cfg = trained
    again = train(cfg, log=lambda s: None)
    assert again["history"] == result["history"]


def test_export_sha256_and_cdfs_round_trip(trained, tmp_path):
    _, result, _ = trained
    meta = export(Path(result["checkpoint"]), "bmshj2018-hyperprior-q9", 9, out_dir=tmp_path,
                  aux_steps=20)
    pt, js = tmp_path / "bmshj2018-hyperprior-q9.pt", tmp_path / "bmshj2018-hyperprior-q9.json"
    assert json.loads(js.read_text()) == meta
    assert meta["weights_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert (meta["architecture"], meta["N"], meta["M"]) == ("bmshj2018-hyperprior", 16, 24)
    assert meta["training"]["steps"] == 40

    blob = torch.load(pt, map_location="cpu", weights_only=True)
    params = {k for k, v in blob["state_dict"].items() if v.dtype == torch.float16}
    assert "g_a.0.weight" in params and "entropy_bottleneck.quantiles" in params
    # scale_table must stay fp32: it feeds the scale-index decision and fp16 would change it.
    assert blob["state_dict"]["gaussian_conditional.scale_table"].dtype == torch.float32

    # The file's CDF tables are exactly what update(force=True) computes from the file's own
    # (fp16-rounded) parameters, so a loader never needs to call update().
    shipped = load_shipped(pt)
    loaded = {k: v.clone() for k, v in shipped.state_dict().items()}
    shipped.update(force=True)
    recomputed = shipped.state_dict()
    for module in ("entropy_bottleneck", "gaussian_conditional"):
        for buf in CDF_BUFFERS:
            key = f"{module}.{buf}"
            assert loaded[key].dtype == torch.int32 and loaded[key].numel() > 0
            assert torch.equal(loaded[key], recomputed[key]), key
    assert torch.equal(loaded["gaussian_conditional.scale_table"],
                       recomputed["gaussian_conditional.scale_table"])


def test_export_without_aux_refinement_matches_the_checkpoint(trained, tmp_path):
    _, result, _ = trained
    export(Path(result["checkpoint"]), "m0", 1, out_dir=tmp_path, aux_steps=0)
    loaded = load_shipped(tmp_path / "m0.pt").state_dict()
    reference = load_checkpoint_model(Path(result["checkpoint"])).state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_exported_model_codes_real_bitstreams(trained, tmp_path):
    _, result, _ = trained
    export(Path(result["checkpoint"]), "m", 1, out_dir=tmp_path, aux_steps=0)
    model = load_shipped(tmp_path / "m.pt")
    pixels = smooth_images(1, 70, seed=3)[0]  # not a multiple of 64: exercises the padding
    nbytes, rec = code_image(model, pixels)
    assert nbytes > 0 and rec.shape == pixels.shape and rec.dtype == np.uint8
    again = code_image(load_shipped(tmp_path / "m.pt"), pixels)
    assert again[0] == nbytes and np.array_equal(again[1], rec)


def test_mbt_initialisation_copies_the_shared_transforms(trained):
    _, result, _ = trained
    from reprocodec.train.models import build_model

    mbt = build_model("mbt2018-mean", 16, 24)
    copied, init_step = load_init(mbt, result["checkpoint"])
    assert init_step == 40
    src = torch.load(result["checkpoint"], weights_only=False)["model"]
    assert any(k.startswith("g_a.") for k in copied) and any(k.startswith("g_s.") for k in copied)
    assert not any(k.startswith("h_s.") for k in copied)  # different shapes in mbt2018-mean
    assert torch.equal(mbt.state_dict()["g_s.0.weight"], src["g_s.0.weight"])


def test_unknown_architecture_is_a_clear_error():
    from reprocodec.train.models import build_model

    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("cheng2020", 8, 8)


def test_grid_crops_and_jpeg_downscale():
    img = np.arange(300 * 530 * 3, dtype=np.uint32).reshape(300, 530, 3).astype(np.uint8)
    crops = grid_crops(img, 128)
    assert len(crops) == 2 * 4 and all(c.shape == (128, 128, 3) for c in crops)
    assert np.array_equal(crops[0], img[22:150, 9:137])
    assert jpeg_downscale_factor(2560, 1600) == 2 or jpeg_downscale_factor(2560, 1600) == 3
    assert jpeg_downscale_factor(5120, 2880) == 4 and jpeg_downscale_factor(800, 600) == 2


@pytest.mark.parametrize("fmt", ["JPEG", "WebP", "AVIF"])
def test_reference_format_curve_is_monotone_and_interpolates(fmt):
    from reprocodec.train.evaluate import pillow_writes, psnr_at, reference_points

    if not pillow_writes(fmt):
        pytest.fail(f"the pinned Pillow must write {fmt}: train.evaluate compares against it")
    pixels = smooth_images(1, 80, seed=5)[0]
    points = reference_points(pixels, fmt)
    bpps = [b for b, _ in points]
    assert bpps == sorted(bpps) and bpps[0] < bpps[-1]
    assert points[0][1] < points[-1][1]  # more bits, higher PSNR at the ends
    mid = (points[0][0] + points[-1][0]) / 2
    assert min(p for _, p in points) <= psnr_at(points, mid) <= max(p for _, p in points)
    assert np.isnan(psnr_at(points, bpps[-1] * 2)) and np.isnan(psnr_at(points, bpps[0] / 2))


def test_shipped_evaluation_table_compares_at_the_same_bpp(tmp_path):
    from PIL import Image

    from reprocodec.image.testing import sample_crop, write_test_models
    from reprocodec.train.evaluate import evaluate_shipped, markdown_table

    names = write_test_models(tmp_path / "w")
    Image.fromarray(sample_crop(height=96, width=128)).save(tmp_path / "a.png")
    first = sorted(names.values())[0]
    result = evaluate_shipped([tmp_path / "a.png"], [first], tmp_path / "w", log=lambda s: None)
    (row,) = result["models"]
    assert row["model"] == first and row["all_bit_exact"] and row["bpp"] > 0
    # A random model is far worse than JPEG at its own (high) bpp, or outside JPEG's range.
    assert row["gain_over_jpeg_db"] is None or row["gain_over_jpeg_db"] < 0
    for fmt in ("jpeg", "webp", "avif"):  # one image: the gain is PSNR minus the format's
        if row[f"{fmt}_images_out_of_range"] == 0:
            assert row[f"gain_over_{fmt}_db"] == pytest.approx(
                row["psnr"] - row[f"{fmt}_psnr_at_same_bpp"], abs=2e-3)
        else:
            assert row[f"gain_over_{fmt}_db"] is None and row[f"{fmt}_psnr_at_same_bpp"] is None
    table = markdown_table(result)
    assert table.count("\n") == 3 and f"| {first} |" in table
