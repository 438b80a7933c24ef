"""Rate-distortion of an image model on a folder of images, from real bitstreams.

``python -m reprocodec.train.evaluate --weights reprocodec/weights/NAME.pt --images DIR [--record]``
(or ``--checkpoint runs/X/checkpoint.pt`` for a model still training).

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
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    ph, pw = (-h) % 64, (-w) % 64
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    enc = model.compress(x)
    nbytes = sum(len(s) for group in enc["strings"] for s in group)
    x_hat = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    x_hat = x_hat[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    rec = (x_hat[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return nbytes, rec


def evaluate(model: torch.nn.Module, images: list[Path], log=None) -> dict:
    bpps, psnrs = [], []
    t0 = time.time()
    for path in images:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        nbytes, rec = code_image(model, pixels)
        bpps.append(8 * nbytes / (pixels.shape[0] * pixels.shape[1]))
        psnrs.append(psnr(pixels, rec))
        if log:
            log(f"{path.name}: {bpps[-1]:.4f} bpp {psnrs[-1]:.2f} dB")
    return {"images": len(images), "bpp": round(float(np.mean(bpps)), 4),
            "psnr_rgb": round(float(np.mean(psnrs)), 3),
            "seconds": round(time.time() - t0, 1)}


def jpeg_curve(images: list[Path], qualities=range(5, 96, 5)) -> list[dict]:
    """Pillow JPEG (4:2:0, default settings) mean bpp / RGB PSNR per quality: the baseline."""
    import io

    curve = []
    loaded = []
    for path in images:
        with Image.open(path) as img:
            loaded.append(img.convert("RGB"))
    for q in qualities:
        bpps, psnrs = [], []
        for img in loaded:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=q)
            with Image.open(io.BytesIO(buf.getvalue())) as dec:
                rec = np.asarray(dec.convert("RGB"), dtype=np.uint8)
            bpps.append(8 * buf.tell() / (img.width * img.height))
            psnrs.append(psnr(np.asarray(img, dtype=np.uint8), rec))
        curve.append({"quality": q, "bpp": float(np.mean(bpps)), "psnr_rgb": float(np.mean(psnrs))})
    return curve


def jpeg_psnr_at(curve: list[dict], bpp: float) -> float:
    """The JPEG curve's PSNR at a given bpp (linear interpolation; nan outside its range)."""
    pts = sorted((c["bpp"], c["psnr_rgb"]) for c in curve)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs[0] <= bpp <= xs[-1]:
        return float("nan")
    return float(np.interp(bpp, xs, ys))


def list_images(folder: Path, limit: int = 0) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images in {folder}")
    return images[:limit] if limit else images


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="shipped reprocodec/weights/NAME.pt")
    src.add_argument("--checkpoint", type=Path, help="training checkpoint runs/X/checkpoint.pt")
    ap.add_argument("--images", type=Path, default=Path("/work/shared/data/kodak"))
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true",
                    help="store the result as eval_<folder name> in the weights' .json")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--jpeg", action="store_true",
                    help="also report Pillow JPEG's PSNR at the same bpp on the same images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = (load_shipped(args.weights) if args.weights
             else load_checkpoint_model(args.checkpoint))
    images = list_images(args.images, args.limit)
    result = evaluate(model, images, log=print if args.verbose else None)
    if args.jpeg:
        jpeg = jpeg_psnr_at(jpeg_curve(images), result["bpp"])
        result["jpeg_psnr_rgb_at_same_bpp"] = round(jpeg, 3)
        result["gain_over_jpeg_db"] = round(result["psnr_rgb"] - jpeg, 3)
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
