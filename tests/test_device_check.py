"""bench/device_check.py, CI-sized: the parts that run only on the GPU machine (the offline
install of carried wheels, the missing-GPU answer) and the verdict logic, here on a CPU.
The whole flow with its calibration runs in `python bench/device_check.py --device cpu`
(minutes, not CI)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "device_check.py"
SAMPLES = REPO / "reprocodec" / "samples"


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dc = _module()


def _cell(kind: str, mode: str, outcome: str, enc: str = "gpu", dec: str = "host") -> dict:
    return {"kind": kind, "mode": mode, "outcome": outcome, "encoder_role": enc,
            "decoder_role": dec, "encoder": enc, "decoder": dec, "model": f"m-{kind}",
            "id": "x", "seconds": 0.1}


def test_verdict_accepts_only_the_documented_outcomes():
    # protected: bit-exact everywhere; DATA_LOSS only for a point cloud with TF32 on a side
    assert dc._expected(_cell("image", "syndrome", "bit_exact"))
    assert not dc._expected(_cell("image", "syndrome", "DATA_LOSS"))
    assert not dc._expected(_cell("image", "syndrome", "DATA_LOSS", "gpu", "gpu_tf32"))
    assert dc._expected(_cell("point_cloud", "syndrome", "DATA_LOSS", "gpu_tf32", "gpu"))
    assert dc._expected(_cell("point_cloud", "syndrome", "DATA_LOSS", "gpu", "gpu_tf32"))
    assert not dc._expected(_cell("point_cloud", "syndrome", "DATA_LOSS", "gpu", "host"))
    assert not dc._expected(_cell("point_cloud", "syndrome", "INVALID_ARGUMENT",
                                  "gpu", "gpu_tf32"))
    # unprotected: exact or refused by the checksums; a wrong result or a crash never
    for ok in ("bit_exact", "DATA_LOSS", "INVALID_ARGUMENT"):
        assert dc._expected(_cell("image", "none", ok))
    for bad in ("wrong", "crash", "worker_timeout", "INTERNAL"):
        assert not dc._expected(_cell("image", "none", bad))
        assert not dc._expected(_cell("point_cloud", "syndrome", bad, "gpu", "gpu_tf32"))


def test_summary_counts_each_pair_model_and_protection():
    cells = [_cell("image", "syndrome", "bit_exact"), _cell("image", "syndrome", "bit_exact"),
             _cell("image", "none", "DATA_LOSS"), _cell("image", "none", "INVALID_ARGUMENT"),
             _cell("image", "none", "bit_exact")]
    m = dc.summarize(cells, [])["matrix"]["gpu -> host"]["m-image"]
    assert m["protected"] == {"bit_exact": 2, "DATA_LOSS": 0, "other": 0, "n": 2}
    assert m["unprotected"] == {"bit_exact": 1, "DATA_LOSS": 1, "other": 1, "n": 3}


def _fake_wheel(folder: Path, dist: str, version: str, module: str, body: str) -> Path:
    """A minimal valid wheel holding one module, so pip's offline --target install runs."""
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}.py": body.encode(),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                 .encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_carried_wheel_of_another_version_is_installed_privately_and_shadows(tmp_path):
    """The device's step: a carried wheel whose version this interpreter lacks goes into the
    private site folder, which then comes first for this process and every worker; a wheel
    of the version already present is not installed again."""
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    _fake_wheel(wheels, "pytorch-msssim", "0.0.1", "pytorch_msssim", "FAKE = 'carried'\n")
    from importlib import metadata

    present = metadata.version("xxhash")
    _fake_wheel(wheels, "xxhash", present, "xxhash_unused", "")
    code = (
        "import importlib.util, json, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('dc', {str(SCRIPT)!r})\n"
        "dc = importlib.util.module_from_spec(spec); spec.loader.exec_module(dc)\n"
        f"dc.WHEEL_DIR = dc.Path({str(wheels)!r}); dc.SITE_DIR = dc.Path({str(site)!r})\n"
        "report = {}\n"
        "ok = dc.install_carried(report)\n"
        "import pytorch_msssim\n"
        "print(json.dumps({'ok': ok, 'report': report, 'fake': pytorch_msssim.FAKE,\n"
        "                  'pythonpath': os.environ['PYTHONPATH']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"], out["report"]
    assert out["report"]["installed"] == ["pytorch_msssim-0.0.1-py3-none-any.whl"]
    assert out["fake"] == "carried"  # the carried copy shadows the environment's
    assert out["pythonpath"].split(os.pathsep)[:2] == [str(site), str(REPO)]
    assert not (site / "xxhash_unused.py").exists()


