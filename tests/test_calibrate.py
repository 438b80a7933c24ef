"""One calibrator for every codec kind, comparing every pair of profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprocodec import calibrate

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


def test_relative_mismatch_is_taken_both_ways_and_ignores_tiny_values():
    a = np.array([1.0, 2.0, 1e-9])
    b = np.array([1.1, 2.0, 3e-9])
    # |a-b|/|a| = 0.1 and |a-b|/|b| = 0.0909 on the first element; the third is below scale
    assert calibrate.mismatch("relative", a, b, min_scale=0.5) == pytest.approx(0.1)
    assert calibrate.mismatch("relative", b, a, min_scale=0.5) == pytest.approx(0.1)
    assert calibrate.mismatch("absolute", a, b, 0.0) == pytest.approx(0.1)
    assert calibrate.mismatch("relative", a, b, min_scale=0.0) == pytest.approx(2.0)


def test_bound_covers_the_worst_pair_and_records_what_it_covers():
    measured = {"pixels": {"cpu|cpu-fp64": 1e-4, "cpu-fp64|cpu-1thread": 3e-4}}
    bounds = calibrate.bounds_from(measured, {"pixels": "absolute"}, 4.0,
                                   ["cpu", "cpu-fp64", "cpu-1thread"], {"cpu": "cpu"})
    b = bounds["pixels"]
    assert b["value"] == pytest.approx(1.2e-3) and b["measured_max"] == 3e-4
    assert b["profiles"] == ["cpu", "cpu-fp64", "cpu-1thread"]
    tiny = calibrate.bounds_from({"pixels": {"cpu|x": 0.0}}, {"pixels": "absolute"}, 4.0,
                                 ["cpu", "x"], {})
    assert tiny["pixels"]["value"] == calibrate.FLOORS["pixels"]  # agreement is no promise


def test_every_pair_of_profiles_of_both_codec_kinds_is_measured():
    jobs = {"bmshj2018-hyperprior-q1": [str(SAMPLES / "coffee.png")],
            "octree-ctx-v1": [str(SAMPLES / "camel_d6.ply")]}
    profiles = ["cpu", "emulate-splitk", "cpu-1thread"]
    measured = calibrate.measure(jobs, profiles, max_side=64, depth=5)
    pairs = {"cpu|emulate-splitk", "cpu|cpu-1thread", "emulate-splitk|cpu-1thread"}
    assert set(measured["bmshj2018-hyperprior-q1"]) == {"scale_index", "pixels"}
    assert set(measured["octree-ctx-v1"]) == {"occupancy_logit"}
    for per_tensor in measured.values():
        for per_pair in per_tensor.values():
            assert set(per_pair) == pairs
            assert all(np.isfinite(v) and v >= 0 for v in per_pair.values())
    # another summation order moves the float32 logits and the float64 pixels, but the
    # float64 decision networks only by rounding noise
    assert measured["octree-ctx-v1"]["occupancy_logit"]["cpu|emulate-splitk"] > 0
    assert 0 < measured["bmshj2018-hyperprior-q1"]["pixels"]["cpu|emulate-splitk"] < 1e-9


def test_profiles_outside_the_calibrated_set_are_named_and_logged_once(caplog):
    from reprocodec.decision import coverage_note

    bounds = {"pixels": {"kind": "absolute", "value": 1e-7,
                         "profiles": ["cpu", "cpu-nomkldnn", "cuda"]},
              "scale_index": {"kind": "relative", "value": 1e-8,
                              "profiles": ["cpu", "cuda", "emulate-tf32"]}}
    assert coverage_note(bounds, "cpu", "cuda") == ""  # covered by every bound
    with caplog.at_level("WARNING"):
        note = coverage_note(bounds, "cuda-tf32", "cpu-nomkldnn")
        again = coverage_note(bounds, "cuda-tf32", "cpu-nomkldnn")
    assert "cuda-tf32" in note and "cpu-nomkldnn" in note and note == again
    assert sum("outside" in r.message for r in caplog.records) == 1
    assert coverage_note({"pixels": {"kind": "absolute", "value": 1}}, "x", "y") == ""
