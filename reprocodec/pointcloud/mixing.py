"""Mixed learned probabilities: refine.py's adapted model probability mixed with count-based
models of the coded child's neighbourhood.

The learned model was trained on organic meshes; on machined parts (large flat faces) and
scan-like clouds a cell's exact neighbourhood repeats far more often than the model expects.
A count-based context model learns those repeats within the stream, and a small online
logistic mixer weighs it against the refined model probability, per pass:

    fine context of child k of a node = k and its 26 child-level neighbours, each empty (its
        parent-level node is empty, or a child < k that is 0), occupied (a child < k that is 1)
        or not decoded yet; hashed to context_bits(points) bits
    coarse context = k and which of the node's 27 parent-level neighbours exist (the local
        shape one level up: a face, an edge, a corner); hashed to coarse_bits(points) bits
    count models, one per context kind: two P(0) per context, each moving 1/(n + 1.5) of the
        way to each bit, n the context's bits so far capped at COUNT_LIMITS (a fast one that
        follows the last bits, a slow one that averages)
    mixer: P(0) = squash(w_k . (stretch(refined P(0)), stretch of the four count P(0), 1)),
        and the weights w_k of pass k move along the error after each bit (1/2^16 of it)

Version 2 (format 7, payload "occupancy_mixed_v2") adds what the neighbour coder's version 2
added to its mixer, and one input of the model's own:
    node model = a third count model (fast and slow P(0)) of the node context
        (nodecontext.py: the parent's byte, the child's place in it, its node's children
        decoded so far), a direct index
    static input = stretch of the shipped CDF table's P(0) at the bit's grid row (the model's
        probability before refinement: refine's buckets blur it over 12 rows)
    weights: 9 inputs, moving 1/2^17 of the error (half as fast)
    APM = one map per pass and count of the node's occupied children so far, P(0) at 33
        knots of the mixer's logit; the coded P(0) is the mean of the mixer's and the map's
On the held-out CAD meshes the whole stream is 1.6-2.3 % smaller than under version 1 (the
turbine 0.5593 -> 0.5501 bits a point, fandisk_large 0.4850 -> 0.4736), the aerial tile's
1.1 %, for 25-35 ns more a bit in the walk and the decoder (the turbine's walk: 86-102 ns
a bit against 63-68, one thread, two runs of a /tmp script).

Version 3 (format 8, payload "occupancy_mixed_v3") is version 2 followed by a second stage
that knows where the child lies against its node's wider neighbourhood's plane:
    plane model = a count model (fast and slow P(0)) of the pass and the child's plane
        feature (planes.py: its distance from the plane that the level's nodes within 2
        cells fit, that plane's spread and normal), a direct index
    stage 2: P(0) = squash(v_k . (stretch(version 2's coded P(0)), the plane model's two
        stretched P(0), 1)), its per-pass weights starting as version 2's P(0) alone and
        moving 1/2^PLANE_LEARNING_SHIFT of the error
A face's place inside a node is what a machined part's first pass of each level lacks: no
child of the level is decoded before it (planes.py has the numbers).
Version 1 (format 4-6) is the same code with those off, compiled apart: its integers, and
its streams, are unchanged.

Everything is integer arithmetic: squash interpolates a table of integer literals, stretch is
its exact integer inverse (computed here from those integers, the same on every machine), and
every shift is an arithmetic (floor) shift on int64. Encoder and decoder walk the same bits
in the same coding order (learned levels, pass-major), so the probabilities are equal on both
sides by construction: nothing here is a float, nothing to protect. The contexts come from
the decoder's own integers (neighbour tables and bits already decoded), never from stream
bytes, and index a table sized from the header's point count (at most 2^22). The bits are
coded with the adaptive coder's binary rANS (adaptive.encode). The encoder keeps the mixed
coding only when it is smaller than the refined one (codec.py), so mixing never costs bits.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from .. import entropy
from ..kernels import compiled
from . import adaptive, nodecontext, planes, refine
from .context import N_PASSES, WINDOW, WINDOW_CHILD, WINDOW_NEIGHBOUR
from .grid import GRID_K
from .nodecontext import NODE_MASK, POP_SHIFT
from .rowslices import for_row_slices
from .vectorops import PREFETCH_AHEAD, prefetch

# P(0) in 2^-16 at logits -12, -11.5, .. 12 (round(65536 / (1 + e^-x)), written out: a table
# computed here with the platform's exp could differ by an ulp between machines)
_SQUASH_KNOTS = np.array([
    0, 1, 1, 2, 3, 5, 8, 13, 22, 36, 60, 98, 162, 267, 439, 720, 1179, 1921, 3108, 4971, 7812,
    11955, 17625, 24743, 32768, 40793, 47911, 53581, 57724, 60565, 62428, 63615, 64357, 64816,
    65097, 65269, 65374, 65438, 65476, 65500, 65514, 65523, 65528, 65531, 65533, 65534, 65535,
    65535, 65536], dtype=np.int64)
LOGIT_ONE = 256  # stretch values are logits in 1/256
_KNOT_SHIFT = 7  # knots every 128 units (half a logit)
LOGIT_LIMIT = (_SQUASH_KNOTS.size - 1) // 2 << _KNOT_SHIFT  # |logit| <= 12 (3072 units)
_ONE = 1 << adaptive._PRECISION
_HALF = _ONE // 2  # the count tables hold P(0) - 1/2: zeros are a fresh context

# The two count probabilities' rates stop falling at 1 / (limit + 1.5): 1/2.5 and 1/61.5
# (fastest and slowest of the pairs tried on the held-out CAD meshes and the LiDAR sweep:
# 1.1-2.7 % fewer bits than one probability at 1/16.5; bench notes in the commit)
COUNT_LIMITS = (1, 60)
COUNT_LIMIT = max(COUNT_LIMITS)  # a context's count saturates here
_COUNT_RATE = (131072 // (2 * np.arange(COUNT_LIMIT + 1) + 3)).astype(np.int64)  # 2^16/(n+1.5)
_FAST, _SLOW = COUNT_LIMITS
# A context's P(0) q (in 2^-16) starts at 1/2 and moves towards 0 or 2^16 by _count's
# q += floor((target - q) rate / 2^16), 0 < rate < 2^16: towards 2^16 it stays below 2^16,
# towards 0 it stops at 0, so q is 0 .. 2^16 - 1 and q - 1/2 fits 16 bits exactly (the tables
# hold it in half the memory of int32, the same integers: 5 bytes a context instead of 9).
PROBABILITY_DTYPE = np.int16
SHAPE_DTYPE = np.uint32  # a node's shape: 27 bits, one per parent-level neighbour
VERSIONS = (1, 2, 3)  # the mixer of format 4's payload, of format 7's and of format 8's
INPUTS = 6  # stretched refined P(0), fine fast / slow, coarse fast / slow, a constant
# version 2 adds the node model's fast / slow P(0) (nodecontext.py) and the shipped table's
# P(0) at the bit's grid row (the model's own, before refinement), stretched
INPUTS_V2 = INPUTS + 3
_BIAS_INPUT = LOGIT_ONE
_WEIGHT_ONE = 1 << 16
WEIGHT_LIMIT = 1 << 24  # |weight| <= 256: dot products stay far inside int64
LEARNING_SHIFT = 16  # weight step = input * error >> 16 (weights in 2^-16, errors in 2^-16)
LEARNING_SHIFT_V2 = 17  # version 2's weights move half as fast (more inputs)
# The APM (an adaptive probability map; the neighbour coder's too): P(0) at 33 knots of the
# mixer's logit over [-8, 8] (steps of 128 units: half a logit), interpolated between the two
# knots around it, each moving 1/64 of the way to each bit in proportion to its interpolation
# weight. Version 2 keeps one per pass and count of the node's occupied children so far
# (nodecontext.py) and codes the mean of the mixer's P(0) and the map's.
APM_KNOTS = 33
_APM_STEP_SHIFT = 7
_APM_REACH = (APM_KNOTS - 1) << (_APM_STEP_SHIFT - 1)  # 2048: |logit| clipped below it
_APM_RATE_SHIFT = 13  # with the interpolation weight (up to 128): 1/64
APM_ROWS = N_PASSES * N_PASSES
# Version 3's second stage: version 2's coded P(0), the plane model's fast and slow P(0)
# (stretched) and a constant; its weights move 1/2^19 of the error, rounded (fandisk_large's
# mixed payload 6.77 % smaller than version 2's, ideal code lengths; 2^-18: 6.72 %, 2^-20:
# 6.69 %; floored as version 2's steps are, 3.28 %)
PLANE_INPUTS = 4
PLANE_LEARNING_SHIFT = 19
_PLANE_ROUND = 1 << (PLANE_LEARNING_SHIFT - 1)
MIN_CONTEXT_BITS, MAX_CONTEXT_BITS = 12, 22
MAX_COARSE_BITS = 20  # coarse contexts are fewer (2^27 neighbour patterns, most never seen)
_FINE_MASK = (1 << 32) - 1  # a context value: fine | coarse << 32
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of ctx * this


def context_bits(points: int) -> int:
    """Bits of the count model's hashed context of a cloud of `points` voxels (from its
    header, so the decoder sizes the table as the encoder did): 8-16 contexts a point, at
    most 2^22 (4 M contexts, 20 MB; the coarse table at most 5 MB beside it)."""
    return int(min(max((8 * max(points, 1)).bit_length(), MIN_CONTEXT_BITS), MAX_CONTEXT_BITS))


def coarse_bits(points: int) -> int:
    """Bits of the coarse hashed context (at most 2^20: 5 MB)."""
    return min(context_bits(points), MAX_COARSE_BITS)


def _squash_all() -> np.ndarray:
    """squash(x) for x = -LOGIT_LIMIT .. LOGIT_LIMIT (integers: the knots interpolated)."""
    x = np.arange(-LOGIT_LIMIT, LOGIT_LIMIT + 1, dtype=np.int64) + LOGIT_LIMIT
    i = np.minimum(x >> _KNOT_SHIFT, _SQUASH_KNOTS.size - 2)
    lo, hi = _SQUASH_KNOTS[i], _SQUASH_KNOTS[i + 1]
    return lo + (((hi - lo) * (x - (i << _KNOT_SHIFT))) >> _KNOT_SHIFT)


SQUASH = _squash_all()  # index x + LOGIT_LIMIT
# stretch(p) = the least x with squash(x) >= p: squash's integer inverse, p = 0 .. 2^16
STRETCH = (np.searchsorted(SQUASH, np.arange(_ONE + 1), side="left") - LOGIT_LIMIT).astype(
    np.int64)


def _inner_cells() -> np.ndarray:
    """The 26 cells around the coded child among context.py's 5 x 5 x 5 window cells (offsets
    -2..2 per axis, x-major): offsets -1..1 but (0, 0, 0), in x-major order."""
    r = np.arange(-(WINDOW // 2), WINDOW // 2 + 1)
    offsets = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.flatnonzero(np.abs(offsets).max(axis=1) == 1)


# For pass k and each of the 26 child-level neighbours of child k: which of the node's 27
# parent-level neighbours holds it and which child of that neighbour it is (the model's own
# window maps, restricted to those cells)
CELL_SLOT = WINDOW_NEIGHBOUR[:, _inner_cells()]
CELL_CHILD = WINDOW_CHILD[:, _inner_cells()]
_POWERS = 3 ** np.arange(27, dtype=np.int64)
_ABSENT = 256  # a neighbour's children byte where the neighbour does not exist


def _pass_slot_tables() -> tuple[np.ndarray, np.ndarray]:
    """The fine context's base-3 number by parts: pass k's 26 cells lie in 8 of the node's
    parent-level neighbours (PASS_SLOTS[k]: the 2 x 2 x 2 around child k); SLOT_PARTS[k, j,
    byte] is what the cells in neighbour PASS_SLOTS[k, j] add, by that neighbour's children
    byte (bit c: child c; _ABSENT where it does not exist): bit x 3^c for a cell decoded (a
    child < k), 2 x 3^c for one not decoded yet, 0 for every cell of an absent neighbour.
    Eight table reads a bit instead of 26 cells (the dense surface's contexts, one thread:
    112 -> 34 ms to encode, 111 -> 39 ms to decode)."""
    slots = np.zeros((N_PASSES, 8), dtype=np.int64)
    parts = np.zeros((N_PASSES, 8, _ABSENT + 1), dtype=np.int64)
    byte = np.arange(_ABSENT)
    for k in range(N_PASSES):
        used = np.unique(CELL_SLOT[k])
        if used.size != 8:
            raise AssertionError(f"pass {k}'s cells lie in {used.size} neighbours, not 8")
        slots[k] = used
        for j, slot in enumerate(used):
            for c in np.flatnonzero(CELL_SLOT[k] == slot):
                child = CELL_CHILD[k, c]
                parts[k, j, :_ABSENT] += (byte >> child & 1) * _POWERS[c] if child < k else \
                    2 * _POWERS[c]
    return slots, parts


PASS_SLOTS, SLOT_PARTS = _pass_slot_tables()


@entropy.jit_inline
def _fine_hash(ctx, shift):  # pragma: no cover - compiled
    """A fine context's base-3 number, hashed to 64 - shift bits."""
    return np.int64((np.uint64(ctx) * _HASH) >> np.uint64(shift))


