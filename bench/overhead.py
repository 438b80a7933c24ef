"""Protection overhead: side-information bytes / payload bytes, for every shipped model x
protection level x safeguard mode, per input, on Kodak (when present) and the shipped samples.

    python bench/overhead.py [--images DIR ...] [--max-images N] [--json out.json]

Prints, per model / level / mode: mean and max over the inputs of the overhead ratio, the
mean of (protection / whole stream), and the bound each protected tensor used. Defaults are
the CLI's (syndrome, both levels). Point clouds: the shipped samples at depth 8 and 10, and
synthetic surfaces of 10^5-10^6 points (--synthetic).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reprocodec import container, registry  # noqa: E402
from reprocodec.safeguard import Mode  # noqa: E402

KODAK = REPO.parent / "shared" / "data" / "kodak"
SAMPLES = REPO / "reprocodec" / "samples"
LEVELS = ("decoding", "reconstruction", "both")
MODES = (Mode.SYNDROME, Mode.FLAGS, Mode.SIMPLIFIED)


def _ratios(msg) -> tuple[float, float]:
    payload = sum(len(p.data) for p in msg.payloads)
    protection = container.protection_bytes(msg)
    return protection / payload, protection / msg.ByteSize()


def _bounds(msg) -> str:
    return ", ".join(f"{t.name} {container.bound_from_proto(t.bound).kind[:3]} {t.bound.value:.1g}"
                     for t in msg.protected if t.mode != 1)  # 1 = SAFEGUARD_MODE_NONE


def image_rows(folders: list[Path], max_images: int) -> list[dict]:
    kind = registry.kind("image")
    files = [f for d in folders if d.is_dir()
             for f in sorted(d.iterdir())[:max_images] if f.suffix.lower() in kind.input_suffixes]
    pixels = [(f.name, kind.read_input(f)) for f in files]
    rows: list[dict] = []
    if not pixels:
        return rows
    for info in kind.list_models():
        codec = kind.load(info.name)
        for level in LEVELS:
            for mode in MODES:
                ratios, shares, bpp, bounds = [], [], [], ""
                for _, px in pixels:
                    msg = codec.encode(px, mode=mode, level=level)
                    r, share = _ratios(msg)
                    ratios.append(r)
                    shares.append(share)
                    bpp.append(8 * msg.ByteSize() / (px.shape[0] * px.shape[1]))
                    bounds = _bounds(msg)
                rows.append({"model": info.name, "level": level, "mode": mode.value,
                             "inputs": len(pixels), "bpp": float(np.mean(bpp)),
                             "mean": float(np.mean(ratios)), "max": float(np.max(ratios)),
                             "share_of_stream": float(np.mean(shares)), "bounds": bounds})
                print(_line(rows[-1]), flush=True)
    return rows


def torus_and_sphere(samples: int, seed: int = 0) -> np.ndarray:
    """A synthetic closed surface (a torus and a sphere), `samples` points on each: at depth
    9-10 it gives 10^5-10^6 occupied voxels, sizes no shipped sample reaches."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2 * np.pi, samples), rng.uniform(0, 2 * np.pi, samples)
    torus = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u),
                      0.35 * np.sin(v)], 1)
    s = rng.normal(size=(samples, 3))
    sphere = s / np.linalg.norm(s, axis=1, keepdims=True) * 0.6 + [0, 0, 0.9]
    return np.concatenate([torus, sphere])


def cloud_rows(depths: tuple[int, ...], synthetic: list[tuple[int, int]]) -> list[dict]:
    kind = registry.kind("point_cloud")
    clouds = [(f.stem, kind.read_input(f), d) for f in sorted(SAMPLES.iterdir())
              if f.suffix == ".ply" for d in depths]
    clouds += [(f"torus+sphere {n // 1000}k", torus_and_sphere(n), d) for n, d in synthetic]
    rows = []
    for info in kind.list_models():
        codec = kind.load(info.name)
        for mode in MODES:
            for name, points, depth in clouds:
                msg = codec.encode(points, depth=depth, mode=mode)
                r, share = _ratios(msg)
                n = int(msg.point_cloud.num_points)
                rows.append({"model": info.name, "level": "decoding", "mode": mode.value,
                             "inputs": 1, "cloud": f"{name}@{depth}", "points": n,
                             "bpp": 8 * msg.ByteSize() / max(1, n), "mean": r, "max": r,
                             "share_of_stream": share, "bounds": _bounds(msg)})
                print(_line(rows[-1]) + f"  {n} points", flush=True)
    return rows


def _line(r: dict) -> str:
    what = r.get("cloud", f"{r['inputs']} images")
    return (f"{r['model']:26s} {r['level']:14s} {r['mode']:10s} {what:22s} "
            f"{r['bpp']:7.3f} {100 * r['mean']:8.3f}% {100 * r['max']:8.3f}%  {r['bounds']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, action="append",
                    help=f"image folders (default: {KODAK} if present, and the samples)")
    ap.add_argument("--max-images", type=int, default=24)
    ap.add_argument("--depths", default="8,10")
    ap.add_argument("--skip-clouds", action="store_true")
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--synthetic", default="150000@9,400000@10",
                    help="synthetic clouds SAMPLES@DEPTH (comma list; '' for none)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    folders = args.images or [p for p in (KODAK, SAMPLES) if p.is_dir()]
    print(f"{'model':26s} {'level':14s} {'mode':10s} {'inputs':22s} {'rate':>7s} "
          f"{'mean':>9s} {'max':>9s}  bounds")
    rows = [] if args.skip_images else image_rows(folders, args.max_images)
    if not args.skip_clouds:
        synthetic = [(int(n), int(d)) for n, d in
                     (x.split("@") for x in args.synthetic.split(",") if x)]
        rows += cloud_rows(tuple(int(d) for d in args.depths.split(",")), synthetic)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
