"""Point-cloud codec benchmark: rate and speed against Draco, LAZ and a non-learned octree
coder on held-out clouds, and the cross-profile decode matrix.

    python -m reprocodec.train.pointcloud_data --out data/pc          # once: the test clouds
    pip install -e '.[bench]'                                    # DracoPy, laspy, lazrs
    python bench/pointcloud.py [--data data/pc] [--matrix-depth 8] [--json out.json]
    python bench/pointcloud.py --clouds [--scale 1] [--runs 3] [--learned] [--threads 1]
                                        [--smallest] [--bitstream-format 4]
    python -m reprocodec.train.realscans --out data/real              # once: two real scans
    python bench/pointcloud.py --clouds --real data/real [--real-depths 10,12]

--clouds needs no data: the shipped samples and synthetic clouds (a dense torus+sphere surface,
1/4 and 1/20 samplings of it, a one-sided partial view, 1% uniform outliers, one sweep of a
64-beam spinning LiDAR in a street scene), each encoded and decoded in a fresh process that
sets glibc's malloc thresholds and warms the codec up as a service does before it serves
(server/allocator.fix_thresholds, its default --malloc-mmap-mb; its kernels loaded: `warm_up`;
then allocator.trim, as the service after its warm-ups; back-to-back requests, as these runs
are, find the service busy and it trims none between them: allocator.IdleTrim): the
encodes, then the decodes (the encoder and the decoder are two services: two processes), the
first one's seconds, then the median seconds of --runs more (and more, up to MAX_RUNS, while
they took under --min-seconds together: a small cloud's few ms a run would otherwise be one
moment of this machine's drift), the peak RSS (MiB) of the encodes from the warm-up on and
of the decodes from the encodes' end (the heap trimmed between), bits per point of ours
(whole stream), of the adaptive coder alone (its rANS bytes), of the learned model alone
(--learned), Draco and LAZ (when the bench extra is installed; otherwise a note says they
were skipped), the coder of each octree level (L learned, A adaptive, N neighbour coder) and
a lossless check. --smallest encodes with
coders="smallest" (the per-level choice by bits alone, and mixed probabilities from format 4;
probs: the learned levels' probabilities, model / refined / mixed, or none).
--bitstream-format V: the newest format the streams may need (4: no neighbour coder, as the
0.4.0 release wrote; the default, the newest).

--real DIR replaces the synthetic clouds by every DIR/*.ply (real scans: an airborne LiDAR tile
and a statue scan from reprocodec.train.realscans) at each of --real-depths.

Rate table: every held-out test cloud of data/pc/manifest.json (never used in training) at its
depth; bits per occupied voxel of each coder, each checked lossless against the voxel set
(the non-learned coder is the product's adaptive context coder, reprocodec/pointcloud/adaptive.py).
Seconds per million points are wall-clock on this machine with one thread, and the
process's CPU seconds beside them (the wall time on an idle core; the machine may be shared).
--clouds measures with --threads codec threads; its worker imports torch only for a model
that needs it (v1; octree-ctx-v2 on run the native path).

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
from reprocodec.pointcloud.models import DEFAULT_MODEL
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


GPCC_FLAGS = [  # cfg/octree-*-ctc-lossless-geom-*.yaml, geometry only (no attributes)
    "--mergeDuplicatedPoints=0", "--positionQuantizationScale=1", "--trisoupNodeSizeLog2=0",
    "--neighbourAvailBoundaryLog2=8", "--intra_pred_max_node_size_log2=6",
    "--inferredDirectCodingMode=1", "--maxNumQtBtBeforeOt=4", "--minQtbtSizeLog2=0",
    "--planarEnabled=1", "--planarModeIdcmUse=0", "--disableAttributeCoding=1"]


def gpcc_bits(voxels: np.ndarray, tmc3: str) -> tuple[int, bool, float, float]:
    """MPEG G-PCC (TMC13's tmc3, lossless octree geometry, the CTC flags): bits, lossless,
    encode and decode seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        src, bin_, rec = (str(Path(tmp) / n) for n in ("in.ply", "out.bin", "rec.ply"))
        header = (f"ply\nformat ascii 1.0\nelement vertex {voxels.shape[0]}\n"
                  "property float x\nproperty float y\nproperty float z\nend_header\n")
        with open(src, "w") as f:
            f.write(header)
            np.savetxt(f, voxels, fmt="%d")
        t0 = time.perf_counter()
        subprocess.run([tmc3, "--mode=0", f"--uncompressedDataPath={src}",
                        f"--compressedStreamPath={bin_}", *GPCC_FLAGS], check=True,
                       stdout=subprocess.DEVNULL)
        t1 = time.perf_counter()
        subprocess.run([tmc3, "--mode=1", f"--compressedStreamPath={bin_}",
                        f"--reconstructedDataPath={rec}", "--outputBinaryPly=0"], check=True,
                       stdout=subprocess.DEVNULL)
        t2 = time.perf_counter()
        back = read_ply(Path(rec))
        lossless = np.array_equal(octree.sort_voxels(np.rint(back).astype(np.int64)), voxels)
        return 8 * Path(bin_).stat().st_size, lossless, t1 - t0, t2 - t1


def _load_codec(model: str, threads: int, weights_dir: str | None = None):
    """The codec on `threads` threads; torch's too for a torch model (v1), the only case
    that imports torch (octree-ctx-v2 on run the native path). `weights_dir`: a folder holding
    <model>.pt/.json instead of the shipped weights (a model being evaluated)."""
    from reprocodec.pointcloud import PointCloudCodec
    from reprocodec.pointcloud.native import NativeGatherNetworks

    codec = PointCloudCodec.load(model, weights_dir=weights_dir, threads=threads)
    if not isinstance(codec.networks, NativeGatherNetworks):
        import torch

        torch.set_num_threads(threads)
    return codec


def rate_table(data: Path, skip_others: bool, model: str,
               weights_dir: str | None = None) -> list[dict]:
    from reprocodec import container
    from reprocodec.pointcloud import adaptive

    codec = _load_codec(model, threads=1, weights_dir=weights_dir)
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


# ---------------------------------------------------------------- synthetic and sample clouds

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
MAX_RUNS = 200  # --clouds: the most runs --min-seconds adds up to


def _torus_sphere(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and outward normals on a torus and a sphere (n each): a closed surface."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    torus = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u),
                      0.35 * np.sin(v)], 1)
    torus_n = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
    s = rng.normal(size=(n, 3))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    return np.concatenate([torus, s * 0.6 + [0, 0, 0.9]]), np.concatenate([torus_n, s])


