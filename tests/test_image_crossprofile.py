"""Encode under `cpu`, decode under other CPU numerics profiles, each in its own process
(profiles are process-global), through the real CLI."""

from __future__ import annotations

import pytest

pytest.importorskip("compressai")

from reprocodec.image.testing import (  # noqa: E402
    decode_matches_capture,
    run_cli,
    write_crossprofile_inputs,
    write_random_model,
)

DECODER_PROFILES = ["cpu-nomkldnn", "cpu-channels-last", "emulate-splitk", "emulate-tf32"]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("xprofile")
    weights = root / "weights"
    name = write_random_model(weights, "mbt2018-mean", seed=0)
    done = run_cli(["encode", *write_crossprofile_inputs(root), "-o", str(root / "rpc"),
                    "--local", "--profile", "cpu", "--model", name, "--safeguard", "syndrome",
                    "--level", "both", "--capture", str(root / "enc")], weights)
    assert done.returncode == 0, done.stderr
    return root, weights, sorted((root / "rpc").glob("*.rpc"))


@pytest.mark.parametrize("profile", DECODER_PROFILES)
def test_other_profiles_decode_byte_identical_pngs(encoded, profile):
    root, weights, streams = encoded
    decode_matches_capture(streams, root / "enc", root / f"dec-{profile}", profile, weights)


def test_noise_beyond_bound_fails_verification_with_one_line(encoded):
    root, weights, streams = encoded
    done = run_cli(["decode", str(streams[0]), "-o", str(root / "noisy.png"), "--local",
                    "--profile", "noise:0.05"], weights)
    assert done.returncode == 3
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("reprocodec: error:")]
    assert len(errors) == 1 and "verification" in errors[0]
    assert not (root / "noisy.png").exists()  # never an image
