"""Refined learned probabilities: the model's protected grid index, adapted to this stream.

The learned model is trained once; a given cloud's statistics differ a little (a smoother
surface, another density). This adaptive probability map (an "APM" / secondary estimation)
corrects the model's probability per stream, with integers only:

    grid index g (0..2K, protected) -> bucket position g / SPACING, between buckets lo, lo + 1
    P(bit = 0) = the two buckets' values interpolated with integer weights
    after the bit: the nearer bucket moves 2^-RATE of the way towards the bit

The buckets start at the shipped CDF table's probabilities (no adaptation = the model's
own probability at the bucket centres). Encoder and decoder walk the same bits in the same
coding order (learned levels, pass-major), so the probabilities are equal on both sides by
construction: nothing here is a float, nothing to protect. The refined bits are coded with
the adaptive coder's binary rANS (adaptive.encode); the encoder keeps whichever of the static
and the refined coding is smaller (codec.py), so refining never costs bits.
"""

from __future__ import annotations

import numpy as np

from .. import entropy
from ..kernels import compiled
from . import adaptive
from .grid import GRID_K

SPACING = 12  # grid indices between buckets: 2K = 384 = 32 * 12, so 33 buckets
BUCKETS = 2 * GRID_K // SPACING + 1
RATE = 6  # each update moves the nearer bucket 1/64 of the way to the bit
FRACTION = 6  # buckets hold P(0) in 2^-(16 + FRACTION) units
_ONE = 1 << adaptive._PRECISION
_STATIC_ONE = 1 << entropy.PRECISION  # the static CDF table's total


def initial_buckets(f0_table: np.ndarray) -> np.ndarray:
    """(BUCKETS,) int64: the shipped table's P(0) at each bucket's grid index."""
    f0 = np.asarray(f0_table, dtype=np.int64)
    if f0.size != 2 * GRID_K + 1:
        raise ValueError(f"a CDF table of {f0.size} rows, not {2 * GRID_K + 1}")
    return f0[np.arange(BUCKETS) * SPACING] << FRACTION


@entropy.jit_inline
def _probability(buckets, g):  # pragma: no cover - compiled
    """P(0) in 1/2^16 of grid row g, and the bucket its bit updates."""
    lo = min(g // SPACING, BUCKETS - 2)
    w = g - lo * SPACING
    p = ((SPACING - w) * buckets[lo] + w * buckets[lo + 1]) // SPACING
    f0 = min(max(p >> FRACTION, np.int64(1)), np.int64(_ONE - 1))
    nearer = lo if 2 * w < SPACING else lo + 1
    return f0, nearer


@entropy.jit_inline
def _update(buckets, j, bit):  # pragma: no cover - compiled
    target = np.int64(0) if bit else np.int64(_ONE << FRACTION)
    buckets[j] += (target - buckets[j]) >> RATE  # arithmetic shift: floor, on both sides


@compiled
def _walk_kernel(rows, bits, buckets, f0_out):  # pragma: no cover - compiled
    """The encoder's walk: each bit's P(0), then the update."""
    for i in range(rows.size):
        f0, j = _probability(buckets, np.int64(rows[i]))
        f0_out[i] = f0
        _update(buckets, j, bits[i])


@compiled
def _costs_kernel(bits, index, buckets, f0_table, length):  # pragma: no cover - compiled
    """The walk, summing each bit's code length (entropy.code_length_table) under its refined
    probability instead, and beside it under the static table's (one pass over the bits)."""
    static = np.int64(0)
    refined = np.int64(0)
    for i in range(index.size):
        g = np.int64(index[i]) + GRID_K
        bit = bits[i]
        p = f0_table[g]
        static += length[_STATIC_ONE - p] if bit else length[p]
        f0, j = _probability(buckets, g)
        refined += length[_ONE - f0] if bit else length[f0]
        _update(buckets, j, bit)
    return static, refined


@compiled
def _decode_kernel(words, state, rows, buckets, out):  # pragma: no cover - compiled
    """Decode out.size bits at state = [x, pos] (adaptive.Decoder's), updating the buckets as
    the encoder did. Returns adaptive._OK or _EARLY_END; never reads outside words."""
    x = np.uint64(state[0])
    pos = np.int64(state[1])
    for i in range(rows.size):
        f0, j = _probability(buckets, np.int64(rows[i]))
        bit, x, pos = adaptive._decode_bit(words, x, pos, f0)
        if pos < 0:
            state[0] = x
            state[1] = np.uint64(words.size)
            return adaptive._EARLY_END
        _update(buckets, j, bit)
        out[i] = bit
    state[0] = x
    state[1] = np.uint64(pos)
    return adaptive._OK


def encode(bits: np.ndarray, rows: np.ndarray, f0_table: np.ndarray) -> bytes:
    """rANS bytes of the learned bits (coding order) under refined probabilities of their
    CDF-table rows (grid index + K)."""
    b = np.ascontiguousarray(bits, dtype=np.uint8)
    r = np.asarray(rows)
    if b.shape != r.shape or (r.size and (r.min() < 0 or r.max() > 2 * GRID_K)):
        raise ValueError("refined coding needs one CDF row in 0..2K per bit")
    r = np.ascontiguousarray(r, dtype=np.int16)  # 0..2K: checked above
    f0 = np.empty(r.size, dtype=adaptive.F0_DTYPE)
    _walk_kernel(r, b, initial_buckets(f0_table), f0)
    return adaptive.encode(b, f0)


def code_lengths(bits: np.ndarray, index: np.ndarray, buckets: np.ndarray,
                 f0_table: np.ndarray) -> tuple[int, int]:
    """Ideal code lengths of bits (coding order) with clamped grid indices `index` (|i| <= K)
    under the static CDF table's P(0) (f0_table, 2K + 1 rows) and under refined probabilities,
    in units of 2^-entropy.COST_FRACTION bits, walking `buckets` (updated in place, as coding
    them would): the encoder's choice only, exact integers."""
    b = np.asarray(bits)
    if b.dtype != np.bool_:
        b = b != 0  # any non-zero value is a 1 bit, as coder._code_length counts it
    i = np.asarray(index)
    if b.ndim != 1 or b.shape != i.shape or (i.size and (i.min() < -GRID_K
                                                          or i.max() > GRID_K)):
        raise ValueError("refined pricing needs one grid index in -K..K per bit (1-D)")
    f0 = np.ascontiguousarray(f0_table, dtype=np.int64)
    if f0.size != 2 * GRID_K + 1:
        raise ValueError(f"a CDF table of {f0.size} rows, not {2 * GRID_K + 1}")
    static, refined = _costs_kernel(b, i, buckets, f0, entropy.code_length_table())
    return int(static), int(refined)


class Decoder(adaptive.LenientDecoder):
    """The refined learned stream being decoded, pass by pass (coder.decompress), with the
    entropy.Decoder interface: decode(rows) -> bits, finish(), and lenient=True (benchmarks)
    yields zeros once the stream breaks off instead of raising."""

    label = "refined occupancy data"

    def __init__(self, data: bytes, f0_table: np.ndarray, lenient: bool = False):
        super().__init__(data, lenient)
        self.buckets = initial_buckets(f0_table)

    def decode(self, rows) -> np.ndarray:
        r = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        out = np.zeros(r.size, dtype=np.int32)
        if self.failed:
            return out
        if r.size and (r.min() < 0 or r.max() > 2 * GRID_K):
            raise ValueError("a CDF row outside the grid")  # the decoder's own indices: a bug
        return self._checked(_decode_kernel(self.words, self.state, r, self.buckets, out), out)
