"""Cross-version matrix: streams encoded under one torch version, decoded under another (CPU).

    python bench/crossversion.py [--torch 2.11.0 | --other-venv DIR] [--depths 6,9]
        [--levels decoding,both] [--images DIR ...] [--profiles P,...] [--other-profile P]
        [--no-control] [--no-floats] [--workdir DIR] [--json out.json]

Not in CI (it builds or reuses a second virtual environment of about 2 GB). Two stacks:

    main   the interpreter running this script: the pinned torch (pyproject.toml)
    other  a second venv with another torch (default 2.11.0, the device machine's), built or
           reused by scripts/xver-venv.sh: the CUDA wheel of that torch without its CUDA
           runtime packages, CPU stand-ins for the CUDA libraries (deploy/docker/cuda_stubs.py),
           compressai 1.2.8, numpy, numba, scipy and the codec core's other packages at the
           main venv's versions, and this checkout installed editable with --no-deps (both
           stacks run the same reprocodec code)

Every stack encodes every shipped sample (every shipped image model; every point-cloud model at
each --depths) as protected streams (syndrome, at each of --levels for images) and unprotected
ones (mode none, level both), and the other stack decodes them (main -> other, other -> main;
main -> main and other -> other as controls unless --no-control). Each decode is verified, and
its outcome is counted: bit-exact; decoded but not bit-exact (only possible where the output is
not protected: level decoding); DATA_LOSS (VerificationError); any other error, by gRPC status.
A failed decode is repeated with verify=False to count how many output elements really differ
from the encoder's.

Then the protected float tensors themselves: the main stack computes each input's calibration
sample (`codec.calibration_sample`, the exact latents / voxels), and every stack recomputes the
floats from it under every numerics profile in --profiles (`codec.network_floats`, one process
per stack and profile, as `reprocodec calibrate` does). Reported per model and tensor, in the
bound's kind (reprocodec.calibrate.mismatch): the worst difference between the two torch
versions under the same profile, the worst over every cross-version pair of profiles (an
encoder under any profile on one stack, a decoder under any on the other), the worst pair
within the main stack (what calibration measured), the shipped bound, whether the cross-version
worst is inside it, and how many decision indices flip between the versions under `cpu` when
nothing protects them.

Measured here (2-core AVX-512 x86_64 VM, shipped samples, depths 6 and 9, 44 streams a stack):
torch 2.14.1 against 2.11.0 (and, as a further check, 2.5.1), both directions, every stream
bit-exact: protected 0 failures, unprotected 0 real failures; the two encoders wrote
byte-identical streams and every protected tensor was bit-identical between the versions under
every profile, so the cross-version worst is the within-version profile spread (at most
2.6e-13 absolute for pixels, 1.4e-14 relative for scales, 3.8e-6 for point-cloud logits: inside
every shipped bound; TF32 is outside the point-cloud bound by design). The two torch builds'
CPU kernels (MKL, oneDNN 3.12 / 3.10 / 3.5) compute these networks identically on this CPU;
differences would have to come from elsewhere (another instruction set, a GPU).
Release 0.4.0 adds a `--smallest` stream per sample and depth (mixed probabilities, format 4;
108 streams in all): every one bit-exact in both directions and byte-identical between the
two encoders.
Release 0.5.0 adds a stream per sample and depth whose every level is neighbour-coded (format
5, no network: integers only); release 0.6.0 the same at format 6 (the neighbour coder's
version 2 model) beside it. Release 0.7.0 writes the `--smallest` stream at formats 6 and 7
(the mixer's versions 1 and 2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLES = REPO / "reprocodec" / "samples"
DEFAULT_TORCH = "2.11.0"


# ---------------------------------------------------------------------------- worker side
# Runs inside either stack: `python bench/crossversion.py _worker COMMAND ARGS...`.


def _versions() -> dict[str, str]:
    import compressai
    import numba
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "numba": numba.__version__,
            "compressai": getattr(compressai, "__version__", "?"),
            "cuda_available": str(torch.cuda.is_available())}


def _worker_encode(outdir: Path, jobs: list[dict]) -> None:
    from reprocodec import container, numerics, registry
    from reprocodec.pointcloud import octree

    numerics.apply_profile("cpu")
    codecs: dict[str, Any] = {}
    for job in jobs:
        kind = registry.kind(job["kind"])
        codec = codecs.get(job["model"]) or codecs.setdefault(job["model"],
                                                              kind.load(job["model"]))
        data = kind.read_input(Path(job["input"]))
        start = time.perf_counter()
        capture: dict[str, Any] = {}
        if kind.name == "image":
            msg = codec.encode(data, job["mode"], job["level"], capture=capture)
            output = np.asarray(capture["output"])
        else:
            formats = {"bitstream_format": job["format"]} if "format" in job else {}
            msg = codec.encode(data, depth=job["depth"], mode=job["mode"],
                               coders=job.get("coders", "auto"), **formats)
            output = octree.voxelize(data, job["depth"]).voxels
        seconds = time.perf_counter() - start
        (outdir / f"{job['id']}.rpc").write_bytes(container.pack(msg))
        # The encoder's output, so that a failed decode can say how much really differs.
        np.save(outdir / f"{job['id']}.npy", output)
        (outdir / f"{job['id']}.json").write_text(json.dumps({"encode_s": seconds}))


def _outcome(exc: BaseException) -> tuple[str, str]:
    from reprocodec.errors import ReprocodecError

    status = exc.grpc_status if isinstance(exc, ReprocodecError) else "INTERNAL"
    return status, f"{type(exc).__name__}: {str(exc)[:300]}"


def _differing(codec: Any, msg: Any, expected: np.ndarray) -> str:
    """How many output elements differ from the encoder's, decoding past every check."""
    try:
        decoded = codec.decode(msg, verify=False)
    except Exception as exc:  # noqa: BLE001 (reported, not hidden)
        return f"unverified decode failed too: {type(exc).__name__}"
    image = hasattr(decoded, "pixels")
    got = decoded.pixels if image else decoded.voxels
    if got.shape != expected.shape:
        return f"output shape {list(got.shape)} instead of {list(expected.shape)}"
    differ = (got != expected).any(axis=-1)  # per pixel (any channel) / per voxel
    return f"{int(differ.sum())} of {differ.size} {'pixels' if image else 'voxels'} differ"


