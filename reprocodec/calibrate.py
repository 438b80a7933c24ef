"""`reprocodec calibrate`: measure how far each protected float tensor moves between numerics
profiles, for every pair of profiles, and write error bounds (worst pair x safety factor) into
the model's json. One calibrator for every codec kind (reprocodec.registry).

Each profile runs in its own process (profiles are process-global). The first profile's
process encodes every input and saves the codec's calibration sample: the exact integer-valued
state the protected floats are computed from (image latents z_hat / y_hat, point-cloud voxels),
identical on every platform. Every profile's process then recomputes the protected floats from
those samples (`codec.network_floats`), so the measured mismatch is the networks' alone.

Every pair is compared, not each profile against one reference: an encoder and a decoder can
both differ from a reference, in opposite directions, by up to the bound each. The json records
the profiles (and their devices) a bound covers and the mismatch of every pair.

Mismatch per tensor, matching its bound's kind: relative |a - b| / |a| (both directions) over
elements with |a| at least half the quantizer's first threshold (smaller values are at least
2x below it, so their error cannot flip an index, and a relative error of a ReLU zero is
meaningless); absolute max |a - b|.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Smallest bound written even when two profiles agree bit for bit (e.g. cpu vs cpu-1thread),
# so an unmeasured platform with merely another summation order is still covered. The image
# decision networks run in float64 (worst summation-order error ~1e-13 relative): the floors
# leave a margin of about 10^3 over that and still cost nothing (a pixel zone of 2e-7 of a
# level: 0.2 candidates in a 768x512 image). The point-cloud logits are float32: about 10
# float32 ulps of a logit of magnitude ~10.
FLOORS = {"scale_index": 1e-8, "mean_grid": 1e-8, "pixels": 1e-7, "occupancy_logit": 1e-5}
DEFAULT_PROFILES = "cpu,cpu-nomkldnn,cpu-channels-last,cpu-1thread,emulate-splitk,emulate-tf32"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, action="append",
                   help="shipped model name (repeat or comma-separate for several)")
    p.add_argument("--inputs", "--images", dest="inputs", required=True, action="append",
                   help="folder or file of inputs the model codes: images or .ply "
                        "(repeatable)")
    p.add_argument("--profiles", default=DEFAULT_PROFILES,
                   help="comma-separated profiles, compared pairwise; the first encodes "
                        "(default: %(default)s)")
    p.add_argument("--reference", help=argparse.SUPPRESS)  # 0.1 spelling: put it first
    p.add_argument("--safety", type=float, default=4.0,
                   help="bound = worst pairwise mismatch x safety (default: %(default)s)")
    p.add_argument("--max-inputs", "--max-images", dest="max_inputs", type=int, default=8,
                   help="per --inputs folder (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=512,
                   help="center-crop images to at most this many pixels per side "
                        "(default: %(default)s)")
    p.add_argument("--depth", type=int, default=9,
                   help="octree depth for point clouds (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print bounds, do not write json")


def _inputs(entries: list[str], max_inputs: int, suffixes: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for e in entries:
        p = Path(e)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
            files.extend(found[:max_inputs])
        elif p.is_file() and p.suffix.lower() in suffixes:
            files.append(p)
        elif not p.exists():
            raise FileNotFoundError(f"--inputs {e}: no such file or folder")
    return files


def _center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return pixels[top : top + side, left : left + side]


def _worker(argv: list[str]) -> int:
    """One profile's process, for every model: the encoding profile saves the samples, then
    (every profile) recomputes the protected floats from them."""
    from reprocodec import numerics, registry

    role, profile, workdir, max_side, depth = argv[:5]
    jobs = json.loads(argv[5])  # {model: [input paths]}
    numerics.apply_profile(profile)
    for model, paths in jobs.items():
        kind, _ = registry.find_model(model)
        codec = kind.load(model)
        mdir = Path(workdir) / model
        mdir.mkdir(exist_ok=True)
        if role == "encoder":
            for i, path in enumerate(paths):
                data = kind.read_input(Path(path))
                if kind.name == "image":
                    data = _center_crop(data, int(max_side))
                    sample = codec.calibration_sample(data)
                else:
                    sample = codec.calibration_sample(data, depth=int(depth))
                np.savez(mdir / f"sample{i}.npz", **sample)
        for sample_file in sorted(mdir.glob("sample*.npz")):
            sample = dict(np.load(sample_file))
            floats = codec.network_floats(sample)
            np.savez(mdir / f"{_safe(profile)}__{sample_file.stem}.npz", **floats)
    return 0


def _safe(profile: str) -> str:
    return profile.replace(":", "_").replace("/", "_")


def _run_worker(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "reprocodec.calibrate", "_worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"profile worker {args[1]} failed: {tail[0]}")


def mismatch(kind: str, a: np.ndarray, b: np.ndarray, min_scale: float) -> float:
    """Largest difference between two profiles' values of one tensor, in the bound's kind;
    relative is taken both ways (either profile may be the encoder)."""
    diff = np.abs(a - b)
    if kind == "relative":
        worst = 0.0
        for ref in (a, b):
            keep = np.abs(ref) >= min_scale
            if keep.any():
                worst = max(worst, float((diff[keep] / np.abs(ref[keep])).max()))
        return worst
    return float(diff.max()) if diff.size else 0.0


def _min_scale(decision: Any) -> float:
    thresholds = decision.quantizer.thresholds
    return float(thresholds[0]) / 2 if thresholds is not None else 0.0


def measure(jobs: dict[str, list[str]], profiles: list[str], max_side: int, depth: int
            ) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {tensor: {"a|b": max mismatch over the samples}}} for every pair of profiles."""
    from reprocodec import registry

    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        common = [tmp, str(max_side), str(depth), json.dumps(jobs)]
        _run_worker(["encoder", profiles[0], *common])
        for prof in profiles[1:]:
            _run_worker(["profile", prof, *common])
        for model in jobs:
            kind, _ = registry.find_model(model)
            decisions = kind.load(model).decisions
            per_model = out.setdefault(model, {})
            for sample in sorted((Path(tmp) / model).glob("sample*.npz")):
                floats = {p: np.load(Path(tmp) / model / f"{_safe(p)}__{sample.stem}.npz")
                          for p in profiles}
                for a, b in itertools.combinations(profiles, 2):
                    for name in floats[a].files:
                        d = decisions[name]
                        m = mismatch(d.bound.kind, floats[a][name], floats[b][name],
                                     _min_scale(d))
                        slot = per_model.setdefault(name, {})
                        slot[f"{a}|{b}"] = max(slot.get(f"{a}|{b}", 0.0), m)
    return out