@compiled
def _contexts_kernel(neighbours, shapes, children_of, k, pass_slots, slot_parts, shift,
                     coarse_shift, start, stop, out):  # pragma: no cover - compiled
    """Contexts of child k of nodes start .. stop - 1. Fine: cell c of child k is 0 empty, 1
    occupied, 2 not decoded yet, weighted by 3^c (a base-3 number < 8 * 3^26 < 2^45 with k on
    top: exact), then hashed; summed by the 8 neighbours the cells lie in (SLOT_PARTS, from
    each one's children byte children_of[node]: only children < k are read). Coarse: bit s
    set when parent-level neighbour s exists (27 bits: shapes, one per node for every pass),
    times 8, plus k, then hashed."""
    m = neighbours.shape[0]
    for i in range(start, stop):
        ctx = np.int64(k) * _POWERS[26]
        for j in range(8):
            node = np.int64(neighbours[i, pass_slots[k, j]])
            ctx += slot_parts[k, j, np.int64(children_of[node]) if node != m else _ABSENT]
        out[i] = _fine_hash(ctx, shift) | (coarse_of(shapes[i], k, coarse_shift) << 32)


@compiled
def _shapes_kernel(neighbours, m, base, start, stop, out):  # pragma: no cover - compiled
    """The shapes of nodes start .. stop - 1 of a level of m nodes (absent = m), node i's
    table row at neighbours[i - base]."""
    for i in range(start, stop):
        shape = np.int64(0)
        for s in range(27):
            shape |= np.int64(neighbours[i - base, s] != m) << s
        out[i] = shape


