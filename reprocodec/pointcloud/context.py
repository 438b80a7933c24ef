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


def active_columns(k: int) -> np.ndarray:
    """Feature columns that can be non-zero in pass k, one-hots excluded: a cell can only be
    known occupied if its child index is < k. The codec feeds just these to the network (the
    one-hots fold into a bias), a third fewer multiply-adds than the full vector."""
    occupied_cols = np.flatnonzero(WINDOW_CHILD[k] < k)
    return np.concatenate([occupied_cols, N_CELLS + np.arange(N_CELLS)])


def pass_features(
    neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int,
    compact: bool = False,
) -> np.ndarray:
    """(M, N_FEATURES) uint8 features of child k of every node; with compact=True only the
    active_columns(k) (what the codec's network reads).

    neighbours: (R, 27) rows of octree.neighbour_table (M marks an empty neighbour; R = M
    except when training samples a subset of rows); bits: (M, 8) child occupancy of all M
    nodes, only columns < k are read.
    """
    m = bits.shape[0]
    # Each node's occupancy byte restricted to the decoded children (< k), MSB = child 0;
    # row m is the empty sentinel. Gathering bytes per neighbour (27 columns) and then per
    # cell keeps the (M, 125) work in uint8.
    known_bits = np.zeros((m + 1, 8), dtype=bool)
    known_bits[:m, :k] = bits[:, :k]  # columns >= k are unknown: never let them leak in
    node_byte = np.packbits(known_bits, axis=1)[:, 0]
    neighbour_byte = node_byte[neighbours]  # (R, 27)
    cell_byte = neighbour_byte[:, WINDOW_NEIGHBOUR[k]]  # (R, 125)
    occupied = (cell_byte >> (7 - WINDOW_CHILD[k]).astype(np.uint8)) & 1
    cell_absent = (neighbours == m)[:, WINDOW_NEIGHBOUR[k]]
    known = cell_absent | (WINDOW_CHILD[k] < k)
    if compact:
        return np.concatenate(
            [occupied[:, WINDOW_CHILD[k] < k], known & (occupied == 0)], axis=1, dtype=np.uint8)
    out = np.zeros((neighbours.shape[0], N_FEATURES), dtype=np.uint8)
    out[:, :N_CELLS] = occupied
    out[:, N_CELLS:2 * N_CELLS] = known & (occupied == 0)
    out[:, 2 * N_CELLS + k] = 1
    height = min(depth - 1 - level, N_HEIGHTS - 1)
    out[:, 2 * N_CELLS + N_PASSES + height] = 1
    return out