def _worker_decode(indir: Path, jobs: list[dict], out: Path, profile: str) -> None:
    from reprocodec import container, numerics, registry

    numerics.apply_profile(profile)
    codecs: dict[str, Any] = {}
    results = {}
    for job in jobs:
        kind = registry.kind(job["kind"])
        codec = codecs.get(job["model"]) or codecs.setdefault(job["model"],
                                                              kind.load(job["model"]))
        data = (indir / f"{job['id']}.rpc").read_bytes()
        start = time.perf_counter()
        result: dict[str, Any] = {}
        try:
            msg = container.unpack(data)
            decoded = codec.decode(msg)
            result["outcome"] = "bit-exact" if decoded.bit_exact else "not-bit-exact"
        except Exception as exc:  # noqa: BLE001 (every failure is an outcome to count)
            status, detail = _outcome(exc)
            result["outcome"], result["detail"] = status, detail
        result["decode_s"] = time.perf_counter() - start
        if result["outcome"] != "bit-exact":
            try:
                result["differing"] = _differing(codec, container.unpack(data),
                                                 np.load(indir / f"{job['id']}.npy"))
            except Exception as exc:  # noqa: BLE001
                result["differing"] = f"not measurable: {type(exc).__name__}: {exc}"
        results[job["id"]] = result
    out.write_text(json.dumps(results))


def _worker_samples(outdir: Path, jobs: list[dict]) -> None:
    from reprocodec import numerics, registry

    numerics.apply_profile("cpu")
    for job in jobs:
        kind = registry.kind(job["kind"])
        codec = kind.load(job["model"])
        data = kind.read_input(Path(job["input"]))
        if kind.name == "image":
            sample = codec.calibration_sample(data)
        else:
            sample = codec.calibration_sample(data, depth=job["depth"])
        np.savez(outdir / f"{job['id']}.npz", **sample)


def _worker_floats(sample_dir: Path, jobs: list[dict], profile: str, outdir: Path) -> None:
    from reprocodec import numerics, registry

    numerics.apply_profile(profile)
    codecs: dict[str, Any] = {}
    for job in jobs:
        kind = registry.kind(job["kind"])
        codec = codecs.get(job["model"]) or codecs.setdefault(job["model"],
                                                              kind.load(job["model"]))
        sample = dict(np.load(sample_dir / f"{job['id']}.npz"))
        np.savez(outdir / f"{job['id']}.npz", **codec.network_floats(sample))


