"""Encode and decode time of bench clouds in this checkout against another one, paired.

    python bench/paired_trees.py --other /path/to/old/checkout ["lidar 64x2048" ...]
        [--pairs 3] [--reps 7] [--threads 2]

The machine's speed drifts by up to ~25 % within minutes, more than most changes move; whole
bench runs one after the other compare the drift. Here each pair runs one worker process per
checkout, back to back (this one, then the other): each loads its own code (PYTHONPATH set to
its checkout), warms up on every cloud, then times `reps` encodes and decodes of each cloud
in process (`threads` codec threads) and reports the medians. Printed per cloud: the medians
over the pairs in wall s per Mpt, old -> new, and each pair's new / old ratio. The clouds are
bench/pointcloud.py's --clouds (synthetic) by name; every cloud when none is named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(tree: Path, names: list[str], reps: int, threads: int) -> None:
    """In a checkout's own process (PYTHONPATH: the checkout): print {cloud: [voxels, encode
    s, decode s]} (medians)."""
    sys.path.insert(0, str(tree / "bench"))
    from pointcloud import synthetic_clouds

    from reprocodec import container
    from reprocodec.pointcloud import octree
    from reprocodec.pointcloud.codec import PointCloudCodec

    clouds = {name: (points, depth) for name, points, depth in synthetic_clouds()}
    codec = PointCloudCodec.load(threads=threads)
    out = {}
    for name in names or list(clouds):
        points, depth = clouds[name]
        packed = container.pack(codec.encode(points, depth=depth))
        codec.decode(container.unpack(packed))  # warm-up: compiled kernels, tables
        encode, decode = [], []
        for _ in range(reps):
            start = time.perf_counter()
            codec.encode(points, depth=depth)
            middle = time.perf_counter()
            codec.decode(container.unpack(packed))
            encode.append(middle - start)
            decode.append(time.perf_counter() - middle)
        voxels = octree.voxelize(points, depth).voxels.shape[0]  # what "per point" counts
        out[name] = [voxels, statistics.median(encode), statistics.median(decode)]
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clouds", nargs="*")
    ap.add_argument("--other", type=Path, help="the checkout to compare against")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # its checkout
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.clouds, args.reps, args.threads)
        return 0
    if args.other is None:
        ap.error("--other is required")
    runs: dict[str, list[dict]] = {"new": [], "old": []}
    for _ in range(args.pairs):
        for label, tree in (("new", HERE), ("old", args.other.resolve())):
            result = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--reps",
                 str(args.reps), "--threads", str(args.threads), *args.clouds],
                env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, check=True,
                capture_output=True, text=True)
            runs[label].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{args.pairs} pairs, {args.reps} runs each, {args.threads} threads: wall s per Mpt, "
          "old -> new (medians over the pairs), and each pair's new / old")
    for name in runs["new"][0]:
        line = f"{name:24s}"
        for i, what in ((1, "encode"), (2, "decode")):
            mpt = runs["new"][0][name][0] / 1e6
            new = [r[name][i] / mpt for r in runs["new"]]
            old = [r[name][i] / mpt for r in runs["old"]]
            ratios = " ".join(f"{a / b:.2f}" for a, b in zip(new, old, strict=True))
            line += (f" | {what} {statistics.median(old):.2f} -> {statistics.median(new):.2f}"
                     f" ({ratios})")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