def test_missing_compressai_without_carried_wheels_is_a_clear_install_failure(
        tmp_path, monkeypatch):
    # a distribution installed nowhere stands for compressai on the device; no .whl folder
    monkeypatch.setattr(dc, "WHEEL_DIR", tmp_path / "none")
    monkeypatch.setattr(dc, "CARRIED", {"compressai-absent-here": "1.0"})
    monkeypatch.setattr(dc, "REQUIRED", ("compressai-absent-here",))
    path_before = list(sys.path)
    report: dict = {}
    assert not dc.install_carried(report)
    assert "compressai-absent-here absent" in report["error"]
    assert "--prepare" in report["error"] and "carry .whl" in report["error"]
    assert sys.path == path_before  # nothing half-installed onto the path


def test_cuda_requested_without_a_gpu_exits_2_with_a_clear_message(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out",
                           str(tmp_path), "--skip-calibrate"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sees no CUDA GPU" in done.stdout and "--device cpu" in done.stdout
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["problems"] and not result["cells"]


def test_cpu_flow_counts_cells_and_records_a_failed_input_without_stopping(tmp_path):
    """The encode/decode flow on stand-in profiles, one pair (each worker process costs about
    10 s here), one small photo and one broken file: the broken input's encodes fail and are
    listed, every other cell still runs."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out),
         "--models", "bmshj2018-hyperprior-q1", "--max-side", "64", "--skip-calibrate",
         "--pairs", "gpu:host", "--inputs", str(SAMPLES / "coffee.png"), str(broken)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "device_check.json").read_text())
    assert (out / "device_check.txt").read_text().startswith("device_check --device cpu")
    # the one encoder failed on the broken file in both modes, and nothing else went wrong
    assert len(result["problems"]) == 2, result["problems"]
    assert all(p.startswith("encode emulate-splitk") and "broken" in p
               for p in result["problems"])
    coffee = [c for c in result["cells"] if c["input"] == "coffee"]
    # encoded under the gpu stand-in, decoded in the host profile's own process, both modes
    assert sorted((c["encoder"], c["decoder"], c["mode"]) for c in coffee) == [
        ("emulate-splitk", "cpu", "none"), ("emulate-splitk", "cpu", "syndrome")]
    assert all(c["outcome"] == "bit_exact" for c in coffee if c["mode"] == "syndrome")
    assert all(c["outcome"] in ("bit_exact", "DATA_LOSS") for c in coffee)
    assert [c["outcome"] for c in result["cells"] if c["input"] == "broken"] == \
        ["encode_failed"] * 2
    workers = result["workers"]
    assert set(workers) == {"encode emulate-splitk", "decode cpu"}
    assert {w["end"] for w in workers.values()} == {"ok"}
    assert result["calibration"]["skipped"] == "--skip-calibrate"
    assert result["meta"]["torch"] and result["timings"]["total"] > 0


@pytest.mark.parametrize("argv", [
    [], ["--device", "gpu"],
    ["--device", "cpu", "--pairs", "gpu:gpu"], ["--device", "cpu", "--pairs", "gpu:cuda"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        dc.parse_args(argv)
    assert exc.value.code == 2


def test_a_hung_worker_is_killed_at_the_budget_and_the_rest_is_recorded_as_skipped(tmp_path):
    """A worker that never returns (here: reading an input that is a FIFO nobody writes) is
    killed with its process group when the time budget runs out; what could not run is
    recorded, the JSON is still written, and the exit status says it failed."""
    fifo = tmp_path / "never.png"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    start = time.monotonic()
    # The budget leaves the first worker 21 s minus the script's imports (RESERVE_S is kept
    # back): at 28 s a slow, loaded machine spent the first worker's share on importing torch
    # and skipped it instead of killing it.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--budget", "36",
         "--models", "bmshj2018-hyperprior-q1", "--inputs", str(fifo)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - start < 60
    result = json.loads((out / "device_check.json").read_text())
    workers = result["workers"]
    assert workers["encode emulate-splitk"]["end"].startswith("timeout after")
    assert workers["encode cpu"]["end"] == "skipped"
    assert "time budget" in result["calibration"]["error"]
    assert result["cells"] and all(c["outcome"] in ("encode_failed", "worker_skipped")
                                   for c in result["cells"])
    assert "PROBLEMS" in (out / "device_check.txt").read_text()


def test_an_unknown_model_is_a_usage_error_before_any_worker(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out",
                           str(tmp_path), "--models", "no-such-model"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no-such-model" in done.stdout
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert not result["workers"] and not result["cells"]