def neighbour_shapes(neighbours: np.ndarray) -> np.ndarray:
    """(M,) SHAPE_DTYPE: bit s set when node i's parent-level neighbour s exists (absent = M), the
    coarse context's shape; the same for every pass of the level (pass_contexts' `shapes`)."""
    table = np.ascontiguousarray(neighbours)
    if table.ndim != 2 or table.shape[1] != 27:
        raise ValueError("shapes need an (M, 27) neighbour table")
    m = table.shape[0]
    out = np.empty(m, dtype=SHAPE_DTYPE)
    _shapes_kernel(table, np.int64(m), np.int64(0), np.int64(0), np.int64(m), out)
    return out


def pass_contexts(neighbours: np.ndarray, bits: np.ndarray, k: int, points: int,
                  out: np.ndarray | None = None, shapes: np.ndarray | None = None,
                  threads: int = 1) -> np.ndarray:
    """(M,) int64 count-model contexts of child k of every node of a level, fine | coarse << 32
    (both hashed): its (M, 27) neighbour table (absent = M) and the (M, 8) children decoded
    so far (only children < k are read). The encoder passes the level's true bits: the same
    values. Into `out` when given (a contiguous (M,) int64 array); `shapes`: the table's
    neighbour_shapes, when the caller keeps them for the level's eight passes; on `threads`
    threads (slices of nodes: each row reads only bits decoded before this pass, the same
    values)."""
    table = np.ascontiguousarray(neighbours)
    b = np.ascontiguousarray(bits, dtype=np.bool_)
    if table.ndim != 2 or table.shape[1] != 27 or b.shape != (table.shape[0], 8):
        raise ValueError("contexts need an (M, 27) neighbour table and (M, 8) bits")
    if not 0 <= k < 8:
        raise ValueError(f"pass {k} outside 0..7")
    if out is None:
        out = np.empty(table.shape[0], dtype=np.int64)
    elif out.shape != (table.shape[0],) or out.dtype != np.int64 or not out.flags.c_contiguous:
        raise ValueError("contexts go to a contiguous (M,) int64 array")
    if shapes is None:
        shapes = neighbour_shapes(table)
    elif shapes.shape != (table.shape[0],) or shapes.dtype != SHAPE_DTYPE:
        raise ValueError(f"one {np.dtype(SHAPE_DTYPE).name} shape per node")
    shift, coarse_shift = np.int64(64 - context_bits(points)), np.int64(64 - coarse_bits(points))
    children_of = children_bytes(b)

    def work(start: int, stop: int) -> None:
        with np.errstate(over="ignore"):  # the hash's uint64 product wraps (numpy, no numba)
            _contexts_kernel(table, shapes, children_of, np.int64(k), PASS_SLOTS, SLOT_PARTS,
                             shift, coarse_shift, np.int64(start), np.int64(stop), out)

    for_row_slices(work, table.shape[0], threads)
    return out


def count_tables(points: int) -> tuple[np.ndarray, ...]:
    """The fine and the coarse count model's fresh tables for a cloud of `points` voxels:
    counts (uint8, <= COUNT_LIMIT) and the fast and slow P(0) less 1/2 (PROBABILITY_DTYPE,
    -2^15 .. 2^15 - 1) of each context, fine then coarse (mixing's and neighbour.py's
    models). All zeros: the pages of a large table cost no memory until a context is used."""
    tables = []
    for size in (1 << context_bits(points), 1 << coarse_bits(points)):
        tables += [np.zeros(size, dtype=np.uint8),
                   np.zeros((size, 2), dtype=PROBABILITY_DTYPE)]
    return tuple(tables)


