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


@pytest.mark.parametrize("name", ["cpu", "cpu-nomkldnn", "cpu-channels-last", "cpu-1thread",
                                  "emulate-tf32", "emulate-splitk", "cuda", "cuda-tf32",
                                  "noise:1e-4"])
def test_known_profiles_parse(name):
    assert numerics.parse_profile(name).name == name


@pytest.mark.parametrize("name", ["gpu", "noise:", "noise:-1", "noise:nan", "cpu fp64"])
def test_unknown_profiles_are_refused(name):
    with pytest.raises(ValueError):
        numerics.parse_profile(name)


def test_profile_attributes():
    assert numerics.parse_profile("emulate-tf32").emulate == "tf32"
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


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_even():
    import torch

    from reprocodec.gpu_emulation import round_to_tf32

    x = torch.tensor([1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0 + 2**-10 + 2**-12, -2.5,
                      float("inf")], dtype=torch.float32)
    got = round_to_tf32(x).tolist()
    # half-way cases go to the even neighbour; above half rounds up; exact values stay
    assert got[0] == 1.0 and got[1] == 1.0 and got[2] == 1.0 + 2**-9
    assert got[3] == 1.0 + 2**-10 and got[4] == -2.5 and got[5] == float("inf")
    y = torch.randn(1000, dtype=torch.float32)
    r = round_to_tf32(y)
    assert torch.all((r.view(torch.int32) & 0x1FFF) == 0)  # 13 low bits cleared
    assert torch.all((r - y).abs() <= y.abs() * 2**-11)
    assert round_to_tf32(y.double()) is not None and torch.equal(round_to_tf32(y.double()),
                                                                 y.double())


@pytest.mark.parametrize("profile", ["emulate-tf32", "emulate-splitk"])
def test_gpu_emulation_changes_float32_results_but_not_shapes(profile):
    done = run_py(f"""
        import torch
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(16, 8, 3, padding=1)
        deconv = torch.nn.ConvTranspose2d(16, 8, 5, stride=2, padding=2, output_padding=1)
        lin = torch.nn.Linear(40, 3)
        x, v = torch.randn(1, 16, 12, 12), torch.randn(7, 40)
        before = [conv(x), deconv(x), lin(v), conv.double()(x.double())]
        from reprocodec import numerics
        numerics.apply_profile("{profile}")
        after = [conv.float()(x), deconv(x), lin(v), conv.double()(x.double())]
        for b, a in zip(before, after):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.allclose(a, b, rtol=1e-2, atol=1e-2)
        moved = [float((a - b).abs().max()) for a, b in zip(before, after)]
        print(moved)
        assert all(m > 0 for m in moved[:3]), moved
        if "{profile}" == "emulate-tf32":
            assert moved[3] == 0.0  # TF32 never touches float64
    """)
    assert done.returncode == 0, done.stderr
