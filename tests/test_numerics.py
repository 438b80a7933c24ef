"""Numerics profiles: parsing, once-per-process application, the noise hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from reprocodec import numerics
from reprocodec.safeguard import ErrorBound


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("name", ["cpu", "cpu-nomkldnn", "cpu-channels-last", "cpu-fp64",
                                  "cpu-1thread", "cuda", "cuda-tf32", "noise:1e-4"])
def test_known_profiles_parse(name):
    assert numerics.parse_profile(name).name == name


@pytest.mark.parametrize("name", ["gpu", "noise:", "noise:-1", "noise:nan", "cpu fp64"])
def test_unknown_profiles_are_refused(name):
    with pytest.raises(ValueError):
        numerics.parse_profile(name)


def test_profile_attributes():
    assert numerics.parse_profile("cpu-fp64").synthesis_float64
    assert numerics.parse_profile("cpu-channels-last").channels_last
    assert not numerics.parse_profile("cpu-nomkldnn").mkldnn
    assert numerics.parse_profile("cpu-1thread").threads == 1
    assert numerics.parse_profile("cuda-tf32").tf32
    assert numerics.parse_profile("noise:0.25").noise_eps == 0.25


def test_perturb_is_identity_without_noise_profile():
    v = np.linspace(-3, 3, 11)
    assert numerics.perturb("x", v, ErrorBound.absolute(1e-3)) is v


def test_one_profile_per_process_and_torch_settings():
    done = run_py("""
        import torch
        from reprocodec import numerics
        numerics.apply_profile("cpu-nomkldnn")
        assert torch.backends.mkldnn.enabled is False
        numerics.apply_profile("cpu-nomkldnn")  # same again: fine
        try:
            numerics.apply_profile("cpu")
        except RuntimeError as exc:
            print("refused:", exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "separate process" in done.stdout


def test_noise_profile_is_bounded_and_seeded():
    code = """
        import numpy as np
        from reprocodec import numerics
        from reprocodec.safeguard import ErrorBound
        numerics.apply_profile("noise:0.01")
        v = np.linspace(1, 100, 1000)
        a = numerics.perturb("pixels", v, ErrorBound.absolute(1.0))
        r = numerics.perturb("scale_index", v, ErrorBound.relative(1.0e-3))
        print(np.abs(a - v).max(), (np.abs(r - v) / v).max(), a[:3].tolist())
    """
    first, second = run_py(code), run_py(code)
    assert first.returncode == 0, first.stderr
    abs_max, rel_max, *_ = first.stdout.split()
    assert 0.005 < float(abs_max) <= 0.01 and 0.005 < float(rel_max) <= 0.01
    assert first.stdout == second.stdout  # fixed seed: reproducible runs


def test_cuda_profile_without_gpu_is_a_clear_error():
    done = run_py("""
        import torch
        from reprocodec import numerics
        if torch.cuda.is_available():
            print("has-gpu")
        else:
            try:
                numerics.apply_profile("cuda")
            except RuntimeError as exc:
                print("refused:", exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "has-gpu" in done.stdout or "needs a CUDA GPU" in done.stdout
