"""Fixtures shared by several test modules."""

from __future__ import annotations

import logging

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """A test that runs a service's serve() (its flag checks) has it configure the root logger
    with a handler on that test's captured stderr, which pytest closes after the test: the
    root logger is put back as it was, so that later tests' records (a service's handler
    threads, a codec load) are not written to a closed stream ('Logging error' in the
    suite's output)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def ground_rings() -> np.ndarray:
    """The ground rings of a spinning 16-beam sensor, 512 azimuths, 2 cm noise (8,192 points):
    nothing like the training meshes; at depth 10 the default model codes levels 5-8
    adaptive and 9 learned, at depth 12 refined probabilities win levels back."""
    rng = np.random.default_rng(0)
    elevation, azimuth = np.meshgrid(np.deg2rad(np.linspace(-25, -2, 16)),
                                     np.linspace(0, 2 * np.pi, 512, endpoint=False),
                                     indexing="ij")
    r = 1.8 / np.tan(-elevation) + rng.normal(0, 0.02, elevation.shape)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth),
                     rng.normal(0, 0.02, r.shape)], -1).reshape(-1, 3)