def worker(argv: list[str]) -> int:
    command = argv[0]
    if command == "versions":
        print(json.dumps(_versions()))
        return 0
    jobs = json.loads(Path(argv[1]).read_text())
    if command == "encode":
        _worker_encode(Path(argv[2]), jobs)
    elif command == "decode":
        _worker_decode(Path(argv[2]), jobs, Path(argv[3]), argv[4])
    elif command == "samples":
        _worker_samples(Path(argv[2]), jobs)
    elif command == "floats":
        _worker_floats(Path(argv[2]), jobs, argv[3], Path(argv[4]))
    else:
        raise SystemExit(f"unknown worker command {command!r}")
    return 0


# ------------------------------------------------------------------------ orchestrator side


class Stack:
    def __init__(self, name: str, python: str, decode_profile: str = "cpu"):
        self.name, self.python, self.decode_profile = name, python, decode_profile
        self.versions: dict[str, str] = {}

    def run(self, *args: str) -> str:
        cmd = [self.python, str(Path(__file__).resolve()), "_worker", *args]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name} worker {args[0]} failed (exit {done.returncode}):\n"
                               + "\n".join(done.stderr.strip().splitlines()[-15:]))
        return done.stdout


def other_stack(args: argparse.Namespace) -> Stack:
    if args.other_venv:
        venv = Path(args.other_venv)
    else:
        print(f"# scripts/xver-venv.sh {args.torch} (builds the second venv on first use)",
              flush=True)
        done = subprocess.run([str(REPO / "scripts" / "xver-venv.sh"), args.torch],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ,
                                   "MAIN_VENV": os.environ.get("MAIN_VENV", sys.prefix)})
        if done.returncode != 0:
            raise SystemExit(f"scripts/xver-venv.sh failed (exit {done.returncode})")
        venv = Path(done.stdout.strip().splitlines()[-1])
    wrapper = venv / "bin" / "xver-python"
    return Stack("other", str(wrapper if wrapper.exists() else venv / "bin" / "python"),
                 args.other_profile)


def code_jobs(images: list[Path], depths: list[int], levels: list[str]) -> list[dict]:
    from reprocodec import registry

    jobs = []
    for info in registry.kind("image").list_models():
        for f in images:
            for mode, level in [("syndrome", lv) for lv in levels] + [("none", "both")]:
                jobs.append({"id": f"{info.name}__{f.stem}__{mode}-{level}", "kind": "image",
                             "model": info.name, "input": str(f), "mode": mode,
                             "level": level, "class": f"image {mode} {level}"})
    clouds = sorted(SAMPLES.glob("*.ply"))
    for info in registry.kind("point_cloud").list_models():
        for f in clouds:
            for depth in depths:
                for mode in ("syndrome", "none"):
                    jobs.append({"id": f"{info.name}__{f.stem}@{depth}__{mode}",
                                 "kind": "point_cloud", "model": info.name,
                                 "input": str(f), "depth": depth, "mode": mode,
                                 "class": f"point cloud {mode}"})
                # --smallest: the mixed payload where it is smaller, under each mixer
                # version: format 6's (version 1, as format 4 brought it) and format 7's
                for fmt in (6, 7):
                    jobs.append({"id": f"{info.name}__{f.stem}@{depth}__syndrome-smallest{fmt}",
                                 "kind": "point_cloud", "model": info.name, "input": str(f),
                                 "depth": depth, "mode": "syndrome", "coders": "smallest",
                                 "format": fmt,
                                 "class": f"point cloud syndrome smallest format {fmt}"})
                # every level neighbour-coded (auto gives it the levels it wins), under each
                # model version: format 5's and format 6's
                for fmt in (5, 6):
                    jobs.append({"id": f"{info.name}__{f.stem}@{depth}__neighbour{fmt}",
                                 "kind": "point_cloud", "model": info.name, "input": str(f),
                                 "depth": depth, "mode": "none", "coders": "neighbour",
                                 "format": fmt, "class": f"point cloud neighbour format {fmt}"})
    return jobs


def sample_jobs(images: list[Path], depths: list[int]) -> list[dict]:
    from reprocodec import registry

    jobs = [{"id": f"{info.name}__{f.stem}", "kind": "image", "model": info.name,
             "input": str(f)}
            for info in registry.kind("image").list_models() for f in images]
    jobs += [{"id": f"{info.name}__{f.stem}@{d}", "kind": "point_cloud",
              "model": info.name, "input": str(f), "depth": d}
             for info in registry.kind("point_cloud").list_models()
             for f in sorted(SAMPLES.glob("*.ply")) for d in depths]
    return jobs