@entropy.jit_inline
def coarse_of(shape, k, coarse_shift):  # pragma: no cover - compiled
    """The hashed coarse context of pass k of a node of this shape."""
    return np.int64((np.uint64(np.int64(shape) * 8 + k) * _HASH) >> np.uint64(coarse_shift))


@compiled
def _level_kernel(neighbours, m, base, children_of, pass_slots, slot_parts, shift, start, stop,
                  out):  # pragma: no cover - compiled
    """The fine contexts of all eight passes of nodes start .. stop - 1 of a level of m nodes
    whose bits are all known (the encoder), into their places in the pass-major uint32 `out`;
    node i's table row at neighbours[i - base] (_contexts_kernel's, each node's neighbours'
    children bytes read once)."""
    near = np.zeros(27, np.int64)
    for i in range(start, stop):
        for s in range(27):
            node = np.int64(neighbours[i - base, s])
            near[s] = np.int64(children_of[node]) if node != m else _ABSENT
        for k in range(8):
            ctx = np.int64(k) * _POWERS[26]
            for j in range(8):
                ctx += slot_parts[k, j, near[pass_slots[k, j]]]
            out[k * m + i] = np.uint32(_fine_hash(ctx, shift))


# Eight 0/1 bytes (child c in byte c of a little-endian uint64) times this: child c lands in
# bit 56 + c, one term each, no carries
_GATHER_BYTES = np.uint64(0x0102040810204080)


def children_bytes(bits: np.ndarray) -> np.ndarray:
    """(M,) uint8: each node's (M, 8) bits as one byte, bit c child c (the contexts' reads).
    A node's eight bools read as one uint64 and gathered by a multiplication: np.packbits
    along rows took 25 times as long (1.6 ms a 100 k-node level, once a pass in the
    decoder: 17 ms of the LiDAR sweep's 123 ms decode)."""
    rows = np.ascontiguousarray(bits, dtype=np.bool_)
    if sys.byteorder != "little" or rows.ndim != 2 or rows.shape[1] != 8:
        return np.packbits(rows, axis=1, bitorder="little").reshape(-1)
    return ((rows.view(np.uint64).reshape(-1) * _GATHER_BYTES) >> np.uint64(56)).astype(np.uint8)


def level_contexts(neighbours: np.ndarray, bits: np.ndarray, points: int, threads: int = 1
                   ) -> LevelContexts:
    """The contexts of a level's bits, pass-major: pass_contexts of each pass, from the level's
    true bits (what the decoder computes pass by pass from the bits it decoded), each node's
    shape computed once; on `threads` threads (slices of nodes: the same values)."""
    rows = LevelContextRows(neighbours, bits, points)
    for_row_slices(rows.of_nodes, rows.nodes, threads)
    return rows.contexts


class LevelContexts(NamedTuple):
    """A level's contexts as the encoder keeps them, pass-major (bit i is child i // M of node
    i % M): each bit's fine context and each node's shape (neighbour_shapes), from which a
    bit's coarse context is hashed where it is read (coarse_of: the pass and the shape). 4.5
    bytes a bit where the packed contexts (fine | coarse << 32, what pass_contexts gives the
    decoder and the mixer reads) take 8: a scan's encoder holds two large levels' at once (the
    one walked and the next, made meanwhile)."""

    fine: np.ndarray  # (8 M,) uint32
    shapes: np.ndarray  # (M,) SHAPE_DTYPE
    points: int  # the cloud's, which sizes the hashes

    @property
    def size(self) -> int:
        return self.fine.size

    def packed(self) -> np.ndarray:
        """(8 M,) int64 fine | coarse << 32: pass_contexts of each pass, concatenated."""
        out = np.empty(self.fine.size, dtype=np.int64)
        _packed_kernel(self.fine, self.shapes, np.int64(64 - coarse_bits(self.points)), out)
        return out

    def checked(self, points: int) -> LevelContexts:
        """Itself, checked for a model of a cloud of `points` voxels to index its tables with
        unchecked (ValueError otherwise): made for tables of its size, one uint32 fine context
        a bit inside them and one 27-bit shape a node."""
        fine, shapes = self.fine, self.shapes
        if context_bits(self.points) != context_bits(points) or \
                coarse_bits(self.points) != coarse_bits(points):
            raise ValueError("contexts made for another cloud's tables")
        if fine.dtype != np.uint32 or shapes.dtype != SHAPE_DTYPE or fine.ndim != 1 or \
                fine.size != N_PASSES * shapes.size or not fine.flags.c_contiguous or \
                not shapes.flags.c_contiguous:
            raise ValueError("contexts need 8 contiguous uint32 fine contexts a node and one "
                             f"{np.dtype(SHAPE_DTYPE).name} shape")
        if fine.size and (int(fine.max()) >= 1 << context_bits(points)
                          or int(shapes.max()) >= 1 << 27):
            raise ValueError("a context out of range")
        return self


@compiled
def _packed_kernel(fine, shapes, coarse_shift, out):  # pragma: no cover - compiled
    m = shapes.size
    for k in range(N_PASSES):
        for j in range(m):
            out[k * m + j] = np.int64(fine[k * m + j]) | (coarse_of(shapes[j], k, coarse_shift)
                                                           << 32)


@entropy.jit_inline
def level_context(fine, shapes, coarse_shift, k, j):  # pragma: no cover - compiled
    """The packed context (fine | coarse << 32) of child k of node j, from a LevelContexts'
    arrays (the walks loop over passes and nodes: no division a bit)."""
    return np.int64(fine[k * shapes.size + j]) | (coarse_of(shapes[j], k, coarse_shift) << 32)


