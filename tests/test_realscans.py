"""The potree reader behind the real-scan benchmark rows (reprocodec/train/realscans.py)."""

from __future__ import annotations

import numpy as np
import pytest

from reprocodec.train.realscans import _node_min, potree_binary

BOX = {"lx": 10.0, "ly": 20.0, "lz": 30.0, "ux": 18.0, "uy": 28.0, "uz": 38.0}


def test_node_corners_follow_potree_octant_digits():
    assert np.array_equal(_node_min(BOX, "r"), [10, 20, 30])
    assert np.array_equal(_node_min(BOX, "r4"), [14, 20, 30])  # 4: +x half
    assert np.array_equal(_node_min(BOX, "r7"), [14, 24, 34])
    assert np.array_equal(_node_min(BOX, "r12"), [10, 22, 34])  # 1: +z by 4, then 2: +y by 2


def _node(points_in_units: list[list[int]]) -> bytes:
    xyz = np.asarray(points_in_units, dtype="<u4")
    colour = np.zeros((len(xyz), 1), dtype="<u4")
    return np.concatenate([xyz, colour], axis=1).tobytes()


def test_binary_nodes_are_offset_by_their_corner_and_scaled():
    cloud = {"pointAttributes": ["POSITION_CARTESIAN", "COLOR_PACKED"], "scale": 0.5,
             "boundingBox": BOX, "hierarchy": [["r", 2], ["r7", 1]]}
    files = {"data/r.bin": _node([[0, 0, 0], [2, 4, 6]]), "data/r7.bin": _node([[1, 1, 1]])}
    points = potree_binary(cloud, files.__getitem__)
    assert np.array_equal(points, [[10, 20, 30], [11, 22, 33], [14.5, 24.5, 34.5]])
    files["data/r7.bin"] = files["data/r7.bin"][:-1]  # a truncated node is refused
    with pytest.raises(ValueError, match="node r7"):
        potree_binary(cloud, files.__getitem__)
