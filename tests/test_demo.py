"""The README's main job: `reprocodec demo` end to end, and its clean-up on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(SAMPLES / "chelsea.png", samples)
    shutil.copy(SAMPLES / "camel_d6.ply", samples)
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "reprocodec.cli", "demo", "-o", str(out), "--samples",
         str(samples)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    protected = [ln for ln in lines if " syndrome " in ln]
    assert len(protected) == 2 and all(" ok " in ln and " True " in ln for ln in protected)
    # Unprotected decodes are reported either bit-exact or refused (DATA_LOSS), never as a
    # different output; protecting the float64 image decisions costs next to nothing.
    unprotected = [ln for ln in lines if " none " in ln]
    assert len(unprotected) == 2
    assert all((" ok " in ln and " True " in ln) or "DATA_LOSS" in ln for ln in unprotected)
    image_row = next(ln for ln in protected if ln.startswith("chelsea.png"))
    assert float(image_row.split()[-1].rstrip("%")) < 0.1
    for name in ("report.md", "results.json", "overhead_vs_bound.png", "rate_distortion.png",
                 "failures.png"):
        assert (out / name).stat().st_size > 0, name
    assert "all protected decodes bit-exact" in run.stdout


def test_ctrl_c_stops_the_demo_and_its_services(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "reprocodec.cli", "demo", "-o", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 2:  # both services started
            time.sleep(0.5)
            children = _children(demo.pid)
        assert len(children) == 2, "the demo did not start its two services"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=90) == 130
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.2)
        assert not any(_alive(c) for c in children), "a service outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
