"""Calibrate the occupancy_logit error bound across numerics profiles:

    python -m reprocodec.pointcloud.calibrate --clouds a.ply b.ply [--depth 9] \
        [--profiles cpu,cpu-nomkldnn,cpu-fp64,cpu-1thread,cpu-channels-last] [--write]

Each profile runs in its own process (profiles are process-global) and computes the encoder's
logits for every coded bit of the clouds; the bound is the largest difference from the `cpu`
profile times a safety factor, never below FLOOR (a float32 logit of magnitude ~10 has an ulp
of ~1e-6, so a zero measurement is not taken as a promise of zero). --write stores it in the
model's json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SAFETY_FACTOR = 10.0
FLOOR = 1e-5
PROFILES = "cpu,cpu-nomkldnn,cpu-fp64,cpu-1thread,cpu-channels-last"


def encoder_logits(codec, voxels: np.ndarray, depth: int) -> np.ndarray:
    """The float logits the encoder computes for every coded bit, in coding order."""
    from . import octree
    from .context import N_PASSES

    codes, bits = octree.build_levels(voxels, depth)
    out = []
    for level in range(depth):
        neighbours = octree.neighbour_table(codes[level], level)
        for k in range(N_PASSES):
            out.append(codec._predict(neighbours, bits[level], k, level, depth))
    return np.concatenate(out)


def _worker(args: argparse.Namespace) -> int:
    from .. import numerics
    from . import octree
    from .codec import PointCloudCodec
    from .ply import read_ply

    numerics.apply_profile(args.profile)
    codec = PointCloudCodec.load(args.model)
    arrays = {}
    for i, path in enumerate(args.clouds):
        vox = octree.voxelize(read_ply(path), args.depth)
        arrays[f"c{i}"] = encoder_logits(codec, vox.voxels, args.depth)
    np.savez(args.worker, **arrays)
    return 0


def measure(model: str, clouds: list[str], depth: int, profiles: list[str]) -> dict[str, float]:
    """Max |logit_profile - logit_cpu| per profile."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for p in ["cpu"] + [p for p in profiles if p != "cpu"]:
            out = Path(tmp) / f"{p.replace(':', '_')}.npz"
            subprocess.run([sys.executable, "-m", "reprocodec.pointcloud.calibrate", "--worker",
                            str(out), "--profile", p, "--model", model, "--depth", str(depth),
                            "--clouds", *clouds], check=True)
            results[p] = np.load(out)
        ref = results["cpu"]
        return {p: max(float(np.abs(r[k] - ref[k]).max()) for k in ref.files)
                for p, r in results.items() if p != "cpu"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="octree-ctx-v1")
    ap.add_argument("--clouds", nargs="+", required=True)
    ap.add_argument("--depth", type=int, default=9)
    ap.add_argument("--profiles", default=PROFILES)
    ap.add_argument("--write", action="store_true", help="store the bound in the model json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    profiles = args.profiles.split(",")
    diffs = measure(args.model, args.clouds, args.depth, profiles)
    measured = max(diffs.values(), default=0.0)
    bound = max(measured * SAFETY_FACTOR, FLOOR)
    for p, d in diffs.items():
        print(f"{p:20s} max |logit - cpu| = {d:.3g}")
    print(f"bound: absolute {bound:.3g} (measured {measured:.3g} x {SAFETY_FACTOR}, floor {FLOOR})")
    if args.write:
        from .models import WEIGHTS_DIR

        path = Path(WEIGHTS_DIR) / f"{args.model}.json"
        meta = json.loads(path.read_text())
        meta.setdefault("bounds", {})["occupancy_logit"] = {
            "kind": "absolute", "value": bound, "measured_max": measured,
            "safety_factor": SAFETY_FACTOR, "floor": FLOOR, "profiles": ["cpu"] + profiles,
            "per_profile": diffs, "clouds": [Path(c).name for c in args.clouds],
            "depth": args.depth,
        }
        path.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
