"""Voxelization and the octree: Morton codes, occupancy per level, and its inverse.

Nodes of level l are cubes of side 2^(D-l) voxels, identified by the Morton code of their
level-l integer coordinates. Within a level they are kept sorted by Morton code; a node's
children then follow their parent's order, child index c = 4*bx + 2*by + bz, so the decoder
rebuilds exactly the encoder's order from the occupancy bits alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..kernels import compiled, numba
from .rowslices import for_row_slices

MIN_DEPTH, MAX_DEPTH, DEFAULT_DEPTH = 1, 16, 10
CHILD_OFFSETS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=np.int64)
# The 27 parent-level neighbour offsets (self at index 13), in a fixed order.
NEIGHBOUR_OFFSETS = np.array(
    [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)], dtype=np.int64
)


# _spread's (shift, mask) steps; _compact runs them backwards
_SPREAD_STEPS = ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                 (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249))
_LOW_21 = 0x1FFFFF


def _spread(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the bits of each value (up to 21 bits)."""
    v = v.astype(np.uint64) & np.uint64(_LOW_21)
    for shift, mask in _SPREAD_STEPS:
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact(v: np.ndarray) -> np.ndarray:
    """The inverse of _spread: every third bit of uint64 values, in place (v is overwritten:
    one temporary at a time instead of a new array per step)."""
    masks = [mask for _, mask in _SPREAD_STEPS] + [_LOW_21]  # each step's mask, then none
    v &= np.uint64(masks[-2])
    for step in range(len(_SPREAD_STEPS) - 1, -1, -1):  # step i undone: shift, then mask i - 1
        v |= v >> np.uint64(_SPREAD_STEPS[step][0])
        v &= np.uint64(masks[step - 1])
    return v


def morton_encode(coords: np.ndarray) -> np.ndarray:
    """(N, 3) non-negative integer coordinates -> (N,) int64 Morton codes (x most significant).
    Compiled: numpy's dozen whole-array steps took ~33 ns a point."""
    c = np.asarray(coords)
    if numba is not None and c.ndim == 2 and c.shape[1] == 3 and c.dtype.kind in "iu":
        code = np.empty(c.shape[0], dtype=np.int64)
        _morton_encode_kernel(np.ascontiguousarray(c), code)
        return code
    code = (_spread(c[:, 0]) << np.uint64(2)) | (_spread(c[:, 1]) << np.uint64(1)) | _spread(
        c[:, 2]
    )
    return code.astype(np.int64)


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """(N,) Morton codes -> (N, 3) int64 coordinates, written a column at a time (no stacked
    uint64 copy to convert)."""
    u = np.asarray(codes, dtype=np.int64).view(np.uint64)  # codes are non-negative: same bits
    coords = np.empty((u.size, 3), dtype=np.int64)
    if numba is not None:
        _morton_decode_kernel(np.ascontiguousarray(u).reshape(-1), coords)
        return coords
    for axis, shift in enumerate((2, 1, 0)):
        coords[:, axis] = _compact(u >> np.uint64(shift))  # < 2^21: exact in int64
    return coords


if numba is not None:
    _S1, _S2, _S3, _S4, _S5 = (np.uint64(shift) for shift, _ in _SPREAD_STEPS)
    _M1, _M2, _M3, _M4, _M5 = (np.uint64(mask) for _, mask in _SPREAD_STEPS)
    _M0 = np.uint64(_LOW_21)
    _ONE, _TWO = np.uint64(1), np.uint64(2)

    @compiled(inline="always")
    def _spread_one(v):  # pragma: no cover - compiled
        v &= _M0
        v = (v | (v << _S1)) & _M1
        v = (v | (v << _S2)) & _M2
        v = (v | (v << _S3)) & _M3
        v = (v | (v << _S4)) & _M4
        return (v | (v << _S5)) & _M5

    @compiled(inline="always")
    def _compact_one(v):  # pragma: no cover - compiled
        v &= _M5
        v = (v | (v >> _S5)) & _M4
        v = (v | (v >> _S4)) & _M3
        v = (v | (v >> _S3)) & _M2
        v = (v | (v >> _S2)) & _M1
        return (v | (v >> _S1)) & _M0

    @compiled
    def _morton_encode_kernel(coords, code):  # pragma: no cover - compiled
        for i in range(coords.shape[0]):
            code[i] = np.int64((_spread_one(np.uint64(coords[i, 0])) << _TWO)
                               | (_spread_one(np.uint64(coords[i, 1])) << _ONE)
                               | _spread_one(np.uint64(coords[i, 2])))

    @compiled
    def _morton_decode_kernel(codes, coords):  # pragma: no cover - compiled
        for i in range(codes.size):
            coords[i, 0] = np.int64(_compact_one(codes[i] >> _TWO))
            coords[i, 1] = np.int64(_compact_one(codes[i] >> _ONE))
            coords[i, 2] = np.int64(_compact_one(codes[i]))


