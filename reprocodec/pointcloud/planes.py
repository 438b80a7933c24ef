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
from .octree import morton_decode
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


def level_features(neighbours: np.ndarray, codes: np.ndarray, threads: int = 1) -> np.ndarray:
    """(M, 8) FEATURE_DTYPE plane feature of each child (column k: child k) of a level's
    nodes, from its (M, 27) neighbour table (octree.neighbour_table: int32, M where empty)
    and the nodes' sorted Morton codes; on `threads` threads (slices of nodes: the same
    values)."""
    table = np.ascontiguousarray(neighbours)
    m = codes.size
    if table.shape != (m, 27) or table.dtype != np.int32:
        raise ValueError("plane features need the level's (M, 27) int32 neighbour table")
    coords = morton_decode(codes)
    out = np.empty((m, N_PASSES), dtype=FEATURE_DTYPE)

    def work(start: int, stop: int) -> None:
        _features_kernel(table, coords, DIRECTIONS, NORMS, SPREAD_STEPS, start, stop, out)

    for_row_slices(work, m, threads)
    return out


@compiled
def _features_kernel(table, coords, directions, norms, spread_steps, start, stop,
                     out):  # pragma: no cover - compiled
    m = table.shape[0]
    nd = directions.shape[0]
    seen = np.zeros(_SIDE * _SIDE * _SIDE, np.bool_)
    s1 = np.zeros(nd, np.int64)
    s2 = np.zeros(nd, np.int64)
    for i in range(start, stop):
        seen[:] = False
        cx, cy, cz = coords[i, 0], coords[i, 1], coords[i, 2]
        # the window's count, offset sums and sums of products (exact integers)
        n = sx = sy = sz = sxx = syy = szz = sxy = sxz = syz = np.int64(0)
        for a in range(27):
            near = table[i, a]
            if near == m:
                continue
            for b in range(27):
                t = table[near, b]
                if t == m:
                    continue
                dx, dy, dz = coords[t, 0] - cx, coords[t, 1] - cy, coords[t, 2] - cz
                cell = ((dx + REACH) * _SIDE + dy + REACH) * _SIDE + dz + REACH
                if seen[cell]:
                    continue
                seen[cell] = True
                n += 1
                sx += dx
                sy += dy
                sz += dz
                sxx += dx * dx
                syy += dy * dy
                szz += dz * dz
                sxy += dx * dy
                sxz += dx * dz
                syz += dy * dz
        for d in range(nd):  # the projections' sum and sum of squares along each normal
            u, v, w = directions[d, 0], directions[d, 1], directions[d, 2]
            s1[d] = u * sx + v * sy + w * sz
            s2[d] = u * u * sxx + v * v * syy + w * w * szz + 2 * (u * v * sxy + u * w * sxz
                                                                   + v * w * syz)
        # the least variance (n s2 - s1^2) / (n^2 |n|^2), cross-multiplied; ties: the first
        best = 0
        for d in range(1, nd):
            if (n * s2[d] - s1[d] * s1[d]) * norms[best] < \
                    (n * s2[best] - s1[best] * s1[best]) * norms[d]:
                best = d
        spread_num = n * s2[best] - s1[best] * s1[best]
        # deviation in child cells = 2 sqrt(variance) >= e / 100
        #   <=> 40000 spread_num >= e^2 n^2 |n|^2
        spread = 0
        for e in range(spread_steps.size):
            if 40000 * spread_num >= spread_steps[e] * spread_steps[e] * n * n * norms[best]:
                spread = e + 1
        u, v, w = directions[best, 0], directions[best, 1], directions[best, 2]
        for j in range(N_PASSES):
            # child j's centre is (b - 1/2) / 2 parent cells from the node's, b its place
            # (x, y, z) = bits 2, 1, 0 of j; its distance from the plane in child cells is
            # (n.(2b - 1) / 4 - s1 / n) x 2 / |n| = a / (2 n |n|):
            a = n * (u * (2 * ((j >> 2) & 1) - 1) + v * (2 * ((j >> 1) & 1) - 1)
                     + w * (2 * (j & 1) - 1)) - 4 * s1[best]
            # bucket q = round(4 |distance|): q >= t <=> 16 a^2 >= (2t - 1)^2 n^2 |n|^2
            q = 0
            for t in range(1, DISTANCE_BUCKETS):
                if 16 * a * a >= (2 * t - 1) * (2 * t - 1) * n * n * norms[best]:
                    q = t
                else:
                    break
            out[i, j] = ((q * 2 + (a > 0)) * SPREADS + spread) * nd + best
