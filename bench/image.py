"""Image codec benchmark: cross-profile reproducibility, noise detection, rate-distortion
against Pillow JPEG / WebP, safeguard overhead, and encode/decode time.

    .venv/bin/python bench/image.py                 # tables
    .venv/bin/python bench/image.py --json out.json # also machine-readable

Sections (each can be skipped):
  matrix   encode under --encoder-profile (one process), decode under each --profiles entry
           (one process each, profiles are process-global). Mode none counts what plain
           CompressAI would do: index flips per tensor and corrupt outputs, decoding on past the
           failed check (internal verify=False); protected modes must show zero failures,
           verification passed and byte-identical PNGs.
  noise    decode under noise:EPS for EPS inside and far beyond the bounds: inside must decode
           exactly; beyond must be detected (VerificationError), never silent garbage.
  rd       bpp / PSNR per shipped model on Kodak-like photos (default /work/shared/data/kodak)
           vs Pillow JPEG and WebP at the same bpp (interpolated).
  overhead protection bytes / payload bytes per mode and level; encode/decode time with and
           without protection.
Without shipped weights it falls back to a random model (numbers then say nothing about
compression, only about reproducibility) and says so.
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

from reprocodec.image.io import psnr
from reprocodec.safeguard import Mode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODES = [m.value for m in Mode]
CPU_PROFILES = ["cpu-nomkldnn", "cpu-channels-last", "cpu-1thread", "emulate-splitk",
                "emulate-tf32"]
KODAK = Path("/work/shared/data/kodak")
SAMPLES = REPO / "reprocodec" / "samples"


# ------------------------------------------------------------------------------- workers


def _load_images(paths: list[str], max_side: int) -> list[tuple[str, np.ndarray]]:
    from reprocodec.image.io import read_image

    out = []
    for p in paths:
        px = read_image(p)
        h, w = px.shape[:2]
        top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        out.append((Path(p).stem, np.ascontiguousarray(px[top : top + max_side,
                                                          left : left + max_side])))
    return out


def worker_encode(args: argparse.Namespace) -> None:
    from reprocodec import container, numerics
    from reprocodec.image import ImageCodec

    numerics.apply_profile(args.profile)
    codec = ImageCodec.load(args.model)
    work = Path(args.work)
    for stem, px in _load_images(args.images, args.max_side):
        for mode in MODES:
            cap: dict = {}
            msg = codec.encode(px, mode, args.level, capture=cap)
            (work / f"{stem}.{mode}.rpc").write_bytes(container.pack(msg))
            np.savez(work / f"{stem}.{mode}.enc.npz",
                     **{k: v for k, v in cap.items() if k.endswith("_indices") or k == "output"})


def worker_decode(args: argparse.Namespace) -> None:
    """Decode every stream in work dir; one JSON line per stream on stdout."""
    from reprocodec import container, numerics
    from reprocodec.image import ImageCodec
    from reprocodec.image.io import encode_png

    numerics.apply_profile(args.profile)
    codec = ImageCodec.load(args.model)
    work = Path(args.work)
    for rpc in sorted(work.glob("*.rpc")):
        stem = rpc.name[: -len(".rpc")]
        enc = np.load(work / f"{stem}.enc.npz")
        msg = container.unpack(rpc.read_bytes())
        row: dict = {"stream": stem, "profile": args.profile}
        cap: dict = {}
        # verify=False decodes on past a failed check (what plain CompressAI would return);
        # a verifying decoder raises VerificationError exactly when some tensor mismatched.
        decoded = codec.decode(msg, verify=False, capture=cap)
        row["verified"] = all(t.matched for t in decoded.tensors)
        row["flips"] = {
            k[: -len("_indices")]: int(np.count_nonzero(cap[k] != enc[k]))
            for k in enc.files if k.endswith("_indices") and k in cap
        }
        row["corrupt_output"] = not np.array_equal(decoded.pixels, enc["output"])
        row["png_identical"] = encode_png(decoded.pixels) == encode_png(enc["output"])
        row["max_abs_pixel_error"] = int(np.abs(decoded.pixels.astype(int)
                                                - enc["output"].astype(int)).max())
        print(json.dumps(row), flush=True)


def _spawn(kind: str, profile: str, model: str, work: Path, extra: list[str],
           env: dict) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", kind, "--profile", profile, "--model", model,
           "--work", str(work), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker under {profile} failed:\n{done.stderr[-2000:]}")
    return [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]


# ------------------------------------------------------------------------------- sections


def section_matrix(model: str, images: list[str], profiles: list[str], args, env) -> dict:
    out: dict = {"model": model, "images": [Path(i).name for i in images], "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        extra = ["--level", "both", "--max-side", str(args.max_side), "--images", *images]
        _spawn("encode", args.encoder_profile, model, work, extra, env)
        for prof in profiles:
            rows = _spawn("decode", prof, model, work, [], env)
            for mode in MODES:
                rs = [r for r in rows if r["stream"].endswith(f".{mode}")]
                flips: dict = {}
                for r in rs:
                    for k, v in r["flips"].items():
                        flips[k] = flips.get(k, 0) + v
                out["rows"].append({
                    "decoder_profile": prof, "mode": mode, "streams": len(rs),
                    "index_flips": flips,
                    "streams_with_flips": sum(any(r["flips"].values()) for r in rs),
                    "corrupt_outputs": sum(r["corrupt_output"] for r in rs),
                    "verification_failures": sum(not r["verified"] for r in rs),
                    "png_identical": sum(r["png_identical"] for r in rs),
                    "max_abs_pixel_error": max((r["max_abs_pixel_error"] for r in rs), default=0),
                })
    return out


def print_matrix(m: dict) -> None:
    print(f"\n## Cross-profile matrix: {m['model']}, encoder {ARGS.encoder_profile}, "
          f"{len(m['images'])} images, level both")
    print(f"{'decoder':18s} {'mode':10s} {'flips(stream)':>13s} {'index flips':32s} "
          f"{'corrupt':>7s} {'detected':>8s} {'PNG ==':>6s} {'max|err|':>8s}")
    for r in m["rows"]:
        fl = " ".join(f"{k}={v}" for k, v in r["index_flips"].items())
        print(f"{r['decoder_profile']:18s} {r['mode']:10s} {r['streams_with_flips']:>6d}/"
              f"{r['streams']:<6d} {fl:32s} {r['corrupt_outputs']:>7d} "
              f"{r['verification_failures']:>8d} {r['png_identical']:>3d}/{r['streams']:<2d} "
              f"{r['max_abs_pixel_error']:>8d}")


def section_noise(model: str, images: list[str], args, env) -> dict:
    from reprocodec.image.models import MEAN_ARCHITECTURES, WEIGHTS_DIR, read_info

    info = read_info(WEIGHTS_DIR / f"{model}.json")
    names = ["scale_index", "pixels"] + (["mean_grid"] if info.architecture in MEAN_ARCHITECTURES
                                         else [])
    bounds = [float(info.tensor_bound(n)["value"]) for n in names]
    eps_list = [0.5 * min(bounds), 10 * max(bounds), 0.01]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        work = Path(tmp)
        extra = ["--level", "both", "--max-side", str(args.max_side), "--images", *images]
        _spawn("encode", args.encoder_profile, model, work, extra, env)
        for eps in eps_list:
            res = _spawn("decode", f"noise:{eps:.3g}", model, work, [], env)
            for mode in MODES:
                rs = [r for r in res if r["stream"].endswith(f".{mode}")]
                rows.append({
                    "eps": eps, "mode": mode, "streams": len(rs),
                    "exact": sum(r["verified"] and not r["corrupt_output"] for r in rs),
                    "detected": sum(not r["verified"] for r in rs),
                    "silent_garbage": sum(r["verified"] and r["corrupt_output"] for r in rs),
                })
    return {"model": model, "bounds": dict(zip(names, bounds, strict=True)), "rows": rows}


def print_noise(n: dict) -> None:
    print(f"\n## noise:EPS decoder vs bounds {n['bounds']} ({n['model']})")
    print(f"{'EPS':>10s} {'mode':10s} {'exact':>6s} {'detected':>8s} {'silent garbage':>14s}")
    for r in n["rows"]:
        print(f"{r['eps']:>10.3g} {r['mode']:10s} {r['exact']:>3d}/{r['streams']:<2d} "
              f"{r['detected']:>8d} {r['silent_garbage']:>14d}")


def _pillow_curve(px: np.ndarray, fmt: str) -> list[tuple[float, float]]:
    from PIL import Image

    img = Image.fromarray(px[:, :, 0] if px.shape[2] == 1 else px)
    pts = []
    for q in (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95):
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=q)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(img.mode))
        pts.append((8 * len(buf.getvalue()) / (px.shape[0] * px.shape[1]),
                    psnr(dec.reshape(px.shape), px)))
    return sorted(pts)


def _interp(curve: list[tuple[float, float]], bpp: float) -> float | None:
    xs, ys = zip(*curve, strict=True)
    if bpp < xs[0] or bpp > xs[-1]:
        return None
    return float(np.interp(bpp, xs, ys))


def section_rd(models: list[str], images: list[str], args) -> dict:
    """In this process (profile cpu): rate/distortion and, on the first few images, the
    overhead and time of every mode and level."""
    from reprocodec import container
    from reprocodec.image import ImageCodec
    from reprocodec.image.io import read_image

    rows, overhead = [], []
    photos = [(Path(p).stem, read_image(p)) for p in images]
    curves = {fmt: [_pillow_curve(px, fmt) for _, px in photos] for fmt in ("JPEG", "WEBP")}
    for model in models:
        codec = ImageCodec.load(model)
        bpps, psnrs, ref = [], [], {"JPEG": [], "WEBP": []}
        for i, (_, px) in enumerate(photos):
            msg = codec.encode(px, "syndrome", "both")
            data = container.pack(msg)
            decoded = codec.decode(container.unpack(data))
            bpp = 8 * len(data) / (px.shape[0] * px.shape[1])
            bpps.append(bpp)
            psnrs.append(psnr(decoded.pixels, px))
            for fmt in ref:
                ref[fmt].append(_interp(curves[fmt][i], bpp))
        row = {"model": model, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))}
        for fmt, vals in ref.items():
            ok = [v for v in vals if v is not None]
            row[f"{fmt.lower()}_psnr_same_bpp"] = float(np.mean(ok)) if len(ok) == len(vals) \
                else None
        rows.append(row)
        overhead.extend(_overhead(codec, model, photos[: args.overhead_images]))
    return {"images": [Path(p).name for p in images], "rows": rows, "overhead": overhead}


class _SafeguardTimer:
    """Wraps the codec's protect/resolve to measure the time spent in the safeguard itself
    (end-to-end times on a shared 2-core machine are too noisy to show a few percent)."""

    def __init__(self) -> None:
        import reprocodec.image.codec as codec_module

        self.seconds = 0.0
        self.module = codec_module
        self.orig = (codec_module.sg_protect, codec_module.sg_resolve)
        codec_module.sg_protect = self._timed(self.orig[0])
        codec_module.sg_resolve = self._timed(self.orig[1])

    def _timed(self, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
        return wrapper

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def _overhead(codec, model: str, photos) -> list[dict]:
    from reprocodec import container

    timer = _SafeguardTimer()
    out = []
    for level in ("decoding", "reconstruction", "both"):
        for mode in MODES:
            payload = prot = 0
            t_enc = t_dec = sg_enc = sg_dec = 0.0
            for _, px in photos:
                best_enc = best_dec = float("inf")
                for _ in range(ARGS.repeats):  # min of repeats: least disturbed run
                    timer.take()
                    t0 = time.perf_counter()
                    msg = codec.encode(px, mode, level)
                    t1 = time.perf_counter()
                    s_enc = timer.take()
                    data = container.pack(msg)
                    t2 = time.perf_counter()
                    codec.decode(container.unpack(data))
                    t3 = time.perf_counter()
                    s_dec = timer.take()
                    if t1 - t0 < best_enc:
                        best_enc, sg_e = t1 - t0, s_enc
                    if t3 - t2 < best_dec:
                        best_dec, sg_d = t3 - t2, s_dec
                t_enc, t_dec, sg_enc, sg_dec = (t_enc + best_enc, t_dec + best_dec,
                                                sg_enc + sg_e, sg_dec + sg_d)
                payload += sum(len(p.data) for p in msg.payloads)
                prot += container.protection_bytes(msg)
            n = len(photos)
            out.append({"model": model, "level": level, "mode": mode,
                        "overhead_pct": 100 * prot / payload, "protection_bytes": prot,
                        "payload_bytes": payload, "encode_s": t_enc / n, "decode_s": t_dec / n,
                        # What protection adds: protect/resolve time over the rest of the call.
                        "safeguard_encode_pct": 100 * sg_enc / (t_enc - sg_enc),
                        "safeguard_decode_pct": 100 * sg_dec / (t_dec - sg_dec)})
    timer.module.sg_protect, timer.module.sg_resolve = timer.orig
    return out


def print_rd(rd: dict) -> None:
    print(f"\n## Rate-distortion on {len(rd['images'])} images (container bytes, RGB PSNR)")
    print(f"{'model':28s} {'bpp':>7s} {'PSNR':>7s} {'JPEG@bpp':>9s} {'WebP@bpp':>9s}")
    for r in rd["rows"]:
        j, w = r["jpeg_psnr_same_bpp"], r["webp_psnr_same_bpp"]
        print(f"{r['model']:28s} {r['bpp']:>7.3f} {r['psnr']:>7.2f} "
              f"{(f'{j:.2f}' if j else '-'):>9s} {(f'{w:.2f}' if w else '-'):>9s}")
    print("\n## Safeguard overhead and time (per image)")
    print("(sg %: protect/resolve time over the rest of encode/decode: what protection adds)")
    print(f"{'model':28s} {'level':15s} {'mode':10s} {'overhead %':>10s} {'prot B':>7s} "
          f"{'encode s':>9s} {'sg enc %':>8s} {'decode s':>9s} {'sg dec %':>8s}")
    for r in rd["overhead"]:
        print(f"{r['model']:28s} {r['level']:15s} {r['mode']:10s} {r['overhead_pct']:>10.3f} "
              f"{r['protection_bytes']:>7d} {r['encode_s']:>9.3f} "
              f"{r['safeguard_encode_pct']:>8.2f} {r['decode_s']:>9.3f} "
              f"{r['safeguard_decode_pct']:>8.2f}")


# ----------------------------------------------------------------------------------- main


def _default_images(folder: Path | None, n: int) -> list[str]:
    if folder and folder.is_dir():
        return [str(p) for p in sorted(folder.glob("*.png"))[:n]]
    return [str(p) for p in sorted(SAMPLES.glob("*.png"))[:n]]


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["encode", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--profile", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--level", default="both", help=argparse.SUPPRESS)
    p.add_argument("--images", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--model", action="append",
                   help="shipped model(s) (default: all shipped image models)")
    p.add_argument("--encoder-profile", default="cpu")
    p.add_argument("--profiles", default=",".join(CPU_PROFILES),
                   help="decoder profiles for the matrix")
    p.add_argument("--photos", type=Path, default=KODAK if KODAK.is_dir() else None,
                   help="evaluation folder (default /work/shared/data/kodak if present)")
    p.add_argument("--matrix-images", type=int, default=6)
    p.add_argument("--rd-images", type=int, default=24)
    p.add_argument("--overhead-images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="timing: min over repeats")
    p.add_argument("--max-side", type=int, default=512, help="matrix crops (speed)")
    p.add_argument("--skip", default="", help="comma list of sections to skip")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    args = ARGS = p.parse_args()

    if args.worker:
        args.model = args.model[0]
        (worker_encode if args.worker == "encode" else worker_decode)(args)
        return 0

    from reprocodec.image import list_models

    env = dict(os.environ)
    tmp_weights = None
    models = [m for entry in (args.model or []) for m in entry.split(",")]
    if not models:
        models = [i.name for i in list_models()]
    if not models:
        from reprocodec.image.testing import write_random_model

        tmp_weights = tempfile.mkdtemp(prefix="bench-weights-")
        models = [write_random_model(tmp_weights, "mbt2018-mean", n=64, m=96, seed=0)]
        env["REPROCODEC_WEIGHTS_DIR"] = tmp_weights
        os.environ["REPROCODEC_WEIGHTS_DIR"] = tmp_weights
        import reprocodec.image.models as registry

        registry.WEIGHTS_DIR = Path(tmp_weights)  # read at call time by the loaders
        print("NOTE: no shipped weights; using a random model (reproducibility numbers only)")
    skip = set(args.skip.split(","))
    results: dict = {"models": models, "profiles": args.profiles.split(",")}
    # The matrix mixes committed samples with evaluation photos when available.
    matrix_images = _default_images(args.photos, max(0, args.matrix_images - 3)) \
        + [str(p) for p in sorted(SAMPLES.glob("*.png"))]
    matrix_images = matrix_images[: args.matrix_images]
    if "matrix" not in skip:
        results["matrix"] = [section_matrix(m, matrix_images, args.profiles.split(","), args,
                                            env) for m in models]
        for m in results["matrix"]:
            print_matrix(m)
    if "noise" not in skip:
        results["noise"] = [section_noise(models[0], matrix_images[:3], args, env)]
        print_noise(results["noise"][0])
    if "rd" not in skip and tmp_weights is None:
        rd_images = _default_images(args.photos, args.rd_images)
        results["rd"] = section_rd(models, rd_images, args)
        print_rd(results["rd"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
