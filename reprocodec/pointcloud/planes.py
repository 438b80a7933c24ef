"""The plane feature of a child: where it lies against the plane that its node's parent-level
neighbourhood fits (mixing.py's version 3 mixer keeps a count model of it).

A machined part is mostly large flat faces. The learned model and the count models see a
child's 3 x 3 x 3 neighbourhood; a face's position inside a node is better told by a wider
one. For each node of a level, the plane is fitted to the level's occupied nodes within 2
cells of it in each axis that touch one of its own occupied neighbours (the two-hop window,
read from the level's neighbour table: a cell at distance 2 that touches none of them is
left out), as the one of DIRECTIONS along which their offsets spread least. Each child's
feature is then

    distance = its centre's signed distance from the plane through their mean, in quarter
               child cells, its magnitude in DISTANCE_BUCKETS buckets (rounded, the last open)
    spread   = the offsets' standard deviation along the normal, in SPREAD_STEPS buckets
    feature  = ((|distance| x 2 + (distance > 0)) x SPREADS + spread) x len(DIRECTIONS)
               + the direction's index

All of it is integer arithmetic: the offsets' sums and sums of products are exact int64, the
least spread is chosen by cross-multiplied comparisons, and every bucket edge is a comparison
of squares (a distance or a deviation is never rounded). So encoder and decoder compute the
same features from the same table on every machine, and there is nothing to protect. The
decoder makes them from its own neighbour table and node codes, never from stream bytes.

Measured on the held-out CAD meshes before it was built (a /tmp script: this feature's count
model mixed after version 2's coded probability, ideal code lengths): fandisk_large's mixed
payload 6.8 % smaller, the turbine's 2.8 %; nearly all of it on each level's first pass,
which no child of the level is decoded before (fandisk's last level: -24 %). The 3 x 3 x 3
window alone saved nothing.
"""

from __future__ import annotations

import numpy as np

from ..kernels import compiled
from .context import N_PASSES
from .rowslices import for_row_slices

# Candidate plane normals: the axes, the face diagonals and the body diagonals (one of each
# opposite pair), integers so that projections are exact
DIRECTIONS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1],
                       [1, 0, -1], [0, 1, 1], [0, 1, -1], [1, 1, 1], [1, 1, -1], [1, -1, 1],
                       [-1, 1, 1]], dtype=np.int64)
NORMS = (DIRECTIONS ** 2).sum(axis=1)  # |n|^2
# The spread's bucket edges, in hundredths of a child cell (a flat face's voxels spread
# ~0.3-0.9 cells about their plane, an edge's or a curved patch's more)
SPREAD_STEPS = np.array([35, 70, 110, 160], dtype=np.int64)
SPREADS = SPREAD_STEPS.size + 1
DISTANCE_BUCKETS = 16  # |distance| in quarter cells: 0 .. 15 (15: 3.625 cells or more)
FEATURES = DISTANCE_BUCKETS * 2 * SPREADS * DIRECTIONS.shape[0]  # 2080
CONTEXTS = N_PASSES * FEATURES  # the mixer's count model: pass x feature
FEATURE_DTYPE = np.uint16
REACH = 2  # the window: offsets -2 .. 2 in each axis
_SIDE = 2 * REACH + 1
_ROW_MASK = (1 << _SIDE) - 1  # a window row: 5 cells along z


def level_features(neighbours: np.ndarray, shapes: np.ndarray, threads: int = 1) -> np.ndarray:
    """(M, 8) FEATURE_DTYPE plane feature of each child (column k: child k) of a level's
    nodes, from its (M, 27) neighbour table (octree.neighbour_table: int32, M where empty)
    and the nodes' shapes (mixing.neighbour_shapes: bit s set where neighbour s is
    occupied); on `threads` threads (slices of nodes: the same values)."""
    table = np.ascontiguousarray(neighbours)
    m = table.shape[0]
    if table.ndim != 2 or table.shape[1] != 27 or table.dtype != np.int32 or \
            shapes.shape != (m,) or (m and not 0 <= int(shapes.min()) <= int(shapes.max())
                                     < 1 << 27):
        raise ValueError("plane features need the level's (M, 27) int32 neighbour table and "
                         "its (M,) 27-bit shapes")
    # The two-hop window is the union of the node's occupied neighbours' own 3 x 3 x 3
    # neighbourhoods: each neighbour's 27-bit shape, its three x slices of 3 x 3 cells spread
    # onto the window's 5 x 5 slices and shifted by its offset, ORed together. The same
    # cells as walking each neighbour's table row, without its 27 reads (all levels of the
    # 373 k-point dense surface: 240 -> 62 ms, one thread). An absent neighbour (M) reads
    # the empty shape at the end.
    padded = np.zeros(m + 1, dtype=np.int64)
    padded[:m] = shapes
    out = np.empty((m, N_PASSES), dtype=FEATURE_DTYPE)

    def work(start: int, stop: int) -> None:
        _features_kernel(table, padded, DIRECTIONS, NORMS, SPREAD_STEPS, _SLICE_SPREAD,
                         _ROW_MOMENTS, start, stop, out)

    for_row_slices(work, m, threads)
    return out