class LevelContextRows:
    """level_contexts in pieces: `contexts` (made on the caller's thread) gets the contexts of
    nodes start .. stop - 1 from of_nodes(start, stop), any slices in any order on any
    threads. A node's contexts read its own table row and the level's bits only, so a slice
    may run as soon as its rows of the table are made (the encoder's next level, made ahead
    in slices of parents: codec._LevelAhead). Made without the level's table (neighbours
    None), each slice brings its own rows instead (of_nodes' `rows`): the table need never
    exist whole."""

    def __init__(self, neighbours: np.ndarray | None, bits: np.ndarray, points: int) -> None:
        level_bits = np.ascontiguousarray(bits, dtype=np.bool_)
        self.nodes = level_bits.shape[0]
        self.table = None if neighbours is None else np.ascontiguousarray(neighbours)
        if level_bits.shape != (self.nodes, 8) or \
                (self.table is not None and self.table.shape != (self.nodes, 27)):
            raise ValueError("contexts need an (M, 27) neighbour table and (M, 8) bits")
        self._children = children_bytes(level_bits)
        self.contexts = LevelContexts(np.empty(8 * self.nodes, dtype=np.uint32),
                                      np.empty(self.nodes, dtype=SHAPE_DTYPE), points)
        self._shift = np.int64(64 - context_bits(points))

    def of_nodes(self, start: int, stop: int, rows: np.ndarray | None = None) -> None:
        """`rows`: the table rows of nodes start .. stop - 1 (rows[0] node start's), where
        this was made without the level's table."""
        table, base = (self.table, 0) if rows is None else (rows, start)
        if table is None or not 0 <= start <= stop <= self.nodes or \
                table.ndim != 2 or table.shape[1] != 27 or table.shape[0] < stop - base:
            raise ValueError(f"no table rows for nodes {start} .. {stop - 1}")
        first, last, m = np.int64(start), np.int64(stop), np.int64(self.nodes)
        shapes = self.contexts.shapes
        _shapes_kernel(table, m, np.int64(base), first, last, shapes)  # the rows' shapes
        with np.errstate(over="ignore"):  # the hash's uint64 product wraps (numpy, no numba)
            _level_kernel(table, m, np.int64(base), self._children, PASS_SLOTS, SLOT_PARTS,
                          self._shift, first, last, self.contexts.fine)


class Model:
    """The mixer's whole state (refine's buckets, the fine and the coarse count model, the
    mixer's weights; version 2's node model, APM and shipped-table logits), as integer
    arrays the kernels update in place (5 bytes a context, its two probabilities side by side
    in one cache line: 20 + 5 MB at most, and 2.6 MB for version 2's node model)."""

    def __init__(self, f0_table: np.ndarray, points: int, version: int = 2):
        if version not in VERSIONS:
            raise ValueError(f"mixing version {version} is not one of {VERSIONS}")
        self.buckets = refine.initial_buckets(f0_table)
        (self.counts, self.probability, self.coarse_counts,
         self.coarse_probability) = count_tables(points)
        extended = version >= 2  # version 1 never reads version 2's arrays, nor 2 version 3's
        nodes = nodecontext.NODE_CONTEXTS if extended else 1
        self.node_counts = np.zeros(nodes, dtype=np.uint8)
        self.node_probability = np.zeros((nodes, 2), dtype=PROBABILITY_DTYPE)
        self.weights = np.zeros((N_PASSES, INPUTS_V2 if extended else INPUTS), dtype=np.int64)
        self.weights[:, 0] = _WEIGHT_ONE  # start as the refined probability alone
        self.apm = apm_identity(APM_ROWS if extended else 1)
        self.static = static_logits(f0_table) if extended else np.zeros(1, np.int64)
        contexts = planes.CONTEXTS if version == 3 else 1
        self.plane_counts = np.zeros(contexts, dtype=np.uint8)
        self.plane_probability = np.zeros((contexts, 2), dtype=PROBABILITY_DTYPE)
        self.plane_weights = np.zeros((N_PASSES, PLANE_INPUTS), dtype=np.int64)
        self.plane_weights[:, 0] = _WEIGHT_ONE  # start as version 2's coded P(0) alone
        self.points, self.version = points, version

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.buckets, self.counts, self.probability, self.coarse_counts,
                self.coarse_probability, self.node_counts, self.node_probability,
                self.weights, self.apm, self.static, self.plane_counts,
                self.plane_probability, self.plane_weights)

    def kernels(self) -> tuple:
        """This version's (walk, decode) kernels."""
        return _KERNELS[self.version]


def static_logits(f0_table: np.ndarray) -> np.ndarray:
    """(2K + 1,) int64: stretch of the shipped CDF table's P(0) at each grid row (version 2's
    input of the model's own, unrefined probability; a lookup in exact integers)."""
    f0 = np.asarray(f0_table, dtype=np.int64)
    if f0.size != 2 * GRID_K + 1:
        raise ValueError(f"a CDF table of {f0.size} rows, not {2 * GRID_K + 1}")
    return STRETCH[np.clip(f0, 1, _ONE - 1)]


def apm_identity(rows: int) -> np.ndarray:
    """(rows, APM_KNOTS) int64: adaptive probability maps that start as the identity (each
    knot the squash of its logit)."""
    knots = SQUASH[np.arange(-_APM_REACH, _APM_REACH + 1, 1 << _APM_STEP_SHIFT) + LOGIT_LIMIT]
    return np.tile(knots.astype(np.int64), (rows, 1))


@entropy.jit_inline
def apm_map(apm, row, logit):  # pragma: no cover - compiled
    """Map `row`'s P(0) at a logit (1/256): the two knots around it interpolated; returns
    (P(0) in 2^-16, the knot below, its neighbour's interpolation weight) for apm_learn."""
    at = min(max(logit, -_APM_REACH + 1), _APM_REACH - 1) + _APM_REACH
    knot, weight = at >> _APM_STEP_SHIFT, at & ((1 << _APM_STEP_SHIFT) - 1)
    mapped = (apm[row, knot] * ((1 << _APM_STEP_SHIFT) - weight)
              + apm[row, knot + 1] * weight) >> _APM_STEP_SHIFT
    return mapped, knot, weight


@entropy.jit_inline
def apm_learn(apm, row, knot, weight, target):  # pragma: no cover - compiled
    """After a bit: the two knots apm_map read move towards it, each by its own weight."""
    step = 1 << _APM_STEP_SHIFT
    apm[row, knot] += ((target - apm[row, knot]) * (step - weight)) >> _APM_RATE_SHIFT
    apm[row, knot + 1] += ((target - apm[row, knot + 1]) * weight) >> _APM_RATE_SHIFT


