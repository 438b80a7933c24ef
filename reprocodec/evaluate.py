"""`reprocodec evaluate`: what `compressai.utils.eval_model` does for CompressAI users, through
the real codec path (protection included in every byte).

    reprocodec evaluate --model bmshj2018-hyperprior-q2 --images DIR [--weights-dir DIR]
        [--safeguard syndrome] [--level both] [--profile cpu] [--json out.json]

Per image: bits per pixel of the whole stream (container included), RGB PSNR and MS-SSIM of
the decoded 8-bit output against the 8-bit input, encode and decode seconds, protection bytes
/ payload bytes, bit-exactness of the decode; then the means, as CompressAI reports them.
Any shipped model, a model folder written by `reprocodec import-checkpoint`, or a training
run exported with `python -m reprocodec.train.export` (into --weights-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (see `reprocodec models`)")
    p.add_argument("--images", required=True, type=Path, help="folder of images")
    p.add_argument("--weights-dir", type=Path, help="models from this folder instead")
    p.add_argument("--safeguard", default="syndrome", help="safeguard mode")
    p.add_argument("--level", default="both", help="protection level")
    p.add_argument("--profile", default="cpu", help="numerics profile of this process")
    p.add_argument("--max-images", type=int, default=0, help="0: every image")
    p.add_argument("--json", type=Path, help="write per-image and mean results here")


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, data range 255) of two 8-bit H x W x C images; NaN when the
    image is too small for its five scales (under 161 px on a side)."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(a.shape[:2]) < 161:
        return float("nan")
    x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]
    y = torch.from_numpy(b.astype(np.float32)).permute(2, 0, 1)[None]
    return float(_ms_ssim(x, y, data_range=255.0))


def evaluate(codec: Any, images: list[Path], mode: str, level: str) -> dict[str, Any]:
    from reprocodec import container
    from reprocodec.image.io import psnr, read_image

    rows = []
    for path in images:
        pixels = read_image(path, codec.max_pixels)
        started = time.perf_counter()
        msg = codec.encode(pixels, mode=mode, level=level)
        data = container.pack(msg)
        encoded = time.perf_counter()
        decoded = codec.decode(container.unpack(data))
        done = time.perf_counter()
        payload = sum(len(p.data) for p in msg.payloads)
        h, w = pixels.shape[:2]
        rows.append({
            "image": path.name, "height": h, "width": w, "bytes": len(data),
            "bpp": 8 * len(data) / (h * w),
            "psnr": psnr(pixels, decoded.pixels), "ms_ssim": ms_ssim(pixels, decoded.pixels),
            "encode_s": encoded - started, "decode_s": done - encoded,
            "overhead_ratio": container.protection_bytes(msg) / payload,
            "bit_exact": bool(decoded.bit_exact),
        })
    keys = ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "overhead_ratio")
    # (ms_ssim is NaN on an image too small for its scales: left out, NaN if every one is)
    means = {k: _mean_of_numbers([r[k] for r in rows]) for k in keys}
    return {"model": codec.info.name, "mode": mode, "level": level, "images": len(rows),
            "mean": means, "all_bit_exact": all(r["bit_exact"] for r in rows), "per_image": rows}


def _mean_of_numbers(values: list[float]) -> float:
    """np.nanmean without its warning when every value is NaN (then NaN)."""
    numbers = [v for v in values if not np.isnan(v)]
    return float(np.mean(numbers)) if numbers else float("nan")


def main(args: argparse.Namespace) -> int:
    from reprocodec import numerics, registry

    numerics.apply_profile(args.profile)
    kind = registry.kind("image")
    suffixes = kind.input_suffixes
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in suffixes)
    if args.max_images:
        images = images[:args.max_images]
    if not images:
        raise FileNotFoundError(f"no images in {args.images}")
    codec = kind.load(args.model, args.weights_dir)
    result = evaluate(codec, images, args.safeguard, args.level)
    result["profile"] = args.profile
    m = result["mean"]
    print(f"{result['model']}: {result['images']} images, {m['bpp']:.4f} bpp, "
          f"PSNR {m['psnr']:.2f} dB, MS-SSIM {m['ms_ssim']:.4f}, encode {m['encode_s']:.3f} s, "
          f"decode {m['decode_s']:.3f} s, protection {100 * m['overhead_ratio']:.3f} %, "
          f"{'all bit-exact' if result['all_bit_exact'] else 'NOT all bit-exact'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