def run_matrix(stacks: list[Stack], jobs: list[dict], work: Path, control: bool
               ) -> dict[str, dict[str, dict]]:
    """{"enc->dec": {job id: decode result}}, every stack encoding every job."""
    jobs_file = work / "code_jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    for s in stacks:
        (work / f"streams-{s.name}").mkdir()
        t = time.perf_counter()
        s.run("encode", str(jobs_file), str(work / f"streams-{s.name}"))
        print(f"# {s.name}: encoded {len(jobs)} streams in {time.perf_counter() - t:.0f} s",
              flush=True)
    out = {}
    for enc, dec in itertools.product(stacks, stacks):
        if enc is dec and not control:
            continue
        t = time.perf_counter()
        result_file = work / f"decoded-{enc.name}-{dec.name}.json"
        dec.run("decode", str(jobs_file), str(work / f"streams-{enc.name}"), str(result_file),
                dec.decode_profile)
        out[f"{enc.name}->{dec.name}"] = json.loads(result_file.read_text())
        print(f"# {enc.name} -> {dec.name}: decoded in {time.perf_counter() - t:.0f} s",
              flush=True)
    return out


def identical_streams(stacks: list[Stack], jobs: list[dict], work: Path) -> dict[str, int]:
    same: dict[str, int] = {}
    for job in jobs:
        a, b = (work / f"streams-{s.name}" / f"{job['id']}.rpc" for s in stacks)
        same[job["class"]] = same.get(job["class"], 0) + int(a.read_bytes() == b.read_bytes())
    return same