@entropy.jit_inline
def _squash(x):  # pragma: no cover - compiled
    return SQUASH[min(max(x, -LOGIT_LIMIT), LOGIT_LIMIT) + LOGIT_LIMIT]


@entropy.jit_inline
def _count_inputs(probability, ctx, inputs, first):  # pragma: no cover - compiled
    """inputs[first], inputs[first + 1]: a context's fast and slow P(0), stretched."""
    for j in range(2):
        q = np.int64(probability[ctx, j]) + _HALF
        inputs[first + j] = STRETCH[min(max(q, np.int64(1)), np.int64(_ONE - 1))]


@entropy.jit_inline
def _mixed(buckets, probability, coarse_probability, node_probability, weights, apm, static,
           extended, g, ctx, extra, k, inputs):  # pragma: no cover - compiled
    """P(0) in 2^-16 (1 .. 2^16 - 1) of a bit with grid row g, context ctx (fine | coarse <<
    32) and extra (nodecontext's), in pass k: (the coded P(0), the mixer's, the refine bucket
    its bit updates, its APM row, the APM knot below and its interpolation weight); fills
    `inputs` for _learn. Not extended (version 1): six inputs, no APM (the coded P(0) is the
    mixer's)."""
    f0, nearer = refine._probability(buckets, g)
    inputs[0] = STRETCH[f0]
    _count_inputs(probability, ctx & _FINE_MASK, inputs, 1)
    _count_inputs(coarse_probability, ctx >> 32, inputs, 3)
    inputs[5] = _BIAS_INPUT
    n = INPUTS
    if extended:
        _count_inputs(node_probability, extra & NODE_MASK, inputs, 6)
        inputs[8] = static[g]
        n = INPUTS_V2
    dot = np.int64(0)
    for j in range(n):
        dot += weights[k, j] * inputs[j]
    logit = dot >> 16
    p = min(max(_squash(logit), np.int64(1)), np.int64(_ONE - 1))
    if not extended:
        return p, p, nearer, np.int64(0), np.int64(0), np.int64(0)
    row = N_PASSES * k + (extra >> POP_SHIFT)
    mapped, knot, weight = apm_map(apm, row, logit)
    coded = min(max((p + mapped) >> 1, np.int64(1)), np.int64(_ONE - 1))
    return coded, p, nearer, row, knot, weight


@entropy.jit_inline
def _count(counts, probability, ctx, target):  # pragma: no cover - compiled
    """A context's fast and slow probability move towards the bit; its count grows."""
    n = np.int64(counts[ctx])
    q = np.int64(probability[ctx, 0]) + _HALF
    probability[ctx, 0] = q + (((target - q) * _COUNT_RATE[min(n, _FAST)]) >> 16) - _HALF
    q = np.int64(probability[ctx, 1]) + _HALF
    probability[ctx, 1] = q + (((target - q) * _COUNT_RATE[min(n, _SLOW)]) >> 16) - _HALF
    counts[ctx] = min(n + 1, COUNT_LIMIT)


@entropy.jit_inline
def _learn(buckets, counts, probability, coarse_counts, coarse_probability, node_counts,
           node_probability, weights, apm, extended, nearer, ctx, extra, k, inputs, p, row,
           knot, weight, bit):  # pragma: no cover - compiled
    """After a bit: refine's bucket, the count models, pass k's weights (along the mixer's
    error: p is the mixer's P(0)) and, extended, the APM's two knots."""
    refine._update(buckets, nearer, bit)
    target = np.int64(0) if bit else np.int64(_ONE)
    _count(counts, probability, ctx & _FINE_MASK, target)
    _count(coarse_counts, coarse_probability, ctx >> 32, target)
    n, shift = INPUTS, LEARNING_SHIFT
    if extended:
        _count(node_counts, node_probability, extra & NODE_MASK, target)
        apm_learn(apm, row, knot, weight, target)
        n, shift = INPUTS_V2, LEARNING_SHIFT_V2
    error = target - p
    for j in range(n):
        w = weights[k, j] + ((inputs[j] * error) >> shift)
        weights[k, j] = min(max(w, -WEIGHT_LIMIT), WEIGHT_LIMIT)


@entropy.jit_inline
def _plane_stage(plane_probability, plane_weights, coded, ctx, k,
                 inputs):  # pragma: no cover - compiled
    """Version 3's P(0) (1 .. 2^16 - 1) of a bit that version 2 codes at P(0) `coded`, its
    plane model's context ctx, in pass k; fills `inputs` for _plane_learn."""
    inputs[0] = STRETCH[coded]
    _count_inputs(plane_probability, ctx, inputs, 1)
    inputs[3] = _BIAS_INPUT
    dot = np.int64(0)
    for j in range(PLANE_INPUTS):
        dot += plane_weights[k, j] * inputs[j]
    return min(max(_squash(dot >> 16), np.int64(1)), np.int64(_ONE - 1))


@entropy.jit_inline
def _plane_learn(plane_counts, plane_probability, plane_weights, ctx, k, inputs, p,
                 bit):  # pragma: no cover - compiled
    """After a bit: the plane model's context and pass k's stage-2 weights (p: its P(0))."""
    target = np.int64(0) if bit else np.int64(_ONE)
    _count(plane_counts, plane_probability, ctx, target)
    error = target - p
    for j in range(PLANE_INPUTS):
        # rounded, not floored: at this small a rate most steps are under one unit, and a
        # floor's -1 on each negative one pulls the weights down over millions of bits
        w = plane_weights[k, j] + ((inputs[j] * error + _PLANE_ROUND) >> PLANE_LEARNING_SHIFT)
        plane_weights[k, j] = min(max(w, -WEIGHT_LIMIT), WEIGHT_LIMIT)


