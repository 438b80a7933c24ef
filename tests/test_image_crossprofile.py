"""Encode under `cpu`, decode under other CPU numerics profiles, each in its own process
(profiles are process-global), through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("compressai")

from reprocodec.image.io import write_png  # noqa: E402
from reprocodec.image.testing import sample_crop, write_random_model  # noqa: E402

DECODER_PROFILES = ["cpu-nomkldnn", "cpu-channels-last", "emulate-splitk", "emulate-tf32"]


def cli(args: list[str], weights: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"REPROCODEC_WEIGHTS_DIR": str(weights)}
    return subprocess.run([sys.executable, "-m", "reprocodec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("xprofile")
    weights = root / "weights"
    name = write_random_model(weights, "mbt2018-mean", seed=0)
    inputs = []
    for i, (h, w) in enumerate([(70, 90), (33, 130)]):
        p = root / f"in{i}.png"
        write_png(p, sample_crop(height=h, width=w))
        inputs.append(str(p))
    grey = root / "grey.png"
    write_png(grey, sample_crop(height=50, width=40)[:, :, :1])
    inputs.append(str(grey))
    done = cli(["encode", *inputs, "-o", str(root / "rpc"), "--local", "--profile", "cpu",
                "--model", name, "--safeguard", "syndrome", "--level", "both",
                "--capture", str(root / "enc")], weights)
    assert done.returncode == 0, done.stderr
    return root, weights, sorted((root / "rpc").glob("*.rpc"))


@pytest.mark.parametrize("profile", DECODER_PROFILES)
def test_other_profiles_decode_byte_identical_pngs(encoded, profile):
    root, weights, streams = encoded
    out = root / f"dec-{profile}"
    done = cli(["decode", *map(str, streams), "-o", str(out), "--local", "--profile", profile],
               weights)
    assert done.returncode == 0, done.stderr
    for s in streams:
        enc = np.load(root / "enc" / f"{s.stem}.npz")["output"]
        from PIL import Image

        got = np.asarray(Image.open(out / f"{s.stem}.png"))
        assert np.array_equal(got.reshape(enc.shape), enc), f"{s.stem} under {profile}"


def test_noise_beyond_bound_fails_verification_with_one_line(encoded):
    root, weights, streams = encoded
    done = cli(["decode", str(streams[0]), "-o", str(root / "noisy.png"), "--local",
                "--profile", "noise:0.05"], weights)
    assert done.returncode == 3
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("reprocodec: error:")]
    assert len(errors) == 1 and "verification" in errors[0]
    assert not (root / "noisy.png").exists()  # never an image
