"""Point-cloud codec benchmark: rate and speed against Draco, LAZ and a non-learned octree
coder on held-out clouds, and the cross-profile decode matrix.

    python -m reprocodec.train.pointcloud_data --out data/pc          # once: the test clouds
    pip install -e '.[bench]'                                    # DracoPy, laspy, lazrs
    python bench/pointcloud.py [--data data/pc] [--matrix-depth 8] [--json out.json]

Rate table: every held-out test cloud of data/pc/manifest.json (never used in training) at its
depth; bits per occupied voxel of each coder, each checked lossless against the voxel set
(the non-learned coder is the product's adaptive context coder, reprocodec/pointcloud/adaptive.py).
Seconds per million points are wall-clock on this machine with one torch thread, and the
process's CPU seconds beside them (the wall time on an idle core; the machine may be shared).

Matrix: each cloud (re-voxelized to --matrix-depth) is encoded under each encoder profile with
and without protection, in its own process, and decoded under each decoder profile in its own
process. Unprotected streams are decoded with verification off, so a failure is a decoded set
that differs from the original (or a decoder that cannot finish); protected streams are
decoded normally and must reproduce the set exactly.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reprocodec.pointcloud import octree
from reprocodec.pointcloud.ply import read_ply

ENCODERS = "cpu,emulate-splitk"
DECODERS = ("cpu,cpu-nomkldnn,emulate-splitk,emulate-tf32,cpu-1thread,cpu-channels-last,"
            "noise:HALF,noise:1e-3")
MODES = ("none", "syndrome")


def test_clouds(data: Path) -> list[tuple[str, np.ndarray, int]]:
    manifest = json.loads((data / "manifest.json").read_text())
    out = []
    for entry in manifest["test"]:
        voxels = octree.sort_voxels(read_ply(data / entry["file"]))
        out.append((Path(entry["file"]).stem, voxels, int(entry["depth"])))
    return out


# ------------------------------------------------------------------------------ rate table


def draco_bits(voxels: np.ndarray, depth: int) -> tuple[int, bool]:
    import DracoPy

    # Quantization over the full 2^depth cube from the origin: each grid step is one voxel.
    data = DracoPy.encode(voxels.astype(np.float32), quantization_bits=depth,
                          compression_level=10, quantization_range=float((1 << depth) - 1),
                          quantization_origin=[0.0, 0.0, 0.0])
    back = np.asarray(DracoPy.decode(data).points, dtype=np.float64)
    lossless = np.array_equal(octree.sort_voxels(np.rint(back).astype(np.int64)), voxels) and \
        back.shape[0] == voxels.shape[0]
    return 8 * len(data), lossless


def laz_bits(voxels: np.ndarray) -> tuple[int, bool]:
    import laspy

    header = laspy.LasHeader(point_format=0, version="1.2")
    header.scales = np.array([1.0, 1.0, 1.0])
    header.offsets = np.zeros(3)
    las = laspy.LasData(header)
    las.x, las.y, las.z = voxels[:, 0], voxels[:, 1], voxels[:, 2]
    buf = io.BytesIO()
    las.write(buf, do_compress=True, laz_backend=laspy.LazBackend.Lazrs)
    size = len(buf.getvalue())
    buf.seek(0)
    back = laspy.read(buf)
    decoded = np.stack([back.X, back.Y, back.Z], axis=1).astype(np.int64)
    return 8 * size, np.array_equal(octree.sort_voxels(decoded), voxels)


def rate_table(data: Path, skip_others: bool) -> list[dict]:
    import torch

    from reprocodec import container
    from reprocodec.pointcloud import PointCloudCodec, adaptive

    torch.set_num_threads(1)
    codec = PointCloudCodec.load("octree-ctx-v1")
    rows = []
    for name, voxels, depth in test_clouds(data):
        n = voxels.shape[0]
        t0, c0 = time.perf_counter(), time.process_time()
        msg = codec.encode(voxels, depth=depth, mode="syndrome")
        packed = container.pack(msg)
        t1, c1 = time.perf_counter(), time.process_time()
        decoded = codec.decode(container.unpack(packed))
        t2, c2 = time.perf_counter(), time.process_time()
        row = {
            "cloud": name, "depth": depth, "points": n,
            "learned_bpp": 8 * len(packed) / n,
            "learned_payload_bpp": 8 * sum(len(p.data) for p in msg.payloads) / n,
            "protection_bpp": 8 * container.protection_bytes(msg) / n,
            "learned_lossless": bool(np.array_equal(decoded.voxels, voxels)),
            "encode_s_per_mpt": (t1 - t0) / n * 1e6,
            "decode_s_per_mpt": (t2 - t1) / n * 1e6,
            # CPU seconds of this process: what the wall time would be on an idle core.
            "encode_cpu_s_per_mpt": (c1 - c0) / n * 1e6,
            "decode_cpu_s_per_mpt": (c2 - c1) / n * 1e6,
            "octree_baseline_bpp": 8 * adaptive.encoded_size(voxels, depth) / n,
        }
        row["reduction_vs_baseline"] = 1 - row["learned_bpp"] / row["octree_baseline_bpp"]
        if not skip_others:
            bits, ok = draco_bits(voxels, depth)
            row["draco_bpp"], row["draco_lossless"] = bits / n, ok
            bits, ok = laz_bits(voxels)
            row["laz_bpp"], row["laz_lossless"] = bits / n, ok
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------- matrix


def _worker(args: argparse.Namespace) -> int:
    """One process, one profile: encode (mode 'encode') or decode (mode 'decode') a folder."""
    from reprocodec import container, numerics
    from reprocodec.pointcloud import PointCloudCodec

    numerics.apply_profile(args.profile)
    codec = PointCloudCodec.load("octree-ctx-v1")
    folder = Path(args.folder)
    clouds = {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}
    if args.worker == "encode":
        tag = args.profile.replace(":", "_")
        for name, voxels in clouds.items():
            for mode in MODES:
                msg = codec.encode(voxels, depth=args.matrix_depth, mode=mode)
                (folder / f"{name}__{tag}__{mode}.rpc").write_bytes(container.pack(msg))
        return 0
    results = {}
    for path in sorted(folder.glob("*.rpc")):
        name, _, mode = path.stem.split("__")
        msg = container.unpack(path.read_bytes())
        try:
            out = codec.decode(msg, verify=(mode != "none"))
            results[path.stem] = {"exact": bool(np.array_equal(out.voxels, clouds[name])),
                                  "error": None}
        except Exception as exc:  # a failure to count, whatever it is
            results[path.stem] = {"exact": False, "error": type(exc).__name__}
    Path(args.result).write_text(json.dumps(results))
    return 0


def matrix(data: Path, depth: int, encoders: list[str], decoders: list[str]) -> dict:
    from reprocodec.pointcloud.models import list_models

    bound = {i.name: i for i in list_models()}["octree-ctx-v1"].tensor_bound("occupancy_logit")
    decoders = [d.replace("HALF", f"{bound['value'] / 2:g}") for d in decoders]
    me = [sys.executable, str(Path(__file__).resolve()), "--matrix-depth", str(depth)]
    # Workers keep torch's default thread count (the rate table uses one thread), so that the
    # `cpu` and `cpu-1thread` profiles really differ.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_points = {}
        for name, voxels, cloud_depth in test_clouds(data):
            v = octree.sort_voxels(voxels >> (cloud_depth - depth))
            np.save(folder / f"{name}.npy", v)
            n_points[name] = int(v.shape[0])
        for p in encoders:
            subprocess.run(me + ["--worker", "encode", "--profile", p, "--folder", tmp],
                           check=True, env=env)
        cells = []
        for p in decoders:
            result = folder / "result.json"
            subprocess.run(me + ["--worker", "decode", "--profile", p, "--folder", tmp,
                                 "--result", str(result)], check=True, env=env)
            for stem, r in json.loads(result.read_text()).items():
                name, enc, mode = stem.split("__")
                cells.append({"cloud": name, "encoder": enc.replace("_", ":"), "decoder": p,
                              "mode": mode, **r})
    return {"depth": depth, "bound": bound, "points": n_points, "cells": cells}


def print_tables(rows: list[dict], mat: dict | None) -> None:
    if rows:
        print("\nbits per occupied voxel on held-out clouds (all checked lossless)")
        print(f"{'cloud':26s} {'D':>2s} {'points':>8s} {'learned':>8s} {'(prot.)':>8s} "
              f"{'octree':>7s} {'saving':>7s} {'Draco':>6s} {'LAZ':>6s} {'enc s/Mpt':>9s} "
              f"{'dec s/Mpt':>9s}")
        nan = float("nan")
        for r in rows:
            print(f"{r['cloud']:26s} {r['depth']:2d} {r['points']:8d} {r['learned_bpp']:8.3f} "
                  f"{r['protection_bpp']:8.4f} {r['octree_baseline_bpp']:7.3f} "
                  f"{100 * r['reduction_vs_baseline']:6.1f}% {r.get('draco_bpp', nan):6.2f} "
                  f"{r.get('laz_bpp', nan):6.2f} {r['encode_s_per_mpt']:9.2f} "
                  f"{r['decode_s_per_mpt']:9.2f}  (cpu {r['encode_cpu_s_per_mpt']:.1f} / "
                  f"{r['decode_cpu_s_per_mpt']:.1f})")
    if mat:
        print(f"\ncross-profile decodes at depth {mat['depth']} "
              f"(bound {mat['bound']['kind']} {mat['bound']['value']:.3g}): "
              "failed / decoded, per encoder -> decoder")
        pairs = sorted({(c["encoder"], c["decoder"]) for c in mat["cells"]})
        print(f"{'encoder':12s} {'decoder':22s} " + " ".join(f"{m:>12s}" for m in MODES))
        for enc, dec in pairs:
            counts = []
            for m in MODES:
                cs = [c for c in mat["cells"] if (c["encoder"], c["decoder"], c["mode"]) ==
                      (enc, dec, m)]
                counts.append(f"{sum(not c['exact'] for c in cs)}/{len(cs)}")
            print(f"{enc:12s} {dec:22s} " + " ".join(f"{c:>12s}" for c in counts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/pc")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--matrix-depth", type=int, default=8)
    ap.add_argument("--encoders", default=ENCODERS)
    ap.add_argument("--decoders", default=DECODERS)
    ap.add_argument("--skip-rates", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-others", action="store_true", help="no Draco / LAZ")
    ap.add_argument("--worker", choices=["encode", "decode"], help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    data = Path(args.data)
    if not (data / "manifest.json").exists():
        print(f"{data}/manifest.json missing: run python -m reprocodec.train.pointcloud_data first",
              file=sys.stderr)
        return 2
    rows = [] if args.skip_rates else rate_table(data, args.skip_others)
    mat = None if args.skip_matrix else matrix(data, args.matrix_depth,
                                              args.encoders.split(","), args.decoders.split(","))
    print_tables(rows, mat)
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": rows, "matrix": mat}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