@entropy.jit_inline
def _prefetch_ahead(contexts, i, counts, probability, coarse_counts,
                    coarse_probability):  # pragma: no cover - compiled
    """Hint the cache at the table entries of the context PREFETCH_AHEAD bits after bit i
    (vectorops.prefetch: no value changes)."""
    if i + PREFETCH_AHEAD < contexts.size:
        ctx = np.int64(contexts[i + PREFETCH_AHEAD])
        prefetch(counts, ctx & _FINE_MASK)
        prefetch(probability, ctx & _FINE_MASK)
        prefetch(coarse_counts, ctx >> 32)
        prefetch(coarse_probability, ctx >> 32)


@entropy.jit_inline
def prefetch_level_ahead(fine, shapes, coarse_shift, k, j, counts, probability, coarse_counts,
                         coarse_probability):  # pragma: no cover - compiled
    """_prefetch_ahead for a LevelContexts' arrays, at child k of node j."""
    j += PREFETCH_AHEAD
    while j >= shapes.size and k < N_PASSES:
        j -= shapes.size
        k += 1
    if k < N_PASSES:
        ctx = level_context(fine, shapes, coarse_shift, k, j)
        prefetch(counts, ctx & _FINE_MASK)
        prefetch(probability, ctx & _FINE_MASK)
        prefetch(coarse_counts, ctx >> 32)
        prefetch(coarse_probability, ctx >> 32)


def _version_kernels(extended: bool, planar: bool = False) -> tuple:
    """The encoder's walk and the decoder's kernel of one mixer version (extended: version
    2 or 3; planar: version 3), each a constant of their compiled code (a closure's bool,
    which numba's cache keys on): version 1's do no version 2 work at all, and their integers
    are 0.4.0's; version 2's none of version 3's, their integers 0.7.0's. Both
    share the per-bit steps, _mixed and _learn, inlined. The node model's entries are not
    prefetched: its contexts repeat within a level (a parent byte, a place, the children so
    far), and the hints cost more than the misses they hide (the turbine's walk, one thread:
    113-133 ns a bit with them, 83-95 without; version 1's 57-63; a /tmp scratch kernel)."""

    @compiled
    def walk_kernel(rows, contexts, extras, features, passes, bits, buckets, counts,
                    probability, coarse_counts, coarse_probability, node_counts,
                    node_probability, weights, apm, static, plane_counts, plane_probability,
                    plane_weights, f0_out):  # pragma: no cover - compiled
        """The encoder's walk: each bit's coded P(0) into f0_out, then the updates. Version 1
        reads no extras, versions 1 and 2 no plane features."""
        inputs = np.zeros(INPUTS_V2, np.int64)
        stage = np.zeros(PLANE_INPUTS, np.int64)
        for i in range(rows.size):
            _prefetch_ahead(contexts, i, counts, probability, coarse_counts,
                            coarse_probability)
            k = np.int64(passes[i])
            ctx = np.int64(contexts[i])
            extra = np.int64(extras[i]) if extended else np.int64(0)
            coded, p, nearer, row, knot, weight = _mixed(
                buckets, probability, coarse_probability, node_probability, weights, apm,
                static, extended, np.int64(rows[i]), ctx, extra, k, inputs)
            if planar:
                plane = k * planes.FEATURES + np.int64(features[i])
                coded = _plane_stage(plane_probability, plane_weights, coded, plane, k, stage)
                _plane_learn(plane_counts, plane_probability, plane_weights, plane, k, stage,
                             coded, bits[i])
            f0_out[i] = coded
            _learn(buckets, counts, probability, coarse_counts, coarse_probability,
                   node_counts, node_probability, weights, apm, extended, nearer, ctx, extra,
                   k, inputs, p, row, knot, weight, bits[i])

    @compiled
    def decode_kernel(words, state, rows, contexts, extras, features, k, buckets, counts,
                      probability, coarse_counts, coarse_probability, node_counts,
                      node_probability, weights, apm, static, plane_counts, plane_probability,
                      plane_weights, out):  # pragma: no cover - compiled
        """Decode out.size bits of pass k at state = [x, pos] (adaptive.Decoder's), updating
        the model as the encoder did. Returns adaptive._OK or _EARLY_END; never reads outside
        words."""
        x = np.uint64(state[0])
        pos = np.int64(state[1])
        inputs = np.zeros(INPUTS_V2, np.int64)
        stage = np.zeros(PLANE_INPUTS, np.int64)
        plane = np.int64(0)
        for i in range(rows.size):
            _prefetch_ahead(contexts, i, counts, probability, coarse_counts,
                            coarse_probability)
            ctx = np.int64(contexts[i])
            extra = np.int64(extras[i]) if extended else np.int64(0)
            coded, p, nearer, row, knot, weight = _mixed(
                buckets, probability, coarse_probability, node_probability, weights, apm,
                static, extended, np.int64(rows[i]), ctx, extra, k, inputs)
            if planar:
                plane = k * planes.FEATURES + np.int64(features[i])
                coded = _plane_stage(plane_probability, plane_weights, coded, plane, k, stage)
            bit, x, pos = adaptive._decode_bit(words, x, pos, coded)
            if pos < 0:
                state[0] = x
                state[1] = np.uint64(words.size)
                return adaptive._EARLY_END
            if planar:
                _plane_learn(plane_counts, plane_probability, plane_weights, plane, k, stage,
                             coded, bit)
            _learn(buckets, counts, probability, coarse_counts, coarse_probability,
                   node_counts, node_probability, weights, apm, extended, nearer, ctx, extra,
                   k, inputs, p, row, knot, weight, bit)
            out[i] = bit
        state[0] = x
        state[1] = np.uint64(pos)
        return adaptive._OK

    return walk_kernel, decode_kernel


# (walk, decode) by version
_KERNELS = {1: _version_kernels(False), 2: _version_kernels(True),
            3: _version_kernels(True, True)}


@compiled
def _context_range(contexts):  # pragma: no cover - compiled
    """The least context, and the largest fine and coarse halves (one pass, no temporaries)."""
    least = np.int64(0)
    fine = np.int64(0)
    coarse = np.int64(0)
    for i in range(contexts.size):
        c = np.int64(contexts[i])
        least = min(least, c)
        fine = max(fine, c & _FINE_MASK)
        coarse = max(coarse, c >> 32)
    return least, fine, coarse