def box_faces(n: int) -> np.ndarray:
    """The six faces of an axis-aligned n^3 box of integer voxels (int64, unique, sorted): a
    machined part's large flat faces, the repeats the count models learn and the plane
    stage places (the fuzzer's mixed seeds and the mixing tests)."""
    g = np.arange(n)
    u, v = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    faces = []
    for c in (0, n - 1):
        for axis in range(3):
            p = np.zeros((u.size, 3), np.int64)
            others = [a for a in range(3) if a != axis]
            p[:, axis], p[:, others[0]], p[:, others[1]] = c, u, v
            faces.append(p)
    return np.unique(np.concatenate(faces), axis=0)


def lidar_sweep(seed: int = 0, beams: int = 64, azimuths: int = 2048) -> np.ndarray:
    """One sweep of a spinning multi-beam sensor 1.8 m above a street: ground, building
    walls (boxes), poles (cylinders), ranges to 80 m with 2 cm noise. Rings on the ground,
    density falling with range: the distribution of outdoor LiDAR, nothing like a mesh."""
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(-25.0, 3.0, beams))
    azimuth = np.linspace(0, 2 * np.pi, azimuths, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    origin = np.array([0.0, 0.0, 1.8])
    t = np.full(d.shape[0], np.inf)
    down = d[:, 2] < 0
    t[down] = origin[2] / -d[down, 2]  # the ground z = 0
    boxes = [((8, -30, 0), (20, -9, 12)), ((-25, 6, 0), (-7, 30, 9)), ((10, 7, 0), (40, 25, 15)),
             ((-40, -35, 0), (-12, -8, 20)), ((3, -4, 0), (5.5, -2, 1.5))]
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi in boxes:  # slab test
            t1, t2 = (np.array(lo) - origin) / d, (np.array(hi) - origin) / d
            near = np.nanmax(np.minimum(t1, t2), axis=1)
            far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (near <= far) & (near > 0)
            t[hit] = np.minimum(t[hit], near[hit])
        for cx, cy, r in [(4, 3, 0.15), (-3, -5, 0.2), (12, 0, 0.3), (-6, 2, 0.15), (6, -6, 0.4)]:
            ox, oy = origin[0] - cx, origin[1] - cy
            a = d[:, 0] ** 2 + d[:, 1] ** 2
            b = 2 * (ox * d[:, 0] + oy * d[:, 1])
            disc = b * b - 4 * a * (ox * ox + oy * oy - r * r)
            tc = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            hit = (disc >= 0) & (tc > 0) & (origin[2] + tc * d[:, 2] < 6)
            t[hit] = np.minimum(t[hit], tc[hit])
    keep = t < 80.0
    r = t[keep] + rng.normal(0, 0.02, keep.sum())
    return origin + d[keep] * r[:, None]


def real_clouds(folder: Path, depths: list[int]) -> list[tuple[str, np.ndarray, int]]:
    """Every folder/*.ply at each depth (the real scans of reprocodec.train.realscans)."""
    files = sorted(folder.glob("*.ply"))
    if not files:
        raise SystemExit(f"no .ply in {folder}: run python -m reprocodec.train.realscans first")
    return [(f"{f.stem} d{d}", read_ply(f), d) for f in files for d in depths]


def large_clouds() -> list[tuple[str, np.ndarray, int]]:
    """1-2 million points: the speed and memory rows (--large)."""
    return [("surface 3M samples", _torus_sphere(1_500_000, 2)[0], 9),
            ("surface 2M samples", _torus_sphere(1_000_000, 3)[0], 10)]


def synthetic_clouds(scale: float = 1.0) -> list[tuple[str, np.ndarray, int]]:
    """(name, points, depth): shipped samples, a dense surface, sparser samplings of it, a
    partial (one-sided) view, outliers, a LiDAR sweep. `scale` multiplies the point counts."""
    n = int(300_000 * scale)
    surface, normals = _torus_sphere(n, 0)
    rng = np.random.default_rng(1)
    view = np.array([1.0, -0.6, 0.8]) / np.linalg.norm([1.0, -0.6, 0.8])
    outliers = np.concatenate([surface, rng.uniform(-1.4, 1.6, (n // 100, 3))])
    return [
        ("camel (sample)", read_ply(SAMPLES / "camel_d6.ply"), 6),
        ("elephant (sample)", read_ply(SAMPLES / "elephant_d7.ply"), 7),
        ("surface dense", surface, 9),
        ("surface 1/4 sampled", surface[rng.random(2 * n) < 0.25], 10),
        ("surface 1/20 sampled", surface[rng.random(2 * n) < 0.05], 10),
        ("partial view", surface[normals @ view > 0.2], 9),
        ("surface + 1% outliers", outliers, 9),
        ("lidar 64x2048", lidar_sweep(0, 64, max(256, int(2048 * scale))), 12),
    ]


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM where Linux has it: getrusage's ru_maxrss survives exec,
    so a worker would report its parent's RSS at fork (the --large clouds) as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _restart_peak_rss_mb() -> float:
    """This process's RSS now, from which its peak RSS (_peak_rss_mb) counts again where
    Linux lets a process reset it (/proc/self/clear_refs); elsewhere its peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


def _as_the_service_trims(allocator, estimate: int) -> None:
    """The heap trimmed after a request as the service does between back-to-back requests:
    after a large one only (allocator.IdleTrim; untimed here, in the request's end there)."""
    if estimate >= allocator.TRIM_AFTER_BYTES:
        allocator.trim()


def _measure_worker(args: argparse.Namespace) -> int:
    """One cloud in a fresh process, the codec warmed up: the first encode, then `runs` more
    (medians; every stream the same bytes), the encodes' peak RSS from the warm-up on; then
    the same for the decodes of the stream (each checked lossless), their peak from the
    encodes' end (the heap trimmed)."""
    from reprocodec import container
    from reprocodec.pointcloud import LEARNED_PROBABILITIES, adaptive
    from reprocodec.pointcloud.codec import level_coders
    from reprocodec.server import allocator
    from reprocodec.server.core import request_memory

    allocator.fix_thresholds()  # as a service does (its default --malloc-mmap-mb)
    voxels = np.load(args.cloud)
    depth = args.depth
    codec = _load_codec(args.model, args.threads, args.weights_dir)
    # As a service before it serves (its kernels loaded, its networks run once): the runs
    # time the codec, not numba loading its kernels on the way (0.4-0.6 s a process)
    codec.warm_up()
    allocator.trim()  # the warm-ups' freed pages back to the system, as the service does
    base_mb = _restart_peak_rss_mb()
    # The encodes, then the decodes: an encoder and a decoder service are two processes, and
    # a decode after an encode in one process started on the encoder's freed heap (an 0.97
    # M-point sweep's decode peaked 30 MB higher that way). The first one apart; then
    # --runs, and more while they took under --min-seconds together.
    enc, enc_cpu, packed, same_bytes = [], [], b"", True
    while len(enc) < args.runs + 1 or (sum(enc[1:]) < args.min_seconds / 2
                                       and len(enc) < MAX_RUNS + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        msg = codec.encode(voxels, depth=depth, coders=args.coders,
                           bitstream_format=args.bitstream_format or container.FORMAT_VERSION)
        stream = container.pack(msg)
        enc.append(time.perf_counter() - t0)
        enc_cpu.append(time.process_time() - c0)
        same_bytes = same_bytes and (not packed or stream == packed)
        packed = stream  # (one request's output held at a time)
        del stream
        _as_the_service_trims(allocator, request_memory("EncodePointCloud", len(voxels)))
    encode_peak_mb = _peak_rss_mb()
    allocator.trim()  # (the decoder's process never held the encoder's buffers)
    decode_base_mb = _restart_peak_rss_mb()
    dec, dec_cpu, lossless = [], [], same_bytes
    while len(dec) < args.runs + 1 or (sum(dec[1:]) < args.min_seconds / 2
                                       and len(dec) < MAX_RUNS + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        out = codec.decode(container.unpack(packed))
        dec.append(time.perf_counter() - t0)
        dec_cpu.append(time.process_time() - c0)
        lossless = lossless and bool(np.array_equal(out.voxels, voxels))  # every run's
        del out
        _as_the_service_trims(allocator, request_memory("DecodePointCloud", len(voxels)))
    decode_peak_mb = _peak_rss_mb()
    stream_bytes = len(packed)
    names = [p.name for p in msg.payloads]
    levels = level_coders(msg)
    n = voxels.shape[0]
    row = {"points": n, "depth": depth, "ours_bpp": 8 * stream_bytes / n,
           "ours_payload_bpp": 8 * sum(len(p.data) for p in msg.payloads) / n,
           "protection_bpp": 8 * container.protection_bytes(msg) / n, "levels": levels,
           "probs": LEARNED_PROBABILITIES.get(names[0] if names else "", "none"),
           "coders": args.coders, "format": msg.format_version,
           "ours_lossless": lossless,
           "adaptive_bpp": 8 * adaptive.encoded_size(voxels, depth) / n,
           "first_encode_s": enc[0], "first_decode_s": dec[0],
           "encode_s": float(np.median(enc[1:])), "decode_s": float(np.median(dec[1:])),
           "encode_cpu_s": float(np.median(enc_cpu[1:])),
           "decode_cpu_s": float(np.median(dec_cpu[1:])),
           "model": args.model, "threads": args.threads, "torch": "torch" in sys.modules,
           "peak_rss_mb": max(encode_peak_mb, decode_peak_mb), "loaded_rss_mb": base_mb,
           "encode_peak_rss_mb": encode_peak_mb, "decode_peak_rss_mb": decode_peak_mb,
           "decode_loaded_rss_mb": decode_base_mb, "runs": len(enc) - 1}
    if args.learned:
        learned = container.pack(codec.encode(voxels, depth=depth, coders="learned"))
        row["learned_only_bpp"] = 8 * len(learned) / n
    Path(args.result).write_text(json.dumps(row))
    return 0


def _others(voxels: np.ndarray, depth: int, row: dict, notes: set[str], tmc3: str | None
            ) -> None:
    if tmc3:
        bits, ok, enc_s, dec_s = gpcc_bits(voxels, tmc3)
        row["gpcc_bpp"], row["gpcc_lossless"] = bits / voxels.shape[0], ok
        row["gpcc_encode_s"], row["gpcc_decode_s"] = enc_s, dec_s
    else:
        notes.add("G-PCC: skipped (no tmc3: pass --tmc3 PATH or set TMC3; build it from "
                  "github.com/MPEGGroup/mpeg-pcc-tmc13 with cmake)")
    coders = (("draco", lambda: draco_bits(voxels, depth)), ("laz", lambda: laz_bits(voxels)))
    for name, fn in coders:
        try:
            bits, ok = fn()
        except ImportError as exc:
            notes.add(f"{name}: skipped ({exc.name} is not installed: pip install -e '.[bench]')")
            continue
        row[f"{name}_bpp"], row[f"{name}_lossless"] = bits / voxels.shape[0], ok


def cloud_table(clouds: list[tuple[str, np.ndarray, int]], runs: int, threads: int,
                learned: bool, skip_others: bool, tmc3: str | None = None,
                model: str = DEFAULT_MODEL, weights_dir: str | None = None,
                coders: str = "auto", bitstream_format: int | None = None,
                min_seconds: float = 1.0) -> tuple[list[dict], list[str]]:
    rows, notes = [], set()
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        for name, points, depth in clouds:
            voxels = octree.voxelize(points, depth).voxels
            path, result = Path(tmp) / "cloud.npy", Path(tmp) / "result.json"
            np.save(path, voxels)
            cmd = me + ["--measure-worker", "--cloud", str(path), "--depth", str(depth),
                        "--runs", str(runs), "--min-seconds", str(min_seconds),
                        "--threads", str(threads), "--result", str(result),
                        "--model", model, "--coders", coders] + (
                            ["--weights-dir", weights_dir] if weights_dir else []) + (
                            ["--bitstream-format", str(bitstream_format)]
                            if bitstream_format else [])
            subprocess.run(cmd + (["--learned"] if learned else []), check=True)
            row = {"cloud": name, **json.loads(result.read_text())}
            if not skip_others:
                _others(voxels, depth, row, notes, tmc3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows, sorted(notes)


def print_cloud_table(rows: list[dict], notes: list[str]) -> None:
    nan = float("nan")
    print("\nbits per occupied voxel: ours = whole stream (container header included), payl. = "
          "its payloads only, adapt. = the adaptive coder's rANS bytes, learned = the learned "
          "model alone (whole stream);\nlevels: coder of each octree level, L learned, A "
          "adaptive; enc/dec: median seconds (wall; cpu: the process's CPU seconds, what the wall "
          "time would be on idle cores; 1st: the first encode / decode of the cloud); RSS: peak "
          "MiB of the measuring process over its encodes (from the codec's warm-up on) and "
          "over its decodes (from the encodes' end, the heap trimmed), +/Mpt: the larger one's "
          "rise over the warmed-up codec's per million points; model: " +
          ", ".join(sorted({r.get("model", "?") for r in rows})) + "; threads: " +
          ", ".join(sorted({str(r.get("threads", "?")) for r in rows})))
    print(f"{'cloud':22s} {'D':>2s} {'points':>8s} {'ours':>7s} {'(payl.)':>7s} {'adapt.':>7s} "
          f"{'learned':>7s} {'G-PCC':>6s} "
          f"{'Draco':>6s} {'LAZ':>6s} {'levels':>13s} {'probs':>7s} {'enc s':>6s} {'dec s':>6s} "
          f"{'s/Mpt':>11s} {'1st s/Mpt':>11s} {'cpu s/Mpt':>11s} {'RSS enc/dec':>11s} "
          f"{'+/Mpt':>6s} "
          "lossless")
    for r in rows:
        mpt = r["points"] / 1e6
        lossless = all(r.get(f"{c}_lossless", True) for c in ("ours", "gpcc", "draco", "laz"))
        print(f"{r['cloud']:22s} {r['depth']:2d} {r['points']:8d} {r['ours_bpp']:7.3f} "
              f"{r['ours_payload_bpp']:7.3f} "
              f"{r['adaptive_bpp']:7.3f} {r.get('learned_only_bpp', nan):7.3f} "
              f"{r.get('gpcc_bpp', nan):6.2f} "
              f"{r.get('draco_bpp', nan):6.2f} {r.get('laz_bpp', nan):6.2f} {r['levels']:>13s} "
              f"{r.get('probs', '-'):>7s} "
              f"{r['encode_s']:6.2f} {r['decode_s']:6.2f} "
              f"{r['encode_s'] / mpt:5.2f}/{r['decode_s'] / mpt:<5.2f} "
              f"{r['first_encode_s'] / mpt:5.2f}/{r['first_decode_s'] / mpt:<5.2f} "
              f"{r['encode_cpu_s'] / mpt:5.2f}/{r['decode_cpu_s'] / mpt:<5.2f} "
              f"{r.get('encode_peak_rss_mb', r['peak_rss_mb']):5.0f}/"
              f"{r.get('decode_peak_rss_mb', r['peak_rss_mb']):<5.0f} "
              f"{(r['peak_rss_mb'] - r['loaded_rss_mb']) / mpt:6.0f} "
              f"{lossless}")
    for note in notes:
        print(f"note: {note}")


# ---------------------------------------------------------------------------------- matrix


def _worker(args: argparse.Namespace) -> int:
    """One process, one profile: encode (mode 'encode') or decode (mode 'decode') a folder."""
    from reprocodec import container, numerics
    from reprocodec.pointcloud import PointCloudCodec

    numerics.apply_profile(args.profile)
    codec = PointCloudCodec.load(args.model)
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


def matrix(data: Path, depth: int, encoders: list[str], decoders: list[str], model: str
           ) -> dict:
    from reprocodec.pointcloud.models import list_models

    bound = {i.name: i for i in list_models()}[model].tensor_bound("occupancy_logit")
    decoders = [d.replace("HALF", f"{bound['value'] / 2:g}") for d in decoders]
    me = [sys.executable, str(Path(__file__).resolve()), "--matrix-depth", str(depth),
          "--model", model]
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
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="point-cloud model (default: the default model; octree-ctx-v1 for the "
                         "earlier one)")
    ap.add_argument("--weights-dir",
                    help="load --model from this folder (<model>.pt and .json) instead of the "
                         "shipped weights: a model not shipped yet (rate table and --clouds)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--matrix-depth", type=int, default=8)
    ap.add_argument("--encoders", default=ENCODERS)
    ap.add_argument("--decoders", default=DECODERS)
    ap.add_argument("--skip-rates", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-others", action="store_true", help="no Draco / LAZ")
    ap.add_argument("--clouds", action="store_true",
                    help="the synthetic and sample cloud table (no data needed)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="--clouds: point counts times this (1: about 10^5-10^6 points)")
    ap.add_argument("--runs", type=int, default=3, help="--clouds: runs per cloud (medians)")
    ap.add_argument("--min-seconds", type=float, default=1.0,
                    help=f"--clouds: more runs (up to {MAX_RUNS}) until they took this long "
                    "together")
    ap.add_argument("--large", action="store_true",
                    help="--clouds: only the 1-2 million point clouds (speed, memory)")
    ap.add_argument("--threads", type=int, default=1,
                    help="--clouds: the codec's threads (torch's, for a torch model)")
    ap.add_argument("--learned", action="store_true",
                    help="--clouds: also the learned model alone on every level")
    ap.add_argument("--real", type=Path,
                    help="--clouds: the .ply files of this folder instead of the synthetic ones")
    ap.add_argument("--real-depths", default="10,12", help="--real: octree depths")
    ap.add_argument("--tmc3", default=os.environ.get("TMC3"),
                    help="--clouds: MPEG G-PCC's tmc3 binary (TMC13) for a G-PCC column")
    ap.add_argument("--smallest", action="store_true",
                    help="--clouds: encode with coders=\"smallest\" (mixed probabilities too)")
    ap.add_argument("--bitstream-format", type=int, default=None,
                    help="--clouds: the newest bitstream format the streams may need (default: "
                         "the newest; 4 as release 0.4.0 wrote, without the neighbour coder)")
    ap.add_argument("--coders", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--measure-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cloud", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["encode", "decode"], help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    if args.measure_worker:
        return _measure_worker(args)
    if args.clouds:
        clouds = (real_clouds(args.real, [int(d) for d in args.real_depths.split(",")])
                  if args.real else large_clouds() if args.large
                  else synthetic_clouds(args.scale))
        rows, notes = cloud_table(clouds, args.runs, args.threads,
                                  args.learned, args.skip_others, args.tmc3, args.model,
                                  args.weights_dir, "smallest" if args.smallest else "auto",
                                  args.bitstream_format, args.min_seconds)
        print_cloud_table(rows, notes)
        if args.json:
            Path(args.json).write_text(json.dumps({"clouds": rows, "notes": notes}, indent=1))
        return 0
    data = Path(args.data)
    if not (data / "manifest.json").exists():
        print(f"{data}/manifest.json missing: run python -m reprocodec.train.pointcloud_data first",
              file=sys.stderr)
        return 2
    rows = [] if args.skip_rates else rate_table(data, args.skip_others, args.model,
                                                 args.weights_dir)
    mat = None if args.skip_matrix else matrix(data, args.matrix_depth, args.encoders.split(","),
                                              args.decoders.split(","), args.model)
    print_tables(rows, mat)
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": rows, "matrix": mat}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
