"""Rate-distortion of image models on a folder of images, from real bitstreams.

``python -m reprocodec.train.evaluate --shipped [--images DIR] [--json F] [--plot F.png]``:
every shipped image model through the product codec (default settings: syndrome safeguard at
both levels, so protection is in the bytes; bpp counts the whole container), with RGB PSNR,
MS-SSIM, encode/decode seconds, and Pillow JPEG, WebP (method 6) and AVIF (speed 6) at the
same bpp: each format's quality is swept per image and its PSNR interpolated at that image's
bpp, then averaged (an image whose bpp lies outside a format's range is left out of that
mean, and counted). Prints a Markdown table; --plot draws the curves with CompressAI's
published bmshj2018-hyperprior Kodak points.

``python -m reprocodec.train.evaluate --weights reprocodec/weights/NAME.pt --images DIR [--record]``
(or ``--checkpoint runs/X/checkpoint.pt`` for a model still training): the model's own
compress()/decompress(), the quick check while training.

Each image is padded to a multiple of 64, run through the model's own compress()/decompress(),
and measured with bpp = 8 * (bytes of every entropy-coded string) / (H * W) and RGB PSNR of the
8-bit reconstruction against the 8-bit original; the means over images are reported (CompressAI's
convention). ``--record`` writes the result as "eval_<folder>" into the weights' .json (the .pt is
untouched, so its SHA-256 stays valid).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reprocodec.image.io import psnr
from reprocodec.train.export import load_shipped, round_through_fp16
from reprocodec.train.models import build_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff"}


def load_checkpoint_model(path: Path) -> torch.nn.Module:
    """A training checkpoint prepared exactly as export() would ship it."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build_model(cfg["arch"], cfg["N"], cfg["M"])
    model.load_state_dict(ck["model"], strict=False)
    round_through_fp16(model)
    model.update(force=True)
    return model.eval()


