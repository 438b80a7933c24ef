#!/usr/bin/env python3
"""Cross-device check: encode on one numerics profile, decode on another, for every shipped
model, protected and unprotected, then calibrate the profiles pairwise. Sized for the GPU
machine (one H200, Python 3.12 with torch 2.11, numba and numpy, no compressai, no internet)
and proven end to end on a CPU with stand-in profiles.

Two steps, because the GPU machine is lent only now and then, for minutes, and reaches no
package index:

  1. Here, once per fresh checkout (the wheels are ignored by git, so a new session has none):

         python bench/device_check.py --prepare

     downloads into .whl/ the cp312 wheels of what the machine lacks or may hold in another
     version (compressai, its pytorch-msssim, protobuf for the generated code, xxhash), with
     the versions this environment runs, test-installs them offline for Python 3.12 /
     manylinux x86_64, and prints what will travel (limit 64 MiB).
  2. On the device, first thing in the session: the device tool's `run` with
     carry [".whl"], timeout_s 600 and the command

         python3 bench/device_check.py --device cuda --out $OUT

     installs the carried wheels whose version is not already there into a private folder
     (/tmp/reprocodec-device-site, ahead on PYTHONPATH; the machine's own packages are left
     alone), puts the repository on PYTHONPATH (no pip install of the project), and runs the
     check below within --budget seconds (default 450: the issue allows 8 minutes; a worker
     still running then is killed and its cells recorded as such). It writes
     $OUT/device_check.json (everything: versions, GPU, every cell, timings, calibration) and
     $OUT/device_check.txt (the printed report), which come back with the reply. Then
     give_back. Put the matrix into the README ("Numerics profiles and GPUs"); a calibration
     row marked CHANGES WHAT SHIPS means the GPU needs a larger bound than the model's json
     holds (the JSON has the value to ship).

Here, the same flow on the CPU, stand-in profiles (with the defaults, on this 2-core machine
under a load of 4 to 5: 245 to 324 s; tests/test_device_check.py runs a one-pair slice):

    python bench/device_check.py --device cpu [--out out/device_check]

The device's side was rehearsed here too: a virtual environment without compressai,
pytorch-msssim, protobuf, xxhash and reprocodec (and with numpy 2.4) ran the whole flow from
carried cp311 wheels of the same versions.

Other options: --models, --inputs (images and .ply), --max-side (default 512 on cuda, 128 on
cpu), --pairs (e.g. gpu:host to rerun one pair when time is short), --skip-calibrate, --budget.

What it does. Three roles, each a numerics profile; every profile runs in its own process
(profiles are process-global) and streams travel between them as files:

    role        --device cuda   --device cpu (stand-ins, reprocodec/gpu_emulation.py)
    host        cpu             cpu
    gpu         cuda            emulate-splitk  (GPU split-K summation order)
    gpu_tf32    cuda-tf32       emulate-tf32    (tensor-core TF32 operand rounding)

  encode  each role encodes every input (shipped sample photos center-cropped to --max-side,
          for every shipped image model; the shipped .ply samples at their own depth for the
          point-cloud model) twice: protected (syndrome, level both) and unprotected (none).
  decode  pairs gpu->host, host->gpu, gpu->gpu_tf32, gpu_tf32->gpu, with verification on.
          Each cell is bit_exact, DATA_LOSS (the checksums refused it), another refusal
          (INVALID_ARGUMENT ...), `wrong` (decoded, not bit-exact: must never happen), a crash,
          or missing because its encode, worker or time budget failed.
  calibrate  reprocodec.calibrate.measure over host,gpu,gpu_tf32: every pair's mismatch per
          protected tensor against the shipped bound, and the bound that calibration would
          write (dry run: nothing is written into reprocodec/weights).

Expected: every protected cell bit-exact, except a point cloud with gpu_tf32 on either side,
where DATA_LOSS is the documented answer (README, "Numerics profiles and GPUs": TF32 moves the
float32 logits beyond any bound the logit grid allows). Unprotected cells may be bit-exact or
refused, never `wrong`. Anything else is listed under "problems".

Exit status: 0 as expected; 1 a cell or a phase failed (the JSON says which); 2 usage error
or --device cuda without a GPU; 3 the installation or the imports failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

# Only the standard library at module level: on the device the carried wheels (protobuf among
# them) must be installed and on sys.path before anything imports a third-party package.

REPO = Path(__file__).resolve().parent.parent
WHEEL_DIR = REPO / ".whl"
SAMPLES = REPO / "reprocodec" / "samples"
SITE_DIR = Path(tempfile.gettempdir()) / "reprocodec-device-site"

# What the device lacks (compressai, pytorch-msssim) or may hold in a version the generated
# protobuf code or the checksums were not made with (protobuf, xxhash). Everything else the
# codecs import (torch, torchvision, numpy, numba, scipy, pandas, einops, matplotlib, PIL,
# torch_geometric, tqdm) is on the device (.library/device/KINDS.md). Versions come from the
# environment --prepare runs in; these pins are used only where a distribution is absent.
CARRIED = {"compressai": "1.2.8", "pytorch-msssim": "1.0.0", "protobuf": "7.36.2",
           "xxhash": "4.1.0"}
# Of those, the ones without which the codecs cannot import at all.
REQUIRED = ("compressai", "pytorch-msssim")
DEVICE_PYTHON = "3.12"
# manylinux tags pip must accept for the device (Ubuntu 24.04 image, glibc 2.39): pip matches
# each N exactly, and compressai 1.2.8 ships only manylinux_2_34 wheels.
DEVICE_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64", "manylinux1_x86_64"]
# Packages .library/device/KINDS.md lists on the device image (normalised names), to check
# the carried wheels' own requirements against at --prepare time.
DEVICE_PACKAGES = set("""
einops matplotlib numpy pandas pybind11 scipy setuptools torch torch-geometric torchvision
tqdm typing-extensions wheel pillow numba llvmlite protobuf xxhash grpcio psutil packaging
""".split())
TREE_LIMIT = 64 * 1024 * 1024  # what a device `run` carries: working tree + carried paths

ROLES = {
    "cuda": {"host": "cpu", "gpu": "cuda", "gpu_tf32": "cuda-tf32"},
    "cpu": {"host": "cpu", "gpu": "emulate-splitk", "gpu_tf32": "emulate-tf32"},
}
PAIRS = [("gpu", "host"), ("host", "gpu"), ("gpu", "gpu_tf32"), ("gpu_tf32", "gpu")]
PROTECTED, UNPROTECTED = "syndrome", "none"
MODES = (PROTECTED, UNPROTECTED)
LEVEL = "both"
# Per-device sizes: the GPU machine has 16 cores and minutes; this 2-core, shared CPU runs the
# emulation profiles (several times slower than plain cpu) within the same 8 minutes.
DEFAULT_MAX_SIDE = {"cuda": 512, "cpu": 128}
RESERVE_S = 15.0  # kept back from the budget for the summary and the JSON


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ prepare


def _pip(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout)


def _carried_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist, pin in CARRIED.items():
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = pin
    return out


def _wheel_name(path: Path) -> tuple[str, str]:
    """(normalised distribution name, version) from a wheel's file name."""
    dist, version = path.name.split("-")[:2]
    return _norm(dist), version


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _travelling_bytes() -> tuple[int, int]:
    """(working tree that a device run sends: tracked + untracked-not-ignored, .whl/)."""
    tree = 0
    try:
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                                "-z"], capture_output=True, check=True).stdout.split(b"\0")
        for f in files:
            p = REPO / f.decode()
            if f and p.is_file():
                tree += p.stat().st_size
    except (OSError, subprocess.CalledProcessError):
        tree = -1
    wheels = sum(p.stat().st_size for p in WHEEL_DIR.glob("*.whl")) if WHEEL_DIR.is_dir() else 0
    return tree, wheels