def bounds_from(measured: dict[str, dict[str, float]], kinds: dict[str, str], safety: float,
                profiles: list[str], devices: dict[str, str]) -> dict[str, dict[str, Any]]:
    bounds = {}
    for name, per_pair in measured.items():
        worst = max(per_pair.values()) if per_pair else 0.0
        bounds[name] = {
            "kind": kinds[name],
            "value": max(worst * safety, FLOORS.get(name, 0.0)),
            "measured_max": worst,
            "safety_factor": safety,
            "floor": FLOORS.get(name, 0.0),
            "profiles": profiles,  # the encoder/decoder profiles this bound covers
            "devices": devices,
            "per_pair": per_pair,
        }
    return bounds


def _device_of(profile: str) -> str:
    from reprocodec import numerics

    return numerics.parse_profile(profile).device


def main(args: argparse.Namespace) -> int:
    from reprocodec import registry
    from reprocodec.shipped import WEIGHTS_DIR

    models = [m for entry in args.model for m in entry.split(",") if m]
    profiles = [p for p in args.profiles.split(",") if p]
    if args.reference:  # the old spelling: the reference encodes, so it goes first
        profiles = [args.reference] + [p for p in profiles if p != args.reference]
    if len(profiles) < 2:
        raise ValueError("--profiles needs at least two profiles to compare")
    jobs: dict[str, list[str]] = {}
    for model in models:
        kind, _ = registry.find_model(model)
        files = _inputs(args.inputs, args.max_inputs, kind.input_suffixes)
        if not files:
            raise FileNotFoundError(f"no {kind.name} inputs for {model} in --inputs")
        jobs[model] = [str(f) for f in files]
    print(f"calibrating {', '.join(models)} on {sum(map(len, jobs.values()))} inputs, profiles "
          f"{', '.join(profiles)} pairwise, safety x{args.safety:g}")
    measured_all = measure(jobs, profiles, args.max_side, args.depth)
    devices = {p: _device_of(p) for p in profiles}
    for model in models:
        kind, _ = registry.find_model(model)
        kinds = {n: d.bound.kind for n, d in kind.load(model).decisions.items()}
        bounds = bounds_from(measured_all[model], kinds, args.safety, profiles, devices)
        for name, b in bounds.items():
            pair, worst = max(b["per_pair"].items(), key=lambda kv: kv[1])
            print(f"  {model} {name:15s} {b['kind']:8s} worst pair {pair} {worst:.3g} -> "
                  f"bound {b['value']:.3g}")
        if args.dry_run:
            continue
        json_path = WEIGHTS_DIR / f"{model}.json"
        meta = json.loads(json_path.read_text())
        meta["bounds"] = {**meta.get("bounds", {}), **bounds}
        meta.pop("stale_bounds_from", None)  # measured on these very weights now
        json_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"  wrote bounds into {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        sys.exit(_worker(sys.argv[2:]))
    print("use `reprocodec calibrate ...`", file=sys.stderr)
    sys.exit(2)
