"""planes.py: each child's plane feature, against a plain-Python reference in exact
fractions; thread-independent; inside the plane model's table."""

from __future__ import annotations

from fractions import Fraction
from itertools import product

import numpy as np
import pytest

from reprocodec.pointcloud import mixing, octree, planes


def _reference_features(coords: np.ndarray) -> np.ndarray:
    """The module docstring's feature of each child of each node, from the nodes' integer
    coordinates alone: the window by its definition (cells within 2 that touch one of the
    node's occupied neighbours, the node itself included), the least-spread normal by exact
    fractions, the buckets by comparing exact distances and deviations with their edges."""
    cells = {tuple(c) for c in coords.tolist()}
    out = np.zeros((len(coords), 8), np.int64)
    for i, c in enumerate(coords.tolist()):
        near = [tuple(c[a] + d[a] for a in range(3)) for d in product((-1, 0, 1), repeat=3)]
        near = [q for q in near if q in cells]
        window = {t for t in cells if max(abs(t[a] - c[a]) for a in range(3)) <= 2 and
                  any(max(abs(t[a] - q[a]) for a in range(3)) <= 1 for q in near)}
        offsets = [[t[a] - c[a] for a in range(3)] for t in window]
        n = len(offsets)
        best, best_var = 0, None
        for d, normal in enumerate(planes.DIRECTIONS.tolist()):
            proj = [sum(u * v for u, v in zip(normal, o, strict=True)) for o in offsets]
            mean = Fraction(sum(proj), n)
            var = sum((p - mean) ** 2 for p in proj) / n / sum(u * u for u in normal)
            if best_var is None or var < best_var:
                best, best_var, best_mean = d, var, mean
        normal = planes.DIRECTIONS[best].tolist()
        norm2 = sum(u * u for u in normal)
        # deviation in child cells: 2 sqrt(var) >= e / 100 <=> 4 var >= (e / 100)^2
        spread = sum(4 * best_var >= Fraction(int(e), 100) ** 2 for e in planes.SPREAD_STEPS)
        for j in range(8):
            place = ((j >> 2) & 1, (j >> 1) & 1, j & 1)
            centre = sum(Fraction(u * (2 * b - 1), 4) for u, b in zip(normal, place, strict=True))
            distance2 = (centre - best_mean) ** 2 * 4 / norm2  # child cells, squared
            # round(4 |distance|), halves up, capped: the largest q with 4 |d| >= q - 1/2
            q = max(t for t in range(planes.DISTANCE_BUCKETS)
                    if t == 0 or 16 * distance2 >= (t - Fraction(1, 2)) ** 2)
            out[i, j] = ((q * 2 + (centre > best_mean)) * planes.SPREADS + spread) * \
                len(planes.DIRECTIONS) + best
    return out


def _level(coords: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.unique(octree.morton_encode(coords))
    return codes, octree.neighbour_table(codes, level)


def _features(table: np.ndarray, threads: int = 1) -> np.ndarray:
    return planes.level_features(table, mixing.neighbour_shapes(table), threads)


def _slanted_surface(n: int, seed: int) -> np.ndarray:
    """Cells near a slanted plane with a bump, some noise and a few strays: every direction,
    spread and distance bucket gets used somewhere."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 24, (2, n))
    z = np.round(0.4 * x + 0.7 * y + 3 * np.exp(-((x - 12) ** 2 + (y - 12) ** 2) / 20)
                 + rng.normal(0, 0.4, n)).astype(np.int64)
    stray = rng.integers(0, 32, (n // 20, 3))
    return np.unique(np.concatenate([np.stack([x, y, z], 1), stray]).clip(0, 31), axis=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_features_follow_the_documented_fit(seed):
    coords = _slanted_surface(500, seed)
    codes, table = _level(coords, 5)
    got = _features(table)
    assert got.dtype == planes.FEATURE_DTYPE and got.shape == (codes.size, 8)
    np.testing.assert_array_equal(got, _reference_features(octree.morton_decode(codes)))


def test_features_of_an_axis_plane_and_the_range():
    """On the plane z = 5, fully occupied: the normal is z, no spread, and a child's distance
    is half a child cell (two quarters) below or above (its place's z bit); every feature in
    the table."""
    xs, ys = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    coords = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 5)], 1)
    codes, table = _level(coords, 4)
    got = _features(table).astype(np.int64)
    nd = len(planes.DIRECTIONS)
    assert np.all(got % nd == 2)  # DIRECTIONS[2] = (0, 0, 1)
    assert np.all(got // nd % planes.SPREADS == 0)
    q_sign = got // nd // planes.SPREADS
    z_bit = np.arange(8) & 1
    np.testing.assert_array_equal(q_sign, np.broadcast_to(2 * 2 + z_bit, got.shape))
    assert planes.FEATURES == planes.DISTANCE_BUCKETS * 2 * planes.SPREADS * nd
    assert planes.FEATURES <= np.iinfo(planes.FEATURE_DTYPE).max + 1


def test_features_do_not_depend_on_threads_and_check_their_table():
    coords = _slanted_surface(4000, 3)
    codes, table = _level(coords, 5)
    one = _features(table, threads=1)
    np.testing.assert_array_equal(_features(table, threads=2), one)
    assert int(one.max()) < planes.FEATURES
    with pytest.raises(ValueError):
        planes.level_features(table.astype(np.int64), mixing.neighbour_shapes(table))
    with pytest.raises(ValueError):
        planes.level_features(table[:-1], mixing.neighbour_shapes(table))
    with pytest.raises(ValueError):  # a shape the kernel's tables cannot index
        planes.level_features(table, mixing.neighbour_shapes(table).astype(np.int64) | 1 << 27)