def _check_contexts(contexts: np.ndarray, points: int) -> None:
    """Both halves of every context inside their tables (ValueError otherwise); contexts: a
    contiguous int64 array."""
    if contexts.size:
        least, fine, coarse = _context_range(contexts)
        if least < 0 or fine >= 1 << context_bits(points) or coarse >= 1 << coarse_bits(points):
            raise ValueError("a context out of range")


def probabilities(bits: np.ndarray, rows: np.ndarray, contexts: np.ndarray,
                  passes: np.ndarray, f0_table: np.ndarray, points: int,
                  extras: np.ndarray | None = None, version: int = 2,
                  features: np.ndarray | None = None) -> np.ndarray:
    """Each bit's mixed P(0) (uint16, coding order), walking a fresh Model of `version` over
    the bits: what encode() codes them with, and what the encoder prices. Versions 2 and 3
    need each bit's extra (nodecontext.level_extras of each level, in coding order), version
    3 each bit's plane feature too (planes.level_features, in coding order)."""
    return walk(Model(f0_table, points, version), bits, rows, contexts, passes, extras,
                features)


def checked_features(features: np.ndarray | None, size: int, version: int) -> np.ndarray:
    """Plane features as version 3's kernels read them unchecked: one FEATURE_DTYPE a bit,
    each below planes.FEATURES (ValueError otherwise); versions 1 and 2 read none."""
    if version < 3:
        return np.zeros(0, dtype=planes.FEATURE_DTYPE)
    if features is None or features.shape != (size,) or \
            features.dtype != planes.FEATURE_DTYPE:
        raise ValueError("the plane model needs one uint16 plane feature per bit")
    f = np.ascontiguousarray(features)
    if f.size and int(f.max()) >= planes.FEATURES:
        raise ValueError("a plane feature outside the plane model's table")
    return f


def walk(m: Model, bits: np.ndarray, rows: np.ndarray, contexts: np.ndarray,
         passes: np.ndarray, extras: np.ndarray | None = None,
         features: np.ndarray | None = None) -> np.ndarray:
    """probabilities() on a Model walked on: bits walked in pieces, in order, each from where
    the one before left the model, get the P(0)s of one walk over all of them."""
    points = m.points
    b = np.ascontiguousarray(bits, dtype=np.uint8)
    r, c, k = np.asarray(rows), np.asarray(contexts), np.asarray(passes)
    if not b.shape == r.shape == c.shape == k.shape or b.ndim != 1:
        raise ValueError("mixing needs one row, context and pass per bit (1-D)")
    if r.size and (r.min() < 0 or r.max() > 2 * GRID_K or k.min() < 0 or k.max() > 7):
        raise ValueError("a CDF row, context or pass out of range")
    c = np.ascontiguousarray(c, dtype=np.int64)
    _check_contexts(c, points)
    e = nodecontext.checked_extras(extras, b.size, min(m.version, 2))
    f = checked_features(features, b.size, m.version)
    # Narrow types, checked in range above: a 2.4 M-point cloud has ~7 M learned bits
    r = np.ascontiguousarray(r, dtype=np.int16)
    k = np.ascontiguousarray(k, dtype=np.uint8)
    f0 = np.empty(r.size, dtype=adaptive.F0_DTYPE)
    walk, _ = m.kernels()
    walk(r, c, e, f, k, b, *m.arrays(), f0)
    return f0


class Walked(NamedTuple):
    """A Model walked over the first f0.size bits of a coding, left where that walk ended, and
    those bits' P(0)s (what walk() gave)."""

    model: Model
    f0: np.ndarray


def encode(bits: np.ndarray, rows: np.ndarray, contexts: np.ndarray, passes: np.ndarray,
           f0_table: np.ndarray, points: int, extras: np.ndarray | None = None,
           version: int = 2, features: np.ndarray | None = None,
           walked: Walked | None = None) -> bytes:
    """rANS bytes of the learned bits (coding order) under mixed probabilities: their CDF-table
    rows (grid index + K), count-model contexts (pass_contexts), passes and, versions 2 and 3,
    node extras (nodecontext.py), version 3 plane features (planes.py). `walked`: the model
    walked over the first walked.f0.size bits already (the encoder's pricing walk); rows,
    contexts, passes, extras and features are then those of the bits after them only, and
    only those are walked, on that model (a walk in pieces: the same P(0)s)."""
    if walked is None:
        f0 = probabilities(bits, rows, contexts, passes, f0_table, points, extras, version,
                           features)
    else:
        model, before = walked
        if model.version != version or model.points != points or before.size > bits.size:
            raise ValueError("a walked model of another mixer, cloud or coding")
        f0 = np.concatenate([before, walk(model, bits[before.size:], rows, contexts, passes,
                                          extras, features)])
    return adaptive.encode(np.ascontiguousarray(bits, dtype=np.uint8), f0)


class Decoder(adaptive.LenientDecoder):
    """The mixed learned stream being decoded, pass by pass (coder.decompress): decode(rows,
    contexts, k, extras) -> bits, finish(); lenient=True (benchmarks) yields zeros once the
    stream breaks off instead of raising."""

    label = "mixed occupancy data"

    def __init__(self, data: bytes, f0_table: np.ndarray, points: int, lenient: bool = False,
                 version: int = 2):
        super().__init__(data, lenient)
        self.model = Model(f0_table, points, version)
        self.points = points

    def decode(self, rows, contexts, k: int, extras: np.ndarray | None = None,
               features: np.ndarray | None = None) -> np.ndarray:
        r = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        c = np.ascontiguousarray(contexts, dtype=np.int64).reshape(-1)
        out = np.zeros(r.size, dtype=np.int32)
        if self.failed:
            return out
        if r.size and (r.min() < 0 or r.max() > 2 * GRID_K or c.shape != r.shape
                       or not 0 <= k < 8):
            raise ValueError("a CDF row, context or pass out of range")  # the decoder's own
        _check_contexts(c, self.points)
        e = nodecontext.checked_extras(extras, r.size, min(self.model.version, 2))
        f = checked_features(features, r.size, self.model.version)
        _, decode = self.model.kernels()
        code = decode(self.words, self.state, r, c, e, f, np.int64(k), *self.model.arrays(),
                      out)
        return self._checked(code, out)