def _requirements_unmet(wheel: Path, carried: set[str]) -> list[str]:
    """The wheel's runtime requirements (for CPython 3.12 on Linux) that neither the device
    image nor the carried wheels provide."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = default_environment() | {"python_version": DEVICE_PYTHON,
                                   "python_full_version": DEVICE_PYTHON + ".3",
                                   "sys_platform": "linux", "platform_machine": "x86_64",
                                   "implementation_name": "cpython", "extra": ""}
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    missing = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = _norm(req.name)
        # tomli: compressai lists it without a marker but never imports it (it reads no TOML).
        if name not in DEVICE_PACKAGES and name not in carried and name != "tomli":
            missing.append(str(req))
    return missing


def prepare() -> int:
    """Step 1 (here, with network): download and test-install the wheels the device needs."""
    versions = _carried_versions()
    WHEEL_DIR.mkdir(exist_ok=True)
    # One version of each distribution (two stop the device's install); other people's
    # wheels in .whl/ are left alone.
    wanted = {_norm(d): v for d, v in versions.items()}
    for old in WHEEL_DIR.glob("*.whl"):
        dist, version = _wheel_name(old)
        if dist in wanted and version != wanted[dist]:
            old.unlink()
    platforms = [a for p in DEVICE_PLATFORMS for a in ("--platform", p)]
    tags = ["--only-binary=:all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp",
            *platforms]
    reqs = [f"{d}=={v}" for d, v in versions.items()]
    log(f"downloading {', '.join(reqs)} for CPython {DEVICE_PYTHON} manylinux x86_64 "
        f"into {WHEEL_DIR}")
    done = _pip("download", "--no-deps", *tags, "-d", str(WHEEL_DIR), *reqs)
    if done.returncode != 0:
        log(done.stdout[-2000:] + done.stderr[-2000:])
        log("device_check --prepare: pip download failed (is the package index reachable?)")
        return 3
    # Proof that the device's offline install will find exactly these: a real install for the
    # device's interpreter tags, from .whl alone.
    with tempfile.TemporaryDirectory() as target:
        done = _pip("install", "--no-index", "--find-links", str(WHEEL_DIR), "--no-deps",
                    "--no-compile", "--target", target, *tags, *reqs)
        if done.returncode != 0:
            log(done.stdout[-2000:] + done.stderr[-2000:])
            log("device_check --prepare: the wheels do not install offline for the device")
            return 3
        ext = sorted(p.name for p in Path(target, "compressai").glob("*.so"))
        if not ext or not all("cpython-312" in n for n in ext):
            log(f"device_check --prepare: compressai's extensions are not for cp312: {ext}")
            return 3
    carried = {_norm(d) for d in versions}
    problems = []
    for wheel in sorted(WHEEL_DIR.glob("*.whl")):
        if _wheel_name(wheel)[0] in carried:
            unmet = _requirements_unmet(wheel, carried)
            if unmet:
                problems.append(f"{wheel.name} needs {', '.join(unmet)}: not on the device")
            log(f"  {wheel.name}  {wheel.stat().st_size / 1e3:.0f} kB")
    tree, wheels = _travelling_bytes()
    log(f"a device run carries {tree / 2**20:.1f} MiB of working tree + {wheels / 2**20:.1f} MiB "
        f"of wheels (limit {TREE_LIMIT / 2**20:.0f} MiB)")
    if tree + wheels > TREE_LIMIT:
        problems.append("working tree + wheels exceed what a device run carries")
    for p in problems:
        log(f"PROBLEM: {p}")
    if problems:
        return 3
    log('ready: on the device, run with carry [".whl"]: '
        "python3 bench/device_check.py --device cuda --out $OUT")
    return 0


# ------------------------------------------------------------------------------ install


def install_carried(report: dict) -> bool:
    """Step 2's first part: install each carried wheel whose version this interpreter lacks
    into SITE_DIR, then put SITE_DIR and the repository ahead on the path of this process and
    every worker. Returns False (with the reason in the report) when that fails."""
    from importlib import metadata

    start = time.perf_counter()
    wheels = sorted(WHEEL_DIR.glob("*.whl")) if WHEEL_DIR.is_dir() else []
    by_dist = {}
    for w in wheels:
        dist, version = _wheel_name(w)
        if dist in {_norm(d) for d in CARRIED}:
            by_dist[dist] = (version, w)
    present, needed = {}, []
    for dist in CARRIED:
        try:
            present[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            present[dist] = None
        carried = by_dist.get(_norm(dist))
        if carried and present[dist] != carried[0]:
            needed.append(carried[1])
    report.update(present=present, carried={d: v for d, (v, _) in by_dist.items()},
                  installed=[w.name for w in needed], site=None)
    missing = [d for d in REQUIRED if present.get(d) is None and _norm(d) not in by_dist]
    if missing:
        report["error"] = (f"{', '.join(missing)} absent and not carried: run `python "
                           "bench/device_check.py --prepare` here, then carry .whl")
        return False
    if needed:
        shutil.rmtree(SITE_DIR, ignore_errors=True)
        done = _pip("install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", str(SITE_DIR), *map(str, needed))
        report["installed_by"] = "pip"
        if done.returncode != 0 and "No module named pip" in done.stderr:
            # An interpreter without pip: a wheel is a zip of its import tree, and none of
            # the carried ones has a .data folder that would need pip's placement.
            shutil.rmtree(SITE_DIR, ignore_errors=True)
            for w in needed:
                with zipfile.ZipFile(w) as z:
                    z.extractall(SITE_DIR)
            report["installed_by"] = "unzip (no pip)"
        elif done.returncode != 0:
            report["error"] = (done.stdout + done.stderr)[-2000:]
            return False
        report["site"] = str(SITE_DIR)
    paths = ([str(SITE_DIR)] if needed else []) + [str(REPO)]
    for p in reversed(paths):
        sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    report["seconds"] = round(time.perf_counter() - start, 2)
    return True


# ------------------------------------------------------------------------------ workers


def _describe(exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "grpc_status", None)
    return {"status": status or "crash", "error": f"{type(exc).__name__}: {exc}"[:400]}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)  # a reader (or a killed worker) never sees half a file


def _runtime(profile: Any) -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "numpy": numpy.__version__,
                            "threads": torch.get_num_threads(),
                            "mkldnn": torch.backends.mkldnn.enabled}
    if profile.is_cuda:
        info.update(
            device_name=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


class _Codecs:
    """Loaded codecs of this worker, by model name; a load failure is kept and re-raised for
    every item of that model, so one broken model does not stop the others."""

    def __init__(self) -> None:
        self._got: dict[str, Any] = {}

    def get(self, model: str) -> tuple[Any, Any]:
        if model not in self._got:
            from reprocodec import registry

            try:
                kind, _ = registry.find_model(model)
                self._got[model] = (kind, kind.load(model))
            except Exception as exc:  # noqa: BLE001 - kept and re-raised per item
                self._got[model] = exc
        got = self._got[model]
        if isinstance(got, Exception):
            raise got
        return got


def worker_encode(job: dict, result_path: Path) -> int:
    from reprocodec import container, numerics

    profile = numerics.apply_profile(job["profile"])
    out: dict[str, Any] = {"profile": job["profile"], "runtime": _runtime(profile), "items": []}
    _write_json(result_path, out)
    codecs = _Codecs()
    streams = Path(job["streams"])
    for item in job["items"]:
        data = None
        for mode in MODES:
            rec = {**item, "mode": mode, "encoder": job["profile"],
                   "stream": str(streams / f"{item['id']}.{mode}.rpc")}
            start = time.perf_counter()
            try:
                kind, codec = codecs.get(item["model"])
                if data is None:
                    data = kind.read_input(Path(item["path"]))
                    if kind.name == "image":
                        data = _center_crop(data, item["max_side"])
                options = {"level": LEVEL} if kind.name == "image" else {"depth": item["depth"]}
                msg = codec.encode(data, mode=mode, **options)
                blob = container.pack(msg)
                Path(rec["stream"]).write_bytes(blob)
                payload = sum(len(p.data) for p in msg.payloads)
                rec.update(ok=True, bytes=len(blob), payload_bytes=payload,
                           protection_bytes=container.protection_bytes(msg),
                           elements=int(data.shape[0] * (data.shape[1] if kind.name == "image"
                                                         else 1)))
            except Exception as exc:  # noqa: BLE001 - one failed cell, recorded, not fatal
                rec.update(ok=False, **_describe(exc))
            rec["seconds"] = round(time.perf_counter() - start, 4)
            out["items"].append(rec)
            _write_json(result_path, out)
    _finish_runtime(profile, out)
    _write_json(result_path, out)
    return 0


def worker_decode(job: dict, result_path: Path) -> int:
    from reprocodec import container, numerics

    profile = numerics.apply_profile(job["profile"])
    out: dict[str, Any] = {"profile": job["profile"], "runtime": _runtime(profile), "items": []}
    _write_json(result_path, out)
    codecs = _Codecs()
    for item in job["items"]:
        rec = {**item, "decoder": job["profile"]}
        start = time.perf_counter()
        try:
            msg = container.unpack(Path(item["stream"]).read_bytes())
            _, codec = codecs.get(msg.model)
            decoded = codec.decode(msg)  # verify on: a decoder as deployed
            rec.update(outcome="bit_exact" if decoded.bit_exact else "wrong", status="OK")
        except Exception as exc:  # noqa: BLE001 - one failed cell, recorded, not fatal
            d = _describe(exc)
            rec.update(outcome=d["status"] if d["status"] != "crash" else "crash", **d)
        rec["seconds"] = round(time.perf_counter() - start, 4)
        out["items"].append(rec)
        _write_json(result_path, out)
    _finish_runtime(profile, out)
    _write_json(result_path, out)
    return 0


def worker_calibrate(job: dict, result_path: Path) -> int:
    """reprocodec.calibrate.measure in a process of its own, so that a hung profile worker
    can be killed with its whole process group when the budget runs out."""
    from reprocodec import calibrate

    start = time.perf_counter()
    measured = calibrate.measure(job["jobs"], job["profiles"], job["max_side"], job["depth"])
    _write_json(result_path, {"measured": measured,
                              "seconds": round(time.perf_counter() - start, 2)})
    return 0


def _finish_runtime(profile: Any, out: dict) -> None:
    if profile.is_cuda:
        import torch

        out["runtime"]["max_memory_allocated_mib"] = round(
            torch.cuda.max_memory_allocated() / 2**20, 1)


def _center_crop(pixels: Any, side: int) -> Any:
    """The crop reprocodec.calibrate takes, so the matrix and the calibration see one input."""
    import numpy as np

    h, w = pixels.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(pixels[top : top + side, left : left + side])


# ------------------------------------------------------------------------------ driver


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S


def run_worker(kind: str, job: dict, work: Path, budget: Budget, name: str) -> dict:
    """One profile's process. Returns its result JSON plus how it ended; a crash, a non-zero
    exit or a timeout leaves whatever items it had recorded."""
    job_path, result_path = work / f"{name}.job.json", work / f"{name}.result.json"
    log_path = work / f"{name}.log"
    _write_json(job_path, job)
    timeout = budget.left()
    if timeout < 5:
        return {"end": "skipped", "detail": "time budget spent", "items": []}
    start = time.perf_counter()
    with open(log_path, "w") as logf:
        # A session of its own: on timeout the whole group (calibrate's profile workers too)
        # is killed, by this group's id.
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(Path(__file__)),
                                 "--worker", kind, "--job", str(job_path),
                                 "--result", str(result_path)],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            end = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended between the timeout and the kill
                pass
            proc.wait()
            end = f"timeout after {timeout:.0f} s"
    result = json.loads(result_path.read_text()) if result_path.exists() else {"items": []}
    result["end"] = end
    result["wall_s"] = round(time.perf_counter() - start, 2)
    if end != "ok":
        result["detail"] = log_path.read_text(errors="replace")[-3000:]
    return result


def _inputs(args: argparse.Namespace) -> list[dict]:
    """One item per (model, input file of the model's codec kind, by suffix)."""
    from reprocodec import registry

    items = []
    for model in args.models:
        kind, _ = registry.find_model(model)
        is_pc = kind.name == "point_cloud"
        for path in args.inputs:
            if Path(path).suffix.lower() not in kind.input_suffixes:
                continue
            stem = Path(path).stem
            m = re.search(r"_d(\d+)$", stem)  # the samples say their voxel depth: camel_d6
            depth = int(m.group(1)) if m else args.pc_depth
            item = {"id": f"{model}__{stem}", "model": model, "kind": "point_cloud" if is_pc
                    else "image", "input": stem, "path": str(Path(path).resolve())}
            item.update({"depth": depth} if is_pc else {"max_side": args.max_side})
            items.append(item)
    return items


def _outcome_class(cell: dict) -> str:
    o = cell["outcome"]
    return o if o in ("bit_exact", "DATA_LOSS") else "other"


def _expected(cell: dict) -> bool:
    """README, "Numerics profiles and GPUs": protected streams decode bit-exactly, except a
    point cloud with TF32 on either side (documented DATA_LOSS); unprotected ones are bit-exact
    or refused by the checksums, never returned wrong."""
    o = cell["outcome"]
    if cell["mode"] != UNPROTECTED:
        tf32 = "gpu_tf32" in (cell["encoder_role"], cell["decoder_role"])
        return o == "bit_exact" or (o == "DATA_LOSS" and cell["kind"] == "point_cloud" and tf32)
    return o in ("bit_exact", "DATA_LOSS", "INVALID_ARGUMENT")


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def summarize(cells: list[dict], encodes: list[dict]) -> dict:
    """Counts per (encoder -> decoder, model, protected|unprotected); median seconds per
    profile, codec kind and mode; median protection overhead per model."""
    matrix: dict[str, Any] = {}
    for c in cells:
        key = f"{c['encoder']} -> {c['decoder']}"
        row = matrix.setdefault(key, {}).setdefault(c["model"], {})
        slot = row.setdefault("protected" if c["mode"] != UNPROTECTED else "unprotected",
                              {"bit_exact": 0, "DATA_LOSS": 0, "other": 0, "n": 0})
        slot[_outcome_class(c)] += 1
        slot["n"] += 1
    times: dict[str, dict[str, list[float]]] = {}
    for e in encodes:
        if e.get("ok"):
            times.setdefault(e["encoder"], {}).setdefault(
                f"encode {e['kind']} {e['mode']}", []).append(e["seconds"])
    for c in cells:
        # only completed decodes: a refusal stops early and would flatter the median
        if c["outcome"] == "bit_exact":
            times.setdefault(c["decoder"], {}).setdefault(
                f"decode {c['kind']} {c['mode']}", []).append(c["seconds"])
    overhead: dict[str, list[float]] = {}
    for e in encodes:
        if e.get("ok") and e["mode"] != UNPROTECTED and e.get("payload_bytes"):
            overhead.setdefault(e["model"], []).append(e["protection_bytes"] / e["payload_bytes"])
    return {
        "matrix": matrix,
        "seconds_median": {p: {k: _median(v) for k, v in sorted(d.items())}
                           for p, d in times.items()},
        "protection_overhead_median": {m: round(statistics.median(v), 6)
                                       for m, v in overhead.items()},
    }


def compare_bounds(measured: dict, roles: dict[str, str], safety: float) -> list[dict]:
    """Each model's measured pairwise mismatch against its shipped bound, and the bound a
    calibration would write over the profiles the model's bounds are meant to cover: all three
    for images (their decision networks run in float64, where TF32 never applies), host and
    gpu for point clouds (README: their float32 logits under TF32 are documented DATA_LOSS)."""
    from reprocodec import calibrate, numerics, registry

    rows = []
    for model, per_tensor in measured.items():
        kind, info = registry.find_model(model)
        covered_roles = ["host", "gpu"] + (["gpu_tf32"] if kind.name == "image" else [])
        covered = [roles[r] for r in covered_roles]
        devices = {p: numerics.parse_profile(p).device for p in covered}
        shipped = kind.effective_bounds(info)
        kinds = {t: shipped[t]["kind"] for t in per_tensor}
        in_covered = {t: {pair: m for pair, m in per_pair.items()
                          if set(pair.split("|")) <= set(covered)}
                      for t, per_pair in per_tensor.items()}
        proposed = calibrate.bounds_from(in_covered, kinds, safety, covered, devices)
        for tensor, per_pair in per_tensor.items():
            bound = float(shipped[tensor]["value"])
            for pair, m in per_pair.items():
                rows.append({"model": model, "tensor": tensor, "pair": pair, "kind": kinds[tensor],
                             "mismatch": m, "shipped_bound": bound,
                             "ratio": m / bound if bound else None,
                             "within_shipped": m <= bound})
            rows.append({"model": model, "tensor": tensor, "pair": "(proposed)",
                         "kind": kinds[tensor], "covers": covered,
                         "covers_roles": covered_roles,
                         "mismatch": proposed[tensor]["measured_max"],
                         "shipped_bound": bound, "proposed_bound": proposed[tensor]["value"],
                         "changes_what_ships": proposed[tensor]["value"] > bound})
    return rows


def format_report(result: dict) -> str:
    lines = []
    meta = result["meta"]
    roles = meta["roles"]
    lines.append(f"device_check --device {meta['device']}: host={roles['host']} "
                 f"gpu={roles['gpu']} gpu_tf32={roles['gpu_tf32']}"
                 + ("  (CPU stand-ins for cuda / cuda-tf32)" if meta["device"] == "cpu" else ""))
    gpu = meta.get("gpu") or {}
    lines.append(f"torch {meta.get('torch')}  python {meta['python']}  "
                 + (f"GPU {gpu.get('name')} (CUDA {gpu.get('cuda')}, cuDNN {gpu.get('cudnn')})"
                    if gpu else f"CPU {meta['cpu_count']} cores"))
    lines.append("")
    lines.append("decode matrix: bit-exact / DATA_LOSS / other, of n; protected = syndrome "
                 "(images at level both), unprotected = none")
    head = f"{'encoder -> decoder':32s} {'model':24s} {'protected':>14s} {'unprotected':>14s}"
    lines.append(head)
    lines.append("-" * len(head))
    for pair, per_model in result["summary"]["matrix"].items():
        for model, row in per_model.items():
            cols = []
            for k in ("protected", "unprotected"):
                s = row.get(k)
                cols.append(f"{s['bit_exact']}/{s['DATA_LOSS']}/{s['other']} of {s['n']}"
                            if s else "-")
            lines.append(f"{pair:32s} {model:24s} {cols[0]:>14s} {cols[1]:>14s}")
    seconds = result["summary"].get("seconds_median") or {}
    if seconds:
        lines.append("")
        lines.append("median seconds per stream (decode: bit-exact ones), profile: "
                     "operation kind mode")
        for prof, d in seconds.items():
            lines.append(f"  {prof:16s} " + ", ".join(f"{k} {v}" for k, v in d.items()))
    overhead = result["summary"].get("protection_overhead_median") or {}
    if overhead:
        lines.append("protection overhead (protection / payload bytes, median): " + ", ".join(
            f"{m} {100 * v:.3f} %" for m, v in overhead.items()))
    cal = result.get("calibration") or {}
    if cal.get("rows"):
        lines.append("")
        lines.append(f"calibration over {', '.join(cal['profiles'])} (pairwise, dry run; a "
                     f"bound = worst covered pair x {cal['safety']:g}, floors apply)")
        lines.append(f"{'model':24s} {'tensor':16s} {'pair':32s} {'mismatch':>10s} "
                     f"{'shipped':>9s} {'ratio':>9s}")
        for r in cal["rows"]:
            if r["pair"] == "(proposed)":
                flag = "  CHANGES WHAT SHIPS" if r["changes_what_ships"] else ""
                over = "-> bound over " + "+".join(r["covers_roles"])
                lines.append(f"{r['model']:24s} {r['tensor']:16s} {over:32s} "
                             f"{r['proposed_bound']:10.3g} {r['shipped_bound']:9.3g}{flag}")
            else:
                flag = "" if r["within_shipped"] else "  > shipped bound"
                ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else "-"
                lines.append(f"{r['model']:24s} {r['tensor']:16s} {r['pair']:32s} "
                             f"{r['mismatch']:10.3g} {r['shipped_bound']:9.3g} {ratio:>9s}{flag}")
    elif cal.get("error") or cal.get("skipped"):
        lines.append("")
        lines.append(f"calibration: {cal.get('error') or cal.get('skipped')}")
    lines.append("")
    lines.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings"].items()))
    if result["problems"]:
        lines.append(f"PROBLEMS ({len(result['problems'])}):")
        lines.extend(f"  - {p}" for p in result["problems"][:40])
        if len(result["problems"]) > 40:
            lines.append(f"  ... {len(result['problems']) - 40} more in the JSON")
    else:
        lines.append("all cells as expected")
    return "\n".join(lines)


def _source_digest() -> str:
    """Which code ran, where the device copy has no .git: SHA-256 over the package's sources
    and model jsons (bounds) in path order."""
    h = hashlib.sha256()
    for p in sorted((REPO / "reprocodec").rglob("*")):
        if p.suffix in (".py", ".json") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    budget = Budget(args.budget)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    roles = dict(ROLES[args.device])
    result: dict[str, Any] = {
        "meta": {"device": args.device, "roles": roles, "python": platform.python_version(),
                 "host": platform.node(), "cpu_count": os.cpu_count(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": _git_commit(),
                 "argv": sys.argv[1:], "budget_s": args.budget,
                 "pairs": [f"{e}:{d}" for e, d in args.pairs]},
        "install": {}, "timings": {}, "encodes": [], "cells": [], "workers": {},
        "calibration": {}, "summary": {}, "problems": [],
    }
    json_path, txt_path = out_dir / "device_check.json", out_dir / "device_check.txt"

    def save() -> None:
        _write_json(json_path, result)

    def fail(code: int, msg: str) -> int:
        log(f"device_check: {msg}")
        result["problems"].append(msg)
        save()
        return code

    ok = install_carried(result["install"])
    result["timings"]["install"] = round(time.perf_counter() - t0, 2)
    if not ok:
        return fail(3, f"installation failed: {result['install'].get('error')}")
    try:
        from reprocodec import numerics, registry  # light: neither torch nor compressai

        if args.models is None:  # known only now: the registry may need carried packages
            args.models = [i.name for k in registry.KINDS.values() for i in k.list_models()]
    except Exception as exc:  # noqa: BLE001 - reported with the exit status of its class
        return fail(3, f"reprocodec does not import: {type(exc).__name__}: {exc}")
    try:
        for p in roles.values():
            numerics.parse_profile(p)
        for model in args.models:
            registry.find_model(model)  # an unknown name stops here, before any worker
    except (ValueError, LookupError) as exc:
        return fail(2, str(exc))
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return fail(3, f"torch does not import: {type(exc).__name__}: {exc}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            return fail(2, f"--device cuda, but torch {torch.__version__} (CUDA "
                           f"{torch.version.cuda}) sees no CUDA GPU (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); on a machine "
                           "without one use --device cpu, which runs the CPU stand-ins")
        result["meta"]["gpu"] = {
            "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "capability": torch.cuda.get_device_capability(0), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nvidia_smi": _nvidia_smi()}
    try:
        from importlib import metadata

        import compressai  # noqa: F401 - the image codecs' models: fail here, not per cell
        import numpy

        from reprocodec.safeguard import native

        result["meta"].update(torch=torch.__version__, numpy=numpy.__version__,
                              numba_kernels=native.AVAILABLE, source_digest=_source_digest())
        for dist in ("compressai", "protobuf", "numba", "xxhash"):
            try:
                result["meta"][dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                result["meta"][dist] = None
    except Exception as exc:  # noqa: BLE001
        return fail(3, f"the codecs do not import: {type(exc).__name__}: {exc}")
    log(f"device_check --device {args.device}: roles {roles}; torch {torch.__version__}; "
        f"installed {result['install'].get('installed') or 'nothing (all present)'}")
    save()

    items = _inputs(args)
    result["meta"]["inputs"] = items
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        work = Path(tmp)
        # ---- encode: each role that encodes, in its own process
        t = time.perf_counter()
        enc_by_role: dict[str, dict[str, dict]] = {}
        for role in dict.fromkeys(e for e, _ in args.pairs):
            profile = roles[role]
            streams = work / f"streams-{role}"
            streams.mkdir()
            log(f"encode under {profile} ({len(items)} inputs x {len(MODES)} modes)")
            res = run_worker("encode", {"profile": profile, "streams": str(streams),
                                        "items": items}, work, budget, f"encode-{role}")
            result["workers"][f"encode {profile}"] = {k: v for k, v in res.items()
                                                      if k != "items"}
            if res["end"] != "ok":
                result["problems"].append(f"encode worker {profile}: {res['end']}")
                log(f"  worker {res['end']}: {res.get('detail', '')[-500:]}")
            enc_by_role[role] = {f"{r['id']}.{r['mode']}": r for r in res["items"]}
            for r in res["items"]:
                result["encodes"].append(r)
                if not r["ok"]:
                    result["problems"].append(f"encode {profile} {r['id']} {r['mode']}: "
                                              f"{r['error']}")
            save()
        result["timings"]["encode"] = round(time.perf_counter() - t, 2)

        # ---- decode: each role that decodes takes every stream of the roles paired with it
        t = time.perf_counter()
        for dec_role in dict.fromkeys(d for _, d in args.pairs):
            profile = roles[dec_role]
            todo, missing = [], []
            for enc_role, d in args.pairs:
                if d != dec_role:
                    continue
                for item in items:
                    for mode in MODES:
                        base = {"id": item["id"], "model": item["model"], "kind": item["kind"],
                                "input": item["input"], "mode": mode,
                                "encoder": roles[enc_role], "encoder_role": enc_role,
                                "decoder": profile, "decoder_role": dec_role}
                        enc = enc_by_role.get(enc_role, {}).get(f"{item['id']}.{mode}")
                        if enc and enc.get("ok"):
                            todo.append({**base, "stream": enc["stream"]})
                        else:
                            missing.append({**base, "outcome": "encode_failed",
                                            "error": (enc or {}).get("error", "not encoded")})
            log(f"decode under {profile} ({len(todo)} streams)")
            res = run_worker("decode", {"profile": profile, "items": todo}, work, budget,
                             f"decode-{dec_role}") if todo else {"end": "ok", "items": []}
            result["workers"][f"decode {profile}"] = {k: v for k, v in res.items()
                                                      if k != "items"}
            if res["end"] != "ok":
                result["problems"].append(f"decode worker {profile}: {res['end']}")
                log(f"  worker {res['end']}: {res.get('detail', '')[-500:]}")
            done = {(r["id"], r["mode"], r["encoder"]) for r in res["items"]}
            lost = [{**x, "outcome": "worker_" + res["end"].split()[0]}
                    for x in todo if (x["id"], x["mode"], x["encoder"]) not in done]
            for c in res["items"] + lost + missing:
                c.pop("stream", None)
                result["cells"].append(c)
            save()
        result["timings"]["decode"] = round(time.perf_counter() - t, 2)

        # ---- calibrate: every pair of the three profiles, dry run
        t = time.perf_counter()
        profiles = [roles["host"], roles["gpu"], roles["gpu_tf32"]]
        cal: dict[str, Any] = {"profiles": profiles, "safety": args.safety}
        result["calibration"] = cal
        if args.skip_calibrate:
            cal["skipped"] = "--skip-calibrate"
        else:
            jobs: dict[str, list[str]] = {}
            for item in items:
                jobs.setdefault(item["model"], [])
                if item["path"] not in jobs[item["model"]]:
                    jobs[item["model"]].append(item["path"])
            depth = max([i["depth"] for i in items if i["kind"] == "point_cloud"] or [0]) or 7
            log(f"calibrate {', '.join(jobs)} over {', '.join(profiles)}")
            res = run_worker("calibrate", {"jobs": jobs, "profiles": profiles,
                                           "max_side": args.max_side, "depth": depth},
                             work, budget, "calibrate")
            cal.update(depth=depth, wall_s=res["wall_s"] if "wall_s" in res else None)
            if res["end"] != "ok" or "measured" not in res:
                cal["error"] = f"{res['end']}: {res.get('detail', '')[-1500:]}"
                result["problems"].append(f"calibration: {res['end']}")
            else:
                cal["measured"] = res["measured"]
                try:
                    cal["rows"] = compare_bounds(res["measured"], roles, args.safety)
                except Exception as exc:  # noqa: BLE001 - the matrix still counts
                    cal["error"] = f"{type(exc).__name__}: {exc}"
                    result["problems"].append(f"calibration bounds: {cal['error']}")
        result["timings"]["calibrate"] = round(time.perf_counter() - t, 2)

    for c in result["cells"]:
        # a stream that was never encoded is already listed under its encode failure
        if not _expected(c) and c["outcome"] != "encode_failed":
            result["problems"].append(
                f"{c['encoder']} -> {c['decoder']} {c['id']} {c['mode']}: {c['outcome']}"
                + (f" ({c['error']})" if c.get("error") else ""))
    result["summary"] = summarize(result["cells"], result["encodes"])
    result["timings"]["total"] = round(time.perf_counter() - t0, 2)
    result["ok"] = not result["problems"]
    save()
    report = format_report(result)
    txt_path.write_text(report + "\n")
    log("")
    log(report)
    log(f"\nwrote {json_path} and {txt_path}")
    return 0 if result["ok"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for the two-step flow.")
    p.add_argument("--prepare", action="store_true",
                   help="step 1, here: download and check the wheels the device needs into .whl/")
    p.add_argument("--device", choices=sorted(ROLES), help="cuda on the GPU machine; cpu here")
    p.add_argument("--out", default=str(REPO / "out" / "device_check"),
                   help="folder for device_check.json and .txt (on the device: $OUT)")
    p.add_argument("--models",
                   help="comma-separated shipped models (default: every shipped one)")
    p.add_argument("--inputs", nargs="+",
                   default=[str(p) for p in sorted(SAMPLES.glob("*.png"))]
                   + [str(p) for p in sorted(SAMPLES.glob("*.ply"))],
                   help="images and .ply files (default: the shipped samples)")
    p.add_argument("--max-side", type=int,
                   help="center-crop images to this many pixels per side (default: cuda "
                        f"{DEFAULT_MAX_SIDE['cuda']}, cpu {DEFAULT_MAX_SIDE['cpu']})")
    p.add_argument("--pc-depth", type=int, default=7,
                   help="octree depth for a .ply whose name does not end in _dN "
                        "(default: %(default)s)")
    p.add_argument("--safety", type=float, default=4.0,
                   help="calibration safety factor for the proposed bounds (default: %(default)s)")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds for the whole check; workers past it are killed and their "
                        "cells recorded as such (default: %(default)s)")
    p.add_argument("--pairs", default=",".join(f"{e}:{d}" for e, d in PAIRS),
                   help="encoder:decoder roles to decode, comma-separated (default: %(default)s)")
    p.add_argument("--skip-calibrate", action="store_true")
    p.add_argument("--worker", choices=("encode", "decode", "calibrate"), help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker and not args.prepare and not args.device:
        p.error("give --prepare (step 1, here) or --device cuda|cpu (step 2)")
    if args.models is not None:
        args.models = [m for m in args.models.split(",") if m]
    pairs = [tuple(x.split(":")) for x in args.pairs.split(",") if x]
    roles = set(ROLES["cpu"])
    if not pairs or any(len(x) != 2 or not set(x) <= roles or x[0] == x[1] for x in pairs):
        p.error(f"--pairs takes encoder:decoder of two different roles among "
                f"{', '.join(sorted(roles))}, e.g. gpu:host")
    args.pairs = pairs
    if args.device and args.max_side is None:
        args.max_side = DEFAULT_MAX_SIDE[args.device]
    return args


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(REPO))
        job = json.loads(Path(args.job).read_text())
        fn = {"encode": worker_encode, "decode": worker_decode,
              "calibrate": worker_calibrate}[args.worker]
        return fn(job, Path(args.result))
    if args.prepare:
        return prepare()
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
