"""Where a point cloud's encode and decode time goes: cProfile shares of the main steps.

    python bench/pointcloud_profile.py ["surface 1/4 sampled"] [--threads 1] [--runs 2]
    python bench/pointcloud_profile.py --rows
    python bench/pointcloud_profile.py ["surface 1/4 sampled"] --kernel [--runs 9]
    python bench/pointcloud_profile.py ["surface 1/4 sampled"] --kernels [--runs 9]
    python bench/pointcloud_profile.py "surface dense" --kernels --smallest

One of bench/pointcloud.py's --clouds by name, encoded and decoded once to warm up, then each
run profiled: the total and each step's share of it (cumulative time, so a step's share
includes what it calls; what runs on pool threads, the network kernel and the adaptive
pricing walk, is counted only with --threads 1).
--rows: for every cloud, the network rows the encoder and the decoder evaluate per point (the
kernel's work, whatever the machine's speed); --kernel: the network kernel alone on the rows
of one encode, its median time a row; --kernels: each compiled kernel's own time in an
encode and in a decode, the minimum over the runs (a process's noise hits a minimum least;
run it in two checkouts to compare them kernel by kernel); --smallest: the encode chooses by
bits alone (`coders="smallest"`, the mixer tried on every level). The first line names each level's
coder and the bits each coder codes (the neighbour coder's steps divided by its bits: its
time a bit).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pointcloud import synthetic_clouds  # noqa: E402

from reprocodec import container  # noqa: E402
from reprocodec.pointcloud import inspect_fields, native  # noqa: E402
from reprocodec.pointcloud.codec import PointCloudCodec  # noqa: E402
from reprocodec.pointcloud.context import N_HEIGHTS  # noqa: E402

ENCODE_STEPS = ["native:_logits_kernel", "codec:_add_payloads", "octree:child_neighbour_table",
                "adaptive:_walk", "octree:voxelize", "octree:build_levels",
                "decision:protect_pass", "refine:code_lengths", "coder:estimate_level_cost",
                "mixing:level_contexts", "neighbour:walk_contexts", "neighbour:snapshot"]
DECODE_STEPS = ["native:_logits_kernel", "octree:child_neighbour_table", "mixing:pass_contexts",
                "neighbour:decode"]


def shares(run, steps: list[str]) -> str:
    """The profiled total of run() and each step's cumulative share (module:function)."""
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    found = dict.fromkeys(steps, 0.0)
    for (path, _, function), v in stats.items():
        for step in steps:
            module, name = step.split(":")
            if function == name and Path(path).stem == module:
                found[step] += v[3]
    return f"{total:.3f} s = " + ", ".join(f"{s.split(':')[1]} {100 * t / total:.0f} %"
                                           for s, t in found.items())


def kernel_minima(run, runs: int) -> dict[str, float]:
    """Each compiled kernel's own time (cProfile's tottime: a numba dispatcher is one call)
    in run(), the minimum over runs, by module:function."""
    best: dict[str, float] = {}
    for _ in range(runs):
        profile = cProfile.Profile()
        profile.enable()
        run()
        profile.disable()
        for (path, _, function), v in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
            if function.endswith("_kernel"):
                key = f"{Path(path).stem}:{function}"
                best[key] = min(best.get(key, np.inf), v[2])
    return best


def rows_per_point(codec: PointCloudCodec) -> None:
    """Network rows evaluated per point, encoding and decoding each cloud."""
    count = [0]
    start_logits = native.NativeGatherNetworks.start_logits  # logits_of calls it too

    def counting(self, inputs, k: int, height: int):
        count[0] += inputs.rows
        return start_logits(self, inputs, k, height)

    native.NativeGatherNetworks.start_logits = counting  # type: ignore[method-assign]
    for name, points, depth in synthetic_clouds():
        count[0] = 0
        packed = container.pack(codec.encode(points, depth=depth))
        encoded = count[0]
        count[0] = 0
        codec.decode(container.unpack(packed))
        n = len(points)
        print(f"{name:24s} rows per point: encode {encoded / n:.2f}, decode {count[0] / n:.2f}")


def kernel_time(codec: PointCloudCodec, points, depth: int, runs: int) -> None:
    """The network kernel alone, one thread, on the rows one encode of the cloud evaluates
    (captured, then timed `runs` times): the median time a row."""
    calls = []
    start_logits = native.NativeGatherNetworks.start_logits  # logits_of calls it too

    def capturing(self, inputs, k: int, height: int):
        calls.append((np.ascontiguousarray(inputs.neighbours), inputs.state, self.tables[k],
                      self.biases[k, min(height, N_HEIGHTS - 1)]))
        return start_logits(self, inputs, k, height)

    native.NativeGatherNetworks.start_logits = capturing  # type: ignore[method-assign]
    codec.encode(points, depth=depth)
    native.NativeGatherNetworks.start_logits = start_logits  # type: ignore[method-assign]
    net, rows = codec.networks, sum(c[0].shape[0] for c in calls)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for neighbours, state, table, bias in calls:
            out = np.empty(neighbours.shape[0], np.float32)
            native._logits_kernel(neighbours, state, table, bias, net.w2t, net.b2, net.w3,
                                  net.b3, out)
        times.append(time.perf_counter() - start)
    print(f"network kernel: {rows} rows, median {np.median(times) / rows * 1e9:.0f} ns a row "
          f"(min {min(times) / rows * 1e9:.0f}) over {runs} runs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cloud", nargs="?", default="surface 1/4 sampled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rows", action="store_true", help="network rows per point, every cloud")
    ap.add_argument("--kernel", action="store_true",
                    help="time the network kernel alone on the rows of one encode")
    ap.add_argument("--kernels", action="store_true",
                    help="each compiled kernel's time in an encode and a decode (minima)")
    ap.add_argument("--smallest", action="store_true",
                    help='encode with coders="smallest" (the mixer tried on every level)')
    args = ap.parse_args()
    coders = {"coders": "smallest"} if args.smallest else {}
    if args.rows:
        rows_per_point(PointCloudCodec.load(threads=args.threads))
        return 0
    clouds = {name: (points, depth) for name, points, depth in synthetic_clouds()}
    if args.cloud not in clouds:
        ap.error(f"no cloud {args.cloud!r}: one of {', '.join(map(repr, clouds))}")
    points, depth = clouds[args.cloud]
    codec = PointCloudCodec.load(threads=args.threads)
    if args.kernel:
        kernel_time(codec, points, depth, args.runs)
        return 0
    msg = codec.encode(points, depth=depth, **coders)
    packed = container.pack(msg)
    codec.decode(container.unpack(packed))
    fields = inspect_fields(msg)
    print(f"{args.cloud}: levels {fields['level_coders']}, coded bits: learned "
          f"{fields['coded_occupancy_bits']}, adaptive {fields['adaptive_occupancy_bits']}, "
          f"neighbour {fields['neighbour_occupancy_bits']}")
    if args.kernels:
        for step, run in (("encode", lambda: codec.encode(points, depth=depth, **coders)),
                          ("decode", lambda: codec.decode(container.unpack(packed)))):
            for name, t in sorted(kernel_minima(run, args.runs).items(), key=lambda kv: -kv[1]):
                print(f"{step} {name:36s} {t * 1e3:8.2f} ms")
        return 0
    for _ in range(args.runs):
        print("encode", shares(lambda: codec.encode(points, depth=depth, **coders), ENCODE_STEPS))
        print("decode", shares(lambda: codec.decode(container.unpack(packed)), DECODE_STEPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