def check_depth(depth: int) -> int:
    if not isinstance(depth, (int, np.integer)) or not MIN_DEPTH <= depth <= MAX_DEPTH:
        raise InputError(f"octree depth must be an integer in {MIN_DEPTH}..{MAX_DEPTH}, "
                         f"got {depth!r} (8-12 are typical; 10 is the default)")
    return int(depth)


@dataclass(frozen=True)
class Voxelized:
    voxels: np.ndarray  # (N, 3) int64, unique, sorted lexicographically (x, y, z)
    origin: tuple[float, float, float]
    scale: float  # world = origin + voxel * scale


def voxelize(points: np.ndarray, depth: int) -> Voxelized:
    """Snap points onto a 2^depth grid. Integer points already inside [0, 2^depth) keep their
    coordinates (origin 0, scale 1) so integer voxel files round-trip unchanged; anything else
    is scaled so the longest bounding-box side spans the grid."""
    depth = check_depth(depth)
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array, got shape {pts.shape}")
    if pts.dtype.kind not in "iuf":
        raise InputError(f"points must be numbers, got dtype {pts.dtype}")
    side = 1 << depth
    if pts.shape[0] == 0:
        return Voxelized(np.zeros((0, 3), np.int64), (0.0, 0.0, 0.0), 1.0)
    if pts.dtype.kind in "iu" and pts.min() >= 0 and pts.max() < side:
        return Voxelized(sort_voxels(pts), (0.0, 0.0, 0.0), 1.0)  # int64 rows, no copy first
    pts = pts.astype(np.float64)
    if not np.all(np.isfinite(pts)):
        raise InputError("points contain NaN or infinite coordinates")
    # Per column: numpy's axis-0 reductions of an (N, 3) array stride through it, ~10x as
    # long (8 of the 18 ms of voxelizing 150k points). The same values: min and max are exact.
    origin = np.array([pts[:, axis].min() for axis in range(3)])
    extent = float(max(pts[:, axis].max() - origin[axis] for axis in range(3)))
    scale = extent / (side - 1) if extent > 0 else 1.0
    scaled = pts - origin  # the same operations as before, in place: one temporary
    scaled /= scale
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, side - 1, out=scaled)
    return Voxelized(sort_voxels(scaled.astype(np.int64)), tuple(float(o) for o in origin),
                     scale)


def sort_voxels(voxels: np.ndarray) -> np.ndarray:
    """Unique rows, sorted by (x, y, z): the canonical voxel-set order, as int64 (integer
    coordinates in [0, 2^21) of any integer dtype)."""
    if voxels.shape[0] == 0:
        return voxels.reshape(0, 3).astype(np.int64)
    # The key built, sorted and deduplicated in place, the rows written a column at a time:
    # at most two key-sized arrays besides the input (np.unique and np.stack copy more).
    key = voxels[:, 0].astype(np.int64) << 42
    key |= voxels[:, 1].astype(np.int64) << 21
    key |= voxels[:, 2].astype(np.int64)
    key.sort()
    first = np.empty(key.size, dtype=bool)
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    key = key[first]
    del first
    mask = (1 << 21) - 1
    out = np.empty((key.size, 3), dtype=np.int64)
    out[:, 0] = key >> 42
    out[:, 1] = (key >> 21) & mask
    out[:, 2] = key & mask
    return out


