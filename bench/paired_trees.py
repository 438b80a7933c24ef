"""Encode and decode time of bench clouds in this checkout against another one, paired.

    python bench/paired_trees.py --other /path/to/old/checkout ["lidar 64x2048" ...]
        [--pairs 3] [--reps 7] [--threads 2] [--real DIR [--real-depths 10]] [--in-process]

The machine's speed drifts by up to ~25 % within minutes, more than most changes move; whole
bench runs one after the other compare the drift. Here each pair runs one worker process per
checkout, back to back (this one, then the other): each loads its own code (PYTHONPATH set to
its checkout), warms up on every cloud, then times `reps` encodes and decodes of each cloud
in process (`threads` codec threads) and reports the medians. Printed per cloud: bits a
point of each checkout's stream, then the medians over the pairs in wall s per Mpt, old -> new,
and each pair's new / old ratio. The clouds are bench/pointcloud.py's --clouds (synthetic), or
with --real its real_clouds of the .ply files in DIR at --real-depths, by name; every cloud
when none is named.

--in-process: both checkouts in ONE process instead, the other's package copied under another
name (reprocodec_old; absolute imports renamed), each cloud encoded and decoded by one then
the other, `reps` times, on `--threads` codec threads (default one): the minima, old -> new,
and their ratio. Both sides see the same drift, so small differences show (whole-process
pairs on a noisy machine put the same code 0.8-1.4 apart); it also checks that both write the
same bytes or says they differ.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(tree: Path, names: list[str], reps: int, threads: int, real: Path | None,
           real_depths: list[int]) -> None:
    """In a checkout's own process (PYTHONPATH: the checkout): print {cloud: [voxels, encode
    s, decode s, stream bytes]} (medians)."""
    sys.path.insert(0, str(tree / "bench"))
    from pointcloud import real_clouds, synthetic_clouds

    from reprocodec import container
    from reprocodec.pointcloud import octree
    from reprocodec.pointcloud.codec import PointCloudCodec

    found = real_clouds(real, real_depths) if real else synthetic_clouds()
    clouds = {name: (points, depth) for name, points, depth in found}
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
        out[name] = [voxels, statistics.median(encode), statistics.median(decode), len(packed)]
    print(json.dumps(out))


def _package_copy(tree: Path, name: str, dest: Path) -> None:
    """tree's reprocodec package (its .py files) as package `name` under dest, its absolute
    imports of reprocodec renamed."""
    source = tree / "reprocodec"
    for path in source.rglob("*.py"):
        if "__pycache__" in path.parts or "weights" in path.relative_to(source).parts:
            continue
        target = dest / name / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = re.sub(r"\b(from|import) reprocodec\b", rf"\1 {name}", path.read_text())
        target.write_text(text)


def in_process(trees: dict[str, Path], names: list[str], reps: int, real: Path | None,
               depths: list[int], threads: int = 1) -> None:
    """Both checkouts' codecs in this process, each cloud coded by one then the other, reps
    times; prints the minima (wall s per Mpt, `threads` codec threads) old -> new and their
    ratio."""
    sys.path[:0] = [str(HERE / "bench"), str(HERE)]
    from pointcloud import real_clouds, synthetic_clouds

    from reprocodec.pointcloud import octree

    found = real_clouds(real, depths) if real else synthetic_clouds()
    clouds = {name: (points, depth) for name, points, depth in found}
    with tempfile.TemporaryDirectory() as work:
        sides = {}
        for label, tree in trees.items():
            package = "reprocodec"  # this checkout's own, its kernels compiled already
            if tree != HERE:
                package = f"reprocodec_{label}"
                _package_copy(tree, package, Path(work))
                sys.path.insert(0, work)
            codec_module = importlib.import_module(f"{package}.pointcloud.codec")
            sides[label] = (codec_module.PointCloudCodec.load(
                weights_dir=tree / "reprocodec" / "weights", threads=threads),
                importlib.import_module(f"{package}.container"))
        print(f"in one process, {reps} runs each, {threads} thread(s): wall s per Mpt, minima "
              "old -> new (new / old)")
        for name in names or list(clouds):
            points, depth = clouds[name]
            packed, best = {}, {}
            for label, (codec, container) in sides.items():
                packed[label] = container.pack(codec.encode(points, depth=depth))
                codec.decode(container.unpack(packed[label]))  # warm-up
            for _ in range(reps):
                for label, (codec, container) in sides.items():
                    start = time.perf_counter()
                    codec.encode(points, depth=depth)
                    middle = time.perf_counter()
                    codec.decode(container.unpack(packed[label]))
                    times = (middle - start, time.perf_counter() - middle)
                    best[label] = [min(a, b) for a, b in zip(best.get(label, times), times,
                                                             strict=True)]
            mpt = octree.voxelize(points, depth).voxels.shape[0] / 1e6
            same = "same bytes" if packed["old"] == packed["new"] else \
                f"bytes {len(packed['old'])} -> {len(packed['new'])}"
            print(f"{name:24s} | {same} | " + " | ".join(
                f"{what} {best['old'][i] / mpt:.2f} -> {best['new'][i] / mpt:.2f} "
                f"({best['new'][i] / best['old'][i]:.2f})"
                for i, what in ((0, "encode"), (1, "decode"))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clouds", nargs="*")
    ap.add_argument("--other", type=Path, help="the checkout to compare against")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int,
                    help="codec threads (default 2; 1 with --in-process)")
    ap.add_argument("--real", type=Path, help="real clouds: the .ply files of this folder")
    ap.add_argument("--real-depths", default="10", help="--real: octree depths")
    ap.add_argument("--in-process", action="store_true",
                    help="both checkouts in one process, interleaved (minima)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # its checkout
    args = ap.parse_args()
    if args.threads is None and not args.in_process:
        args.threads = 2
    depths = [int(d) for d in args.real_depths.split(",")]
    if args.worker:
        worker(args.worker, args.clouds, args.reps, args.threads, args.real, depths)
        return 0
    if args.other is None:
        ap.error("--other is required")
    if args.in_process:
        in_process({"old": args.other.resolve(), "new": HERE}, args.clouds, args.reps,
                   args.real.resolve() if args.real else None, depths, args.threads or 1)
        return 0
    runs: dict[str, list[dict]] = {"new": [], "old": []}
    for _ in range(args.pairs):
        for label, tree in (("new", HERE), ("old", args.other.resolve())):
            result = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--reps",
                 str(args.reps), "--threads", str(args.threads), *args.clouds,
                 *(["--real", str(args.real.resolve()), "--real-depths", args.real_depths]
                   if args.real else [])],
                env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, check=True,
                capture_output=True, text=True)
            runs[label].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{args.pairs} pairs, {args.reps} runs each, {args.threads} threads: wall s per Mpt, "
          "old -> new (medians over the pairs), and each pair's new / old")
    for name in runs["new"][0]:
        voxels = runs["new"][0][name][0]
        bits = [8 * runs[label][0][name][3] / voxels for label in ("old", "new")]
        line = f"{name:24s} | bits {bits[0]:.4f} -> {bits[1]:.4f}"
        mpt = voxels / 1e6
        for i, what in ((1, "encode"), (2, "decode")):
            new = [r[name][i] / mpt for r in runs["new"]]
            old = [r[name][i] / mpt for r in runs["old"]]
            ratios = " ".join(f"{a / b:.2f}" for a, b in zip(new, old, strict=True))
            line += (f" | {what} {statistics.median(old):.2f} -> {statistics.median(new):.2f}"
                     f" ({ratios})")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