def float_comparison(stacks: list[Stack], jobs: list[dict], profiles: list[str], work: Path
                     ) -> list[dict]:
    from reprocodec import registry
    from reprocodec.calibrate import _min_scale, mismatch

    samples = work / "samples"
    samples.mkdir()
    jobs_file = work / "sample_jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    stacks[0].run("samples", str(jobs_file), str(samples))
    for s in stacks:
        for p in profiles:
            t = time.perf_counter()
            outdir = work / f"floats-{s.name}-{p.replace(':', '_')}"
            outdir.mkdir()
            s.run("floats", str(jobs_file), str(samples), p, str(outdir))
            print(f"# {s.name} {p}: floats of {len(jobs)} samples in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)

    main, other = stacks
    rows: dict[tuple[str, str], dict] = {}
    models: dict[str, Any] = {}
    for job in jobs:
        if job["model"] not in models:
            models[job["model"]] = registry.load(job["model"])
        codec = models[job["model"]]
        floats = {(s.name, p): dict(np.load(work / f"floats-{s.name}-{p.replace(':', '_')}"
                                            / f"{job['id']}.npz"))
                  for s in stacks for p in profiles}
        for name, ref in floats[(main.name, profiles[0])].items():
            d = codec.decisions[name]
            # The profiles this bound was calibrated on (absent: a default bound, all of them).
            calibrated = codec.info.bounds.get(name, {}).get("profiles") or profiles
            covered = [p for p in profiles if p in calibrated]
            row = rows.setdefault((job["model"], name), {
                "model": job["model"], "tensor": name, "kind": d.bound.kind,
                "bound": d.bound.value, "covered_profiles": covered,
                "uncovered_profiles": [p for p in profiles if p not in calibrated],
                "elements": 0, "same_profile": 0.0, "same_profile_worst": "",
                "cross": 0.0, "cross_worst": "", "cross_all": 0.0, "cross_all_worst": "",
                "within_main": 0.0, "within_other": 0.0,
                "flips": 0, "identical": True, "flips_profile": profiles[0]})
            row["elements"] += int(np.size(ref))

            def m(a: tuple[str, str], b: tuple[str, str], d: Any = d, name: str = name,
                  f: dict = floats) -> float:
                return mismatch(d.bound.kind, f[a][name], f[b][name], _min_scale(d))

            for p in profiles:
                v = m((main.name, p), (other.name, p))
                if v > row["same_profile"] or not row["same_profile_worst"]:
                    row["same_profile"], row["same_profile_worst"] = v, f"{p} ({job['id']})"
            # An encoder under any profile on one stack, a decoder under any on the other.
            for p, q in itertools.product(profiles, profiles):
                v = m((main.name, p), (other.name, q))
                where = f"{p}@{main.name}|{q}@{other.name} ({job['id']})"
                if v > row["cross_all"] or not row["cross_all_worst"]:
                    row["cross_all"], row["cross_all_worst"] = v, where
                if p in covered and q in covered and (v > row["cross"] or not row["cross_worst"]):
                    row["cross"], row["cross_worst"] = v, where
            for s in stacks:
                for p, q in itertools.combinations(covered, 2):
                    row[f"within_{s.name}"] = max(row[f"within_{s.name}"],
                                                  m((s.name, p), (s.name, q)))
            # Unprotected, under the first profile: indices each version would pick alone.
            a, b = ref, floats[(other.name, profiles[0])][name]
            row["identical"] &= bool(np.array_equal(a, b))
            row["flips"] += int((d.quantizer.index(a) != d.quantizer.index(b)).sum())
    out = list(rows.values())
    for r in out:
        r["inside_bound"] = r["cross"] <= r["bound"]
        r["margin"] = r["bound"] / r["cross"] if r["cross"] > 0 else None
    return out


def summarize(matrix: dict[str, dict[str, dict]], jobs: list[dict]) -> list[dict]:
    rows = []
    classes = list(dict.fromkeys(j["class"] for j in jobs))
    for direction, results in matrix.items():
        for cls in classes:
            ids = [j["id"] for j in jobs if j["class"] == cls]
            outcomes = [results[i]["outcome"] for i in ids]
            others = sorted({o for o in outcomes
                             if o not in ("bit-exact", "not-bit-exact", "DATA_LOSS")})
            rows.append({
                "direction": direction, "class": cls, "protected": " none " not in f" {cls} ",
                # level decoding leaves the pixels to each decoder: not bit-exact is allowed
                "output_protected": not cls.endswith(" decoding"),
                "streams": len(ids),
                "bit_exact": outcomes.count("bit-exact"),
                "not_bit_exact": outcomes.count("not-bit-exact"),
                "data_loss": outcomes.count("DATA_LOSS"),
                "other_errors": sum(o in others for o in outcomes),
                "other_statuses": others,
                "failures": [{"id": i, **results[i]} for i in ids
                             if results[i]["outcome"] != "bit-exact"],
                "decode_s": sum(results[i]["decode_s"] for i in ids),
            })
    return rows


def print_report(stacks: list[Stack], rows: list[dict], same: dict[str, int],
                 floats: list[dict], jobs: list[dict]) -> None:
    print()
    for s in stacks:
        v = s.versions
        print(f"{s.name:6s} torch {v['torch']:14s} python {v['python']}  numpy {v['numpy']}  "
              f"numba {v['numba']}  compressai {v['compressai']}  cuda {v['cuda_available']}")
    print("\nstreams encoded by every stack (profile cpu), each decoded by the other "
          f"(verified; decoder profiles: "
          f"{', '.join(f'{s.name} {s.decode_profile}' for s in stacks)})")
    print(f"{'enc->dec':14s} {'stream class':26s} {'n':>4s} {'bit-exact':>9s} "
          f"{'not exact':>9s} {'DATA_LOSS':>9s} {'other':>6s}  real failures")
    for r in rows:
        real = r["not_bit_exact"] + r["data_loss"] + r["other_errors"]
        note = "; ".join(f"{f['id']}: {f['outcome']} ({f.get('differing', '?')})"
                         for f in r["failures"][:2])
        if len(r["failures"]) > 2:
            note += f"; ... ({len(r['failures'])} in all, see --json)"
        print(f"{r['direction']:14s} {r['class']:26s} {r['streams']:4d} {r['bit_exact']:9d} "
              f"{r['not_bit_exact']:9d} {r['data_loss']:9d} {r['other_errors']:6d}  "
              f"{real}{'  ' + note if note else ''}")
    counts = {cls: sum(j["class"] == cls for j in jobs) for cls in same}
    print("\nbyte-identical streams from the two encoders: "
          + ", ".join(f"{cls} {same[cls]}/{counts[cls]}" for cls in same))
    if not floats:
        return
    print("\nprotected floats, recomputed from the same exact samples under each profile by "
          "both torch versions (mismatch in the bound's kind; cross = an encoder under any "
          "calibrated profile on one version, a decoder under any on the other)")
    print(f"{'model':26s} {'tensor':16s} {'kind':8s} {'same prof.':>10s} {'cross':>9s} "
          f"{'within main':>11s} {'bound':>9s} {'inside':>6s} {'margin':>9s}  "
          f"flips@{floats[0]['flips_profile']:<16s} {'cross incl. uncovered':>22s}")
    for r in floats:
        margin = f"{r['margin']:.3g}x" if r["margin"] is not None else "exact"
        flips = f"{r['flips']}/{r['elements']}{' (identical)' if r['identical'] else ''}"
        uncovered = (f"{r['cross_all']:.3g} ({', '.join(r['uncovered_profiles'])})"
                     if r["uncovered_profiles"] else "-")
        print(f"{r['model']:26s} {r['tensor']:16s} {r['kind']:8s} {r['same_profile']:10.3g} "
              f"{r['cross']:9.3g} {r['within_main']:11.3g} {r['bound']:9.3g} "
              f"{'yes' if r['inside_bound'] else 'NO':>6s} {margin:>9s}  {flips:22s} "
              f"{uncovered:>22s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", default=DEFAULT_TORCH,
                    help="the other stack's torch version (default: %(default)s)")
    ap.add_argument("--other-venv", help="use this venv as the other stack (no build)")
    ap.add_argument("--depths", default="6,9", help="point-cloud depths (default: %(default)s)")
    ap.add_argument("--levels", default="decoding,both",
                    help="protection levels of the image syndrome streams (default: %(default)s)")
    ap.add_argument("--images", type=Path, action="append",
                    help="image files or folders (default: the shipped samples)")
    ap.add_argument("--max-images", type=int, default=8, help="per --images folder")
    ap.add_argument("--profiles",
                    default="cpu,cpu-nomkldnn,cpu-channels-last,cpu-1thread,emulate-splitk,"
                            "emulate-tf32",
                    help="profiles of the float comparison (default: the shipped calibration's)")
    ap.add_argument("--other-profile", default="cpu",
                    help="numerics profile of the other stack's decoder (default: %(default)s; "
                         "noise:EPS shows how failures are counted)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip main->main and other->other")
    ap.add_argument("--no-floats", action="store_true", help="skip the float comparison")
    ap.add_argument("--workdir", type=Path, help="keep streams and floats here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from reprocodec import registry

    suffixes = registry.kind("image").input_suffixes
    images: list[Path] = []
    for entry in args.images or [SAMPLES]:
        if entry.is_dir():
            images += sorted(f for f in entry.iterdir()
                             if f.suffix.lower() in suffixes)[: args.max_images]
        else:
            images.append(entry)
    depths = [int(d) for d in args.depths.split(",") if d]
    levels = [lv for lv in args.levels.split(",") if lv]
    profiles = [p for p in args.profiles.split(",") if p]

    stacks = [Stack("main", sys.executable), other_stack(args)]
    for s in stacks:
        s.versions = json.loads(s.run("versions").strip().splitlines()[-1])
    if stacks[0].versions["torch"] == stacks[1].versions["torch"]:
        raise SystemExit(f"both stacks run torch {stacks[0].versions['torch']}: nothing to compare")
    print("# " + "; ".join(f"{s.name}: {s.python} (torch {s.versions['torch']})"
                           for s in stacks), flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crossversion-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        jobs = code_jobs(images, depths, levels)
        matrix = run_matrix(stacks, jobs, work, not args.no_control)
        same = identical_streams(stacks, jobs, work)
        floats = [] if args.no_floats else float_comparison(
            stacks, sample_jobs(images, depths), profiles, work)
    rows = summarize(matrix, jobs)
    print_report(stacks, rows, same, floats, jobs)

    cross = [r for r in rows if r["direction"] in ("main->other", "other->main")]
    protected_failures = sum(
        r["streams"] - r["bit_exact"] - (0 if r["output_protected"] else r["not_bit_exact"])
        for r in cross if r["protected"])
    unprotected_failures = sum(r["streams"] - r["bit_exact"] for r in cross if not r["protected"])
    outside = [f"{r['model']} {r['tensor']}" for r in floats if not r["inside_bound"]]
    print(f"\nprotected cross-version failures: {protected_failures}; unprotected real "
          f"failures: {unprotected_failures}; tensors outside their bound: "
          f"{', '.join(outside) or 'none'}  ({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "stacks": {s.name: {"python_executable": s.python, **s.versions} for s in stacks},
            "images": [str(f) for f in images], "depths": depths, "levels": levels,
            "profiles": profiles, "matrix": rows, "identical_streams": same,
            "floats": floats, "protected_failures": protected_failures,
            "unprotected_failures": unprotected_failures, "tensors_outside_bound": outside,
        }, indent=1))
    return 1 if protected_failures or outside else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        raise SystemExit(worker(sys.argv[2:]))
    raise SystemExit(main())
