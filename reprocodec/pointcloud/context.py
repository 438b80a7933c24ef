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

from ..kernels import compiled, numba
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
    if compact and numba is not None:
        return _compact_features(neighbours, bits, k)
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


def _known_bytes(bits: np.ndarray, k: int) -> np.ndarray:
    """Each node's occupancy byte restricted to children < k (MSB = child 0), plus a zero
    byte for the empty sentinel row M."""
    m = bits.shape[0]
    known_bits = np.zeros((m + 1, 8), dtype=bool)
    known_bits[:m, :k] = bits[:, :k]
    return np.packbits(known_bits, axis=1)[:, 0]


class CompactFeatures:
    """pass_features(..., compact=True) of one pass, made a chunk of rows at a time in the
    dtype the network reads (0/1 are exact in any dtype): the codec never holds a whole
    level's features, nor a uint8 copy to convert. Compiled with numba; the numpy code of
    pass_features otherwise (tests check that both give the same values)."""

    def __init__(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int,
                 depth: int):
        self.neighbours, self.bits, self.k, self.level, self.depth = (
            neighbours, bits, k, level, depth)
        self.rows = neighbours.shape[0]
        if numba is not None:
            self.node_byte = _known_bytes(bits, k)
            self.occupied_cells = np.flatnonzero(WINDOW_CHILD[k] < k)
            self.shift = (7 - WINDOW_CHILD[k]).astype(np.uint8)
            self.decoded = (WINDOW_CHILD[k] < k).astype(np.uint8)
        self.columns = int(np.count_nonzero(WINDOW_CHILD[k] < k)) + N_CELLS

    def chunk(self, start: int, stop: int, dtype=np.uint8) -> np.ndarray:
        rows = self.neighbours[start:stop]
        if numba is None:
            return pass_features(rows, self.bits, self.k, self.level, self.depth,
                                 compact=True).astype(dtype, copy=False)
        out = np.empty((rows.shape[0], self.columns), dtype=dtype)
        _features_kernel(np.ascontiguousarray(rows), self.node_byte,
                         self.bits.shape[0], WINDOW_NEIGHBOUR[self.k], self.shift, self.decoded,
                         self.occupied_cells, out)
        return out


def _compact_features(neighbours: np.ndarray, bits: np.ndarray, k: int) -> np.ndarray:
    """pass_features(..., compact=True) in one compiled pass over the rows: the same uint8
    array (tests check it against the numpy code above), without its (R, 125) temporaries."""
    return CompactFeatures(neighbours, bits, k, 0, 1).chunk(0, neighbours.shape[0])


if numba is not None:
    @compiled
    def _features_kernel(neighbours, node_byte, m, cell_neighbour, cell_shift, cell_decoded,
                         occupied_cells, out):  # pragma: no cover - compiled
        n_occ = occupied_cells.size
        n_cells = cell_neighbour.size
        byte = np.zeros(27, np.uint8)
        absent = np.zeros(27, np.uint8)
        for r in range(neighbours.shape[0]):
            for t in range(27):
                j = neighbours[r, t]
                byte[t] = node_byte[j]
                absent[t] = 1 if j == m else 0
            row = out[r]
            for c in range(n_occ):
                cell = occupied_cells[c]
                row[c] = (byte[cell_neighbour[cell]] >> cell_shift[cell]) & 1
            for cell in range(n_cells):
                t = cell_neighbour[cell]
                occupied = (byte[t] >> cell_shift[cell]) & 1
                known = absent[t] | cell_decoded[cell]
                row[n_occ + cell] = known & (occupied ^ 1)
