"""Context features for the occupancy model (numpy, vectorized over all nodes of a level).

Each level's child bits are coded in 8 sub-passes, pass k coding child k of every node at
once. For a child in pass k the model sees a 5x5x5 window of child-level cells around it:
each cell is known occupied, known empty (its parent-level node is empty, or it is a child
index < k of an occupied node), or unknown (not decoded yet). The window always lies inside
the parent's 3x3x3 parent-level neighbourhood, so one (M, 27) neighbour table per level serves
all passes. The encoder computes the same masked features from the full truth, so both sides
see identical inputs.
"""

from __future__ import annotations

import numpy as np

from .octree import CHILD_OFFSETS

WINDOW = 5
N_CELLS = WINDOW**3
N_PASSES = 8
N_HEIGHTS = 12  # one-hot of (depth - 1 - level), clipped: how far above the leaves
N_FEATURES = 2 * N_CELLS + N_PASSES + N_HEIGHTS


def _window_maps() -> tuple[np.ndarray, np.ndarray]:
    """For each pass k and window cell: which of the 27 neighbours and which child of it."""
    r = np.arange(-(WINDOW // 2), WINDOW // 2 + 1)
    e = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    neighbour = np.zeros((N_PASSES, N_CELLS), np.int64)
    child = np.zeros((N_PASSES, N_CELLS), np.int64)
    for k in range(N_PASSES):
        s = CHILD_OFFSETS[k] + e  # child-level offset from the parent's first child, in [-2, 3]
        d = np.floor_divide(s, 2) + 1  # parent-level offset + 1, in 0..2
        b = s - 2 * (d - 1)  # child position inside that neighbour, 0 or 1
        neighbour[k] = d[:, 0] * 9 + d[:, 1] * 3 + d[:, 2]
        child[k] = b[:, 0] * 4 + b[:, 1] * 2 + b[:, 2]
    return neighbour, child


WINDOW_NEIGHBOUR, WINDOW_CHILD = _window_maps()


def pass_features(
    neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int
) -> np.ndarray:
    """(M, N_FEATURES) uint8 features of child k of every node.

    neighbours: (R, 27) rows of octree.neighbour_table (M marks an empty neighbour; R = M
    except when training samples a subset of rows); bits: (M, 8) child occupancy of all M
    nodes, only columns < k are read.
    """
    m = bits.shape[0]
    padded = np.zeros((m + 1, 8), dtype=bool)
    padded[:m, :k] = bits[:, :k]  # columns >= k are unknown: never let them leak in
    cell_node = neighbours[:, WINDOW_NEIGHBOUR[k]]  # (M, 125)
    cell_child = WINDOW_CHILD[k]
    occupied = padded[cell_node, cell_child]
    known = (cell_node == m) | (cell_child < k)
    out = np.zeros((neighbours.shape[0], N_FEATURES), dtype=np.uint8)
    out[:, :N_CELLS] = occupied
    out[:, N_CELLS:2 * N_CELLS] = known & ~occupied
    out[:, 2 * N_CELLS + k] = 1
    height = min(depth - 1 - level, N_HEIGHTS - 1)
    out[:, 2 * N_CELLS + N_PASSES + height] = 1
    return out