def _slice_spread() -> np.ndarray:
    """(512,) int64: a shape's x slice (bit 3 y + z of its 3 x 3 cells) as bits 5 y + z of a
    window slice."""
    out = np.zeros(1 << 9, dtype=np.int64)
    for cells in range(1 << 9):
        for y in range(3):
            for z in range(3):
                if cells >> (3 * y + z) & 1:
                    out[cells] |= 1 << (_SIDE * y + z)
    return out


def _row_moments() -> np.ndarray:
    """(32, 3) int64: a window row's count, sum of z offsets and of their squares, by its
    5-bit mask (bit Z: offset Z - REACH)."""
    out = np.zeros((1 << _SIDE, 3), dtype=np.int64)
    for mask in range(1 << _SIDE):
        for z in range(_SIDE):
            if mask >> z & 1:
                out[mask] += (1, z - REACH, (z - REACH) ** 2)
    return out


_SLICE_SPREAD = _slice_spread()
_ROW_MOMENTS = _row_moments()


@compiled
def _features_kernel(table, shapes, directions, norms, spread_steps, slice_spread, row_moments,
                     start, stop, out):  # pragma: no cover - compiled
    nd = directions.shape[0]
    # the window: slice x (offset + 2), bit 5 y + z (offsets + 2)
    slices = np.zeros(_SIDE, np.int64)
    s1 = np.zeros(nd, np.int64)
    for i in range(start, stop):
        slices[:] = 0
        for a in range(27):  # neighbour a = (ox + 1) * 9 + (oy + 1) * 3 + oz + 1
            shape = shapes[table[i, a]]
            x, at = a // 9, (a // 3) % 3 * _SIDE + a % 3  # its slice 0's x, its (y, z) shift
            slices[x] |= slice_spread[shape & 511] << at
            slices[x + 1] |= slice_spread[(shape >> 9) & 511] << at
            slices[x + 2] |= slice_spread[shape >> 18] << at
        # the window's count, offset sums and sums of products (exact integers), slice by
        # slice, row by row
        n = sx = sy = sz = sxx = syy = szz = sxy = sxz = syz = np.int64(0)
        for x in range(_SIDE):
            cells = slices[x]
            c = y1 = y2 = z1 = z2 = yz = np.int64(0)
            for y in range(_SIDE):
                row = (cells >> (_SIDE * y)) & _ROW_MASK
                dy = y - REACH
                count, zsum = row_moments[row, 0], row_moments[row, 1]
                c += count
                y1 += dy * count
                y2 += dy * dy * count
                z1 += zsum
                z2 += row_moments[row, 2]
                yz += dy * zsum
            dx = x - REACH
            n += c
            sx += dx * c
            sxx += dx * dx * c
            sy += y1
            syy += y2
            sz += z1
            szz += z2
            sxy += dx * y1
            sxz += dx * z1
            syz += yz
        # the least variance (n s2 - s1^2) / (n^2 |n|^2) along a normal, s1 and s2 the
        # projections' sum and sum of squares; cross-multiplied, ties: the first
        best = 0
        best_var = np.int64(0)
        for d in range(nd):
            u, v, w = directions[d, 0], directions[d, 1], directions[d, 2]
            s1[d] = u * sx + v * sy + w * sz
            s2 = u * u * sxx + v * v * syy + w * w * szz + 2 * (u * v * sxy + u * w * sxz
                                                                + v * w * syz)
            var = n * s2 - s1[d] * s1[d]
            if d == 0 or var * norms[best] < best_var * norms[d]:
                best, best_var = d, var
        scale = n * n * norms[best]
        # deviation in child cells = 2 sqrt(variance) >= e / 100
        #   <=> 40000 (n s2 - s1^2) >= e^2 n^2 |n|^2
        spread = 0
        for e in range(spread_steps.size):
            if 40000 * best_var >= spread_steps[e] * spread_steps[e] * scale:
                spread = e + 1
        u, v, w = directions[best, 0], directions[best, 1], directions[best, 2]
        for j in range(N_PASSES):
            # child j's centre is (b - 1/2) / 2 parent cells from the node's, b its place
            # (x, y, z) = bits 2, 1, 0 of j; its distance from the plane in child cells is
            # (n.(2b - 1) / 4 - s1 / n) x 2 / |n| = a / (2 n |n|):
            a = n * (u * (2 * ((j >> 2) & 1) - 1) + v * (2 * ((j >> 1) & 1) - 1)
                     + w * (2 * (j & 1) - 1)) - 4 * s1[best]
            # bucket q = round(4 |distance|): q >= t <=> 16 a^2 >= (2t - 1)^2 n^2 |n|^2
            a2 = 16 * a * a
            q = 0
            for t in range(1, DISTANCE_BUCKETS):
                if a2 >= (2 * t - 1) * (2 * t - 1) * scale:
                    q = t
                else:
                    break
            out[i, j] = ((q * 2 + (a > 0)) * SPREADS + spread) * nd + best
