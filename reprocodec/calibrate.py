"""`reprocodec calibrate`: measure how far each protected float tensor moves between numerics
profiles, and write error bounds (measured max x safety factor) into the model's json.

Each profile runs in its own process (profiles are process-global). The reference process
encodes every image and saves the exact latents (z_hat, y_hat: integer symbols plus grid
values, identical on every platform); each profile process recomputes the protected float
tensors from those same latents (h_s for sigma and means, g_s for pixels), so the measured
mismatch is the networks' alone.

Mismatch per tensor, matching the bound's kind: `scale_index` relative, |a - b| / |a| over
elements with |a| >= scale_table[0] / 2 (smaller sigmas are at least 2x below the first
threshold, so their error can never flip an index and a relative error of a ReLU zero is
meaningless); `mean_grid` and `pixels` absolute, max |a - b|.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {"scale_index": "relative", "mean_grid": "absolute", "pixels": "absolute"}
# Smallest bound written even when two profiles agree bit for bit (e.g. cpu vs cpu-1thread):
# about 10 float32 ulps at each tensor's typical magnitude, so an unmeasured platform with
# merely different summation order is still covered.
FLOORS = {"scale_index": 1e-6, "mean_grid": 1e-5, "pixels": 1e-4}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, action="append",
                   help="shipped model name (repeat or comma-separate for several)")
    p.add_argument("--images", required=True, action="append",
                   help="folder or image file (repeatable)")
    p.add_argument("--profiles", default="cpu-nomkldnn,cpu-channels-last,cpu-fp64,cpu-1thread",
                   help="comma-separated profiles compared against --reference")
    p.add_argument("--reference", default="cpu", help="profile the encoder runs under")
    p.add_argument("--safety", type=float, default=4.0, help="bound = measured max x safety")
    p.add_argument("--max-images", type=int, default=8, help="per --images entry")
    p.add_argument("--max-side", type=int, default=512,
                   help="center-crop images to at most this many pixels per side (speed)")
    p.add_argument("--dry-run", action="store_true", help="print bounds, do not write json")


def _images(entries: list[str], max_images: int) -> list[Path]:
    files: list[Path] = []
    for e in entries:
        p = Path(e)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(found[:max_images])
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"--images {e}: no such file or folder")
    if not files:
        raise FileNotFoundError("no images found in --images")
    return files


def _center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return pixels[top : top + side, left : left + side]


def _worker(argv: list[str]) -> int:
    """One profile's process, for every model: `reference` encodes and saves the exact
    latents, then (every role) recomputes the protected floats from them."""
    import torch

    from reprocodec import numerics
    from reprocodec.image import ImageCodec
    from reprocodec.image.io import read_image

    role, profile, models, workdir = argv[0], argv[1], argv[2].split(","), Path(argv[3])
    numerics.apply_profile(profile)
    for model in models:
        codec = ImageCodec.load(model)
        mdir = workdir / model
        mdir.mkdir(exist_ok=True)
        if role == "reference":
            max_side = int(argv[4])
            for i, path in enumerate(argv[5:]):
                pixels = _center_crop(read_image(path), max_side)
                capture: dict[str, Any] = {}
                codec.encode(pixels, "none", "both", capture=capture)
                h, w, c = pixels.shape
                np.savez(mdir / f"latents{i}.npz", z_hat=capture["z_hat"].numpy(),
                         y_hat=capture["y_hat"].numpy(), hwc=np.array([h, w, c]))
        for lat in sorted(mdir.glob("latents*.npz")):
            data = np.load(lat)
            h, w, c = (int(v) for v in data["hwc"])
            floats = codec.network_floats(torch.from_numpy(data["z_hat"]),
                                          torch.from_numpy(data["y_hat"]), h, w, c)
            np.savez(mdir / f"{profile}__{lat.stem}.npz", **floats)
    return 0


def _run_worker(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "reprocodec.calibrate", "_worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"profile worker {args[1]} failed: {tail[0]}")


def mismatch(name: str, ref: np.ndarray, other: np.ndarray, min_scale: float) -> float:
    diff = np.abs(ref - other)
    if KINDS[name] == "relative":
        keep = np.abs(ref) >= min_scale
        return float((diff[keep] / np.abs(ref[keep])).max()) if keep.any() else 0.0
    return float(diff.max())


def measure(models: list[str], images: list[Path], reference: str, profiles: list[str],
            max_side: int) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {tensor: {profile: max mismatch vs reference}}} over all images; one process
    per profile for all models."""
    from reprocodec.image.models import load_shipped

    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        names = ",".join(models)
        _run_worker(["reference", reference, names, tmp, str(max_side), *map(str, images)])
        for prof in profiles:
            _run_worker(["profile", prof, names, tmp])
        for model in models:
            table = load_shipped(model)[0].gaussian_conditional.scale_table
            min_scale = float(table[0]) / 2
            per_model: dict[str, dict[str, float]] = out.setdefault(model, {})
            mdir = Path(tmp) / model
            for lat in sorted(mdir.glob("latents*.npz")):
                ref = np.load(mdir / f"{reference}__{lat.stem}.npz")
                for prof in profiles:
                    other = np.load(mdir / f"{prof}__{lat.stem}.npz")
                    for name in ref.files:
                        m = mismatch(name, ref[name], other[name], min_scale)
                        slot = per_model.setdefault(name, {})
                        slot[prof] = max(slot.get(prof, 0.0), m)
    return out


def bounds_from(measured: dict[str, dict[str, float]], safety: float,
                profiles: list[str]) -> dict[str, dict[str, Any]]:
    bounds = {}
    for name, per_profile in measured.items():
        worst = max(per_profile.values()) if per_profile else 0.0
        bounds[name] = {
            "kind": KINDS[name],
            "value": max(worst * safety, FLOORS[name]),
            "measured_max": worst,
            "safety_factor": safety,
            "floor": FLOORS[name],
            "profiles": profiles,
            "per_profile": per_profile,
        }
    return bounds


def main(args: argparse.Namespace) -> int:
    from reprocodec.image.models import WEIGHTS_DIR

    models = [m for entry in args.model for m in entry.split(",") if m]
    profiles = [p for p in args.profiles.split(",") if p and p != args.reference]
    images = _images(args.images, args.max_images)
    print(f"calibrating {', '.join(models)} on {len(images)} images, reference "
          f"{args.reference} vs {', '.join(profiles)}, safety x{args.safety:g}")
    measured_all = measure(models, images, args.reference, profiles, args.max_side)
    for model in models:
        bounds = bounds_from(measured_all[model], args.safety, [args.reference, *profiles])
        for name, b in bounds.items():
            per = "  ".join(f"{p}={v:.3g}" for p, v in b["per_profile"].items())
            print(f"  {model} {name:12s} {b['kind']:8s} max {b['measured_max']:.3g} -> bound "
                  f"{b['value']:.3g}   ({per})")
        if args.dry_run:
            continue
        json_path = WEIGHTS_DIR / f"{model}.json"
        meta = json.loads(json_path.read_text())
        meta["bounds"] = bounds
        meta.pop("stale_bounds_from", None)  # measured on these very weights now
        json_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"  wrote bounds into {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        sys.exit(_worker(sys.argv[2:]))
    print("use `reprocodec calibrate ...`", file=sys.stderr)
    sys.exit(2)