@torch.no_grad()
def code_image(model: torch.nn.Module, pixels: np.ndarray) -> tuple[int, np.ndarray]:
    """(bitstream bytes, reconstructed uint8 pixels) through compress()/decompress()."""
    h, w = pixels.shape[:2]
    # A copy: decoded PNGs can be read-only arrays, which torch warns about.
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255.0
    ph, pw = (-h) % 64, (-w) % 64
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    enc = model.compress(x)
    nbytes = sum(len(s) for group in enc["strings"] for s in group)
    x_hat = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    x_hat = x_hat[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    rec = (x_hat[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return nbytes, rec


def evaluate(model: torch.nn.Module, images: list[Path], log=None, jpeg: bool = False) -> dict:
    """Mean bpp / RGB PSNR; with jpeg, also Pillow JPEG's PSNR at each image's bpp (mean)."""
    bpps, psnrs, jpegs = [], [], []
    t0 = time.time()
    for path in images:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        nbytes, rec = code_image(model, pixels)
        bpps.append(8 * nbytes / (pixels.shape[0] * pixels.shape[1]))
        psnrs.append(psnr(pixels, rec))
        if jpeg:
            jpegs.append(psnr_at(reference_points(pixels, "JPEG"), bpps[-1]))
        if log:
            log(f"{path.name}: {bpps[-1]:.4f} bpp {psnrs[-1]:.2f} dB")
    result = {"images": len(images), "bpp": round(float(np.mean(bpps)), 4),
              "psnr_rgb": round(float(np.mean(psnrs)), 3),
              "seconds": round(time.time() - t0, 1)}
    if jpeg:
        gains = [p - j for p, j in zip(psnrs, jpegs, strict=True) if np.isfinite(j)]
        result["jpeg_psnr_rgb_at_same_bpp"] = round(float(np.nanmean(jpegs)), 3)
        result["gain_over_jpeg_db"] = round(float(np.mean(gains)), 3) if gains else None
    return result


# CompressAI's published Kodak results for its pretrained bmshj2018-hyperprior (MSE), bpp /
# RGB PSNR at qualities 1-6 (compressai/results/image/kodak/compressai-bmshj2018-hyperprior.json)
COMPRESSAI_BMSHJ_KODAK = ((0.131, 27.58), (0.209, 29.20), (0.320, 30.97), (0.478, 32.84),
                          (0.669, 34.53), (0.939, 36.74))
# Pillow settings of the reference formats: (format, save options, qualities swept).
REFERENCE_FORMATS = {
    "JPEG": ({}, range(5, 100, 5)),
    "WebP": ({"method": 6}, range(0, 101, 5)),
    "AVIF": ({"speed": 6}, range(0, 101, 5)),
}


def pillow_writes(fmt: str) -> bool:
    """Whether this Pillow has an encoder for fmt (AVIF needs Pillow 11.2+ wheels)."""
    Image.init()
    return fmt.upper() in Image.SAVE


def reference_points(pixels: np.ndarray, fmt: str) -> list[tuple[float, float]]:
    """(bpp, RGB PSNR) of one image at every swept quality of one Pillow format."""
    import io

    options, qualities = REFERENCE_FORMATS[fmt]
    img = Image.fromarray(pixels)
    points = []
    for q in qualities:
        buf = io.BytesIO()
        img.save(buf, format=fmt.upper(), quality=q, **options)
        with Image.open(io.BytesIO(buf.getvalue())) as dec:
            rec = np.asarray(dec.convert("RGB"), dtype=np.uint8)
        points.append((8 * buf.tell() / (pixels.shape[0] * pixels.shape[1]), psnr(pixels, rec)))
    return sorted(points)


def psnr_at(points: list[tuple[float, float]], bpp: float) -> float:
    """PSNR of a (bpp, PSNR) curve at bpp, linearly interpolated; NaN outside its range."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs[0] <= bpp <= xs[-1]:
        return float("nan")
    return float(np.interp(bpp, xs, ys))


def evaluate_shipped(images: list[Path], models: list[str] | None = None,
                     weights_dir: Path | None = None, log=print) -> dict:
    """Every shipped image model (or `models`) on `images`, with the reference formats at the
    same bpp per image."""
    from reprocodec import evaluate as product_evaluate
    from reprocodec import registry
    from reprocodec.image.io import read_image

    kind = registry.kind("image")
    names = models or [m.name for m in sorted(kind.list_models(weights_dir),
                                               key=lambda m: (m.architecture, m.quality))]
    pixels = {p.name: read_image(p, 1 << 30) for p in images}
    formats = [f for f in REFERENCE_FORMATS if pillow_writes(f)]
    if len(formats) < len(REFERENCE_FORMATS):
        log(f"this Pillow cannot write {set(REFERENCE_FORMATS) - set(formats)}: left out")
    refs = {fmt: {name: reference_points(px, fmt) for name, px in pixels.items()}
            for fmt in formats}
    # The formats' own curves (mean over images per quality) for the plot.
    curves = {fmt: [tuple(np.mean([refs[fmt][n][i] for n in pixels], axis=0))
                    for i in range(len(REFERENCE_FORMATS[fmt][1]))] for fmt in refs}
    rows = []
    for name in names:
        codec = kind.load(name, weights_dir)
        result = product_evaluate.evaluate(codec, images, "syndrome", "both")
        row = {"model": name, **{k: round(v, 5) for k, v in result["mean"].items()},
               "all_bit_exact": result["all_bit_exact"]}
        for fmt in formats:
            at = [psnr_at(refs[fmt][r["image"]], r["bpp"]) for r in result["per_image"]]
            ok = [a for a in at if np.isfinite(a)]
            row[f"{fmt.lower()}_psnr_at_same_bpp"] = round(float(np.mean(ok)), 3) if ok else None
            row[f"{fmt.lower()}_images_out_of_range"] = len(at) - len(ok)
            gains = [r["psnr"] - a for r, a in zip(result["per_image"], at, strict=True)
                     if np.isfinite(a)]
            row[f"gain_over_{fmt.lower()}_db"] = round(float(np.mean(gains)), 3) if gains else None
        rows.append(row)
        log(f"{name}: {row['bpp']:.4f} bpp {row['psnr']:.2f} dB, " + ", ".join(
            f"vs {f} {row[f'gain_over_{f.lower()}_db'] or float('nan'):+.2f} dB" for f in formats))
    return {"images": len(images), "models": rows,
            "reference_curves": {k: [list(map(float, p)) for p in v] for k, v in curves.items()},
            "compressai_bmshj2018_hyperprior": COMPRESSAI_BMSHJ_KODAK}


def markdown_table(result: dict) -> str:
    head = ("| model | bpp | PSNR dB | MS-SSIM | vs JPEG | vs WebP | vs AVIF | encode s | "
            "decode s | protection |\n|---|---|---|---|---|---|---|---|---|---|\n")

    def gain(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f} dB"

    return head + "".join(
        f"| {r['model']} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['ms_ssim']:.4f} | "
        f"{gain(r.get('gain_over_jpeg_db'))} | {gain(r.get('gain_over_webp_db'))} | "
        f"{gain(r.get('gain_over_avif_db'))} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | "
        f"{100 * r['overhead_ratio']:.3f} % |\n" for r in result["models"])


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    by_arch: dict[str, list] = {}
    for r in result["models"]:
        by_arch.setdefault(r["model"].rsplit("-q", 1)[0], []).append((r["bpp"], r["psnr"]))
    for arch, pts in by_arch.items():
        pts.sort()
        ax.plot(*zip(*pts, strict=True), "o-", lw=2, label=f"reprocodec {arch} (protected)")
    for fmt, pts in result["reference_curves"].items():
        ax.plot(*zip(*pts, strict=True), "--", label=f"Pillow {fmt}")
    ax.plot(*zip(*result["compressai_bmshj2018_hyperprior"], strict=True), "k:",
            label="CompressAI bmshj2018-hyperprior (published)")
    ax.set(xlabel="bits per pixel", ylabel="RGB PSNR (dB)", xlim=(0, 1.4), ylim=(24, 40),
           title=f"Kodak ({result['images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def list_images(folder: Path, limit: int = 0) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images in {folder}")
    return images[:limit] if limit else images


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shipped", action="store_true",
                     help="every shipped image model through the product codec")
    src.add_argument("--weights", type=Path, help="shipped reprocodec/weights/NAME.pt")
    src.add_argument("--checkpoint", type=Path, help="training checkpoint runs/X/checkpoint.pt")
    ap.add_argument("--images", type=Path, default=Path("/work/shared/data/kodak"))
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true",
                    help="store the result as eval_<folder name> in the weights' .json")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--models", nargs="*", help="with --shipped: only these models")
    ap.add_argument("--json", type=Path, help="with --shipped: write the results here")
    ap.add_argument("--plot", type=Path, help="with --shipped: write the R-D plot here (PNG)")
    ap.add_argument("--jpeg", action="store_true",
                    help="also report Pillow JPEG's PSNR at the same bpp on the same images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shipped:
        result = evaluate_shipped(list_images(args.images, args.limit), args.models)
        print(markdown_table(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        if args.plot:
            plot(result, args.plot)
        return
    model = (load_shipped(args.weights) if args.weights
             else load_checkpoint_model(args.checkpoint))
    images = list_images(args.images, args.limit)
    result = evaluate(model, images, log=print if args.verbose else None, jpeg=args.jpeg)
    print(json.dumps(result))
    if args.record:
        if not args.weights:
            raise SystemExit("--record needs --weights")
        meta_path = args.weights.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        result["weights_sha256"] = meta["weights_sha256"]
        meta[f"eval_{args.images.name}"] = result
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