def build_levels(voxels: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Encoder side. Returns (codes, bits): codes[l] are the sorted Morton codes of the occupied
    nodes of level l (l = 0..depth-1), bits[l] their (M_l, 8) child occupancy."""
    leaf = np.unique(morton_encode(voxels))
    codes, bits = [], []
    child = leaf
    for level in range(depth - 1, -1, -1):
        # The children are sorted, so their parents are too: one pass groups them (np.unique
        # sorted every level again, and the occupancy took three index arrays)
        parents = np.empty(child.size, dtype=np.int64)
        occupancy = np.zeros((child.size, 8), dtype=bool)
        m = _parents_kernel(child, parents, occupancy.view(np.uint8))
        parents, occupancy = parents[:m].copy(), occupancy[:m].copy()
        codes.append(parents)
        bits.append(occupancy)
        child = parents
        del level
    return codes[::-1], bits[::-1]


@compiled
def _parents_kernel(child, parents, occupancy):  # pragma: no cover - compiled
    """The distinct parents (code >> 3) of sorted child codes, in order, and each one's
    children (occupancy[i, code & 7] = 1); returns their count."""
    m = -1
    for i in range(child.size):
        parent = child[i] >> 3
        if m < 0 or parent != parents[m]:
            m += 1
            parents[m] = parent
        occupancy[m, child[i] & 7] = 1
    return m + 1


def children(codes: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """Decoder side: the sorted Morton codes of the next level from this level's occupancy
    ((M, 8) bool, child c the code's low 3 bits)."""
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    occupancy = np.ascontiguousarray(occupancy, dtype=bool)
    if occupancy.shape != (codes.size, 8):
        raise ValueError(f"occupancy {occupancy.shape} for {codes.size} codes")
    out = np.empty(int(np.count_nonzero(occupancy)), dtype=np.int64)
    _children_kernel(codes, occupancy.view(np.uint8), out)
    return out


@compiled
def _children_kernel(codes, occupancy, out):  # pragma: no cover - compiled
    """(codes[:, None] << 3 | c)[occupancy] in one pass, without the (M, 8) int64 array."""
    n = 0
    for i in range(codes.size):
        for c in range(8):
            if occupancy[i, c]:
                out[n] = (codes[i] << 3) | c
                n += 1


def neighbour_table(codes: np.ndarray, level: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(M, 27) index of each node's parent-level neighbour in `codes` (sorted, unique), or M
    where empty; with rows, only those nodes' rows (R, 27). int32 (M <= 2^25 here): half the
    memory of the largest array a level needs."""
    m = codes.size
    rows = np.arange(m) if rows is None else np.asarray(rows, dtype=np.int64)
    coords = morton_decode(codes[rows])
    table = np.full((rows.size, 27), m, dtype=np.int32)
    table[:, 13] = rows  # (offset 0: the node itself)
    side = 1 << level
    if side == 1:  # the root's level: no other cell (26 searches a level-0 table took 0.25 ms)
        return table
    for j, offset in enumerate(NEIGHBOUR_OFFSETS):
        if j == 13:
            continue
        q = coords + offset
        inside = np.all((q >= 0) & (q < side), axis=1)
        qc = morton_encode(np.where(inside[:, None], q, 0))
        pos = np.minimum(np.searchsorted(codes, qc), m - 1)
        found = inside & (codes[pos] == qc)
        table[found, j] = pos[found]
    return table


def _child_maps() -> tuple[np.ndarray, np.ndarray]:
    """For child c of a node and neighbour offset j: which of the parent's 27 neighbours holds
    that neighbour (map_j) and which child of it it is (map_b)."""
    map_j = np.zeros((8, 27), np.int64)
    map_b = np.zeros((8, 27), np.int64)
    for c in range(8):
        s = CHILD_OFFSETS[c] + NEIGHBOUR_OFFSETS  # child-level offset from the parent's child 0
        d = np.floor_divide(s, 2)  # parent-level offset, -1..1
        b = s - 2 * d
        map_j[c] = (d[:, 0] + 1) * 9 + (d[:, 1] + 1) * 3 + (d[:, 2] + 1)
        map_b[c] = b[:, 0] * 4 + b[:, 1] * 2 + b[:, 2]
    return map_j, map_b


CHILD_NEIGHBOUR, CHILD_POSITION = _child_maps()


# How many occupied children of a node byte (bit c: child c) come before child b.
OCCUPIED_BEFORE = np.array([[bin(byte & ((1 << b) - 1)).count("1") for b in range(8)]
                            for byte in range(256)], dtype=np.int64)


def child_neighbour_table(table: np.ndarray, occupancy: np.ndarray, codes: np.ndarray,
                          level: int, threads: int = 1) -> np.ndarray:
    """neighbour_table(codes, level) of the children `codes` of a level, made from that level's
    own table and occupancy instead of 26 binary searches: a child's neighbour is a child of one
    of its parent's neighbours, and its index is that node's first child index plus the
    occupied children before it. Exact integer work; tests check it equals neighbour_table.
    Slices of parents run on `threads` threads (each writes its own children's rows)."""
    rows = ChildTableRows.of(table, occupancy, codes)
    if rows is None:
        return neighbour_table(codes, level)
    for_row_slices(rows.of_parents, rows.parents, threads)
    return rows.table


class ChildTableRows:
    """child_neighbour_table in pieces: `table` (made on the caller's thread) gets the rows of
    the children of parents start .. stop - 1 from of_parents(start, stop), any slices of the
    parents in any order on any threads; `first[p]`: parent p's first child's row (first[-1]
    the children's count), so a caller can follow each slice with work on its rows. Made
    with whole=False there is no `table` (None): each slice's rows go to an array the caller
    brings (of_parents' `rows`)."""

    def __init__(self, table: np.ndarray, occupancy: np.ndarray, whole: bool = True) -> None:
        occupancy = np.asarray(occupancy, dtype=bool)  # any nonzero is a child, as counted
        # The compiled kernel writes one row per occupied child without bounds checks (into
        # a table sized here by that count) and reads the parents' rows of `table`.
        if numba is None or table.shape[0] != occupancy.shape[0] or \
                occupancy.shape[1:] != (8,) or table.shape[1:] != (27,):
            raise ValueError("child table rows need numba, the parents' (M, 27) table and "
                             "their (M, 8) occupancy")
        self.parents = occupancy.shape[0]
        occupancy = np.ascontiguousarray(occupancy).view(np.uint8)  # bool: 0 or 1
        self._parent_table = table
        self._node_bytes = np.packbits(occupancy, axis=1, bitorder="little")[:, 0]
        self.first = np.zeros(self.parents + 1, dtype=np.int64)
        np.cumsum(occupancy.sum(axis=1, dtype=np.int64), out=self.first[1:])
        self.table = np.empty((int(self.first[-1]), 27), dtype=np.int32) if whole else None

    @classmethod
    def of(cls, table: np.ndarray, occupancy: np.ndarray, codes: np.ndarray,
           whole: bool = True) -> ChildTableRows | None:
        """The pieces, or None where the compiled kernel cannot make them (no numba, or the
        table, occupancy and codes are not of two consecutive levels)."""
        occupancy = np.asarray(occupancy, dtype=bool)
        if (numba is None or table.shape[0] != occupancy.shape[0]
                or occupancy.shape[1:] != (8,) or table.shape[1:] != (27,)
                or int(np.count_nonzero(occupancy)) != codes.size):
            return None
        return cls(table, occupancy, whole)

    def of_parents(self, start: int, stop: int, rows: np.ndarray | None = None) -> None:
        """`rows`: instead of `table`, an (R, 27) int32 array whose row 0 gets the first
        child's of parent start (R at least the slice's children)."""
        out, base = (self.table, 0) if rows is None else (rows, int(self.first[start]))
        if out is None or not 0 <= start <= stop <= self.parents or out.dtype != np.int32 or \
                out.ndim != 2 or out.shape[1] != 27 or \
                out.shape[0] < int(self.first[stop]) - base or not out.flags.c_contiguous:
            raise ValueError(f"no rows for the children of parents {start} .. {stop - 1}")
        _child_table_kernel(self._parent_table, self._node_bytes, self.first, start, stop,
                            CHILD_NEIGHBOUR, CHILD_POSITION, OCCUPIED_BEFORE, base, out)


class LevelTables:
    """The neighbour table of each level in turn, each made from the previous level's when the
    caller asks for consecutive levels (child_neighbour_table, on `threads` threads), else by
    neighbour_table."""

    def __init__(self, threads: int = 1) -> None:
        self.level, self.table = -2, None
        self.threads = threads

    def table_of(self, codes: np.ndarray, level: int, parent_bits: np.ndarray | None
                 ) -> np.ndarray:
        if self.table is not None and self.level == level - 1 and parent_bits is not None:
            table = child_neighbour_table(self.table, parent_bits, codes, level, self.threads)
        else:
            table = neighbour_table(codes, level)
        self.level, self.table = level, table
        return table

    def keep(self, level: int, table: np.ndarray) -> None:
        """`level`'s table, made elsewhere (the encoder's ChildTableRows ahead of the loop), as
        the one the next level's is made from."""
        self.level, self.table = level, table

    def release(self) -> None:
        """Drop the last table (a level's largest array) once no further level needs it."""
        self.level, self.table = -2, None


if numba is not None:
    @compiled
    def _child_table_kernel(table, node_bytes, first, start, stop, map_j, map_b, before,
                            base, out):  # pragma: no cover - compiled
        """Rows first[start] .. first[stop] - 1 of the children's table, the children of
        parents start..stop-1, at out[row - base] (first: each parent's first child index,
        first[-1] the children's count)."""
        mp = node_bytes.shape[0]
        m = first[mp]
        n = first[start]
        for p in range(start, stop):
            byte = node_bytes[p]
            for c in range(8):
                if not (byte >> c) & 1:
                    continue
                for j in range(27):
                    # Branch-free (whether a neighbour exists is as good as random on a sparse
                    # cloud): q is a node or the sentinel mp, read as node mp - 1 and unused
                    q = table[p, map_j[c, j]]
                    b = map_b[c, j]
                    node = min(q, mp - 1)
                    neighbour_byte = node_bytes[node]
                    present = np.int64(q < mp) & ((neighbour_byte >> b) & 1)
                    row = first[node] + before[neighbour_byte, b]
                    out[n - base, j] = m + present * (row - m)
                n += 1
