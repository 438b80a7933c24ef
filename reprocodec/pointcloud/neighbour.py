"""The neighbour coder: a level's child bits under count models of each child's neighbourhood,
mixed, with no network (the third per-level coder, from bitstream format 5).

The adaptive coder (adaptive.py) sees a node's parent byte only; the learned model sees 27
neighbour nodes but costs a network row a bit. This coder uses mixing.py's two count models
(the 26 child-level neighbour cells, empty / occupied / not decoded yet; which of the 27
parent-level neighbours exist) and its integer logistic mixer, without the refined model
input. On scan-like clouds it codes most levels in fewer bits than either other coder (the
LiDAR sweep of `bench/pointcloud.py --clouds`: 3.72 bits a point, where the adaptive coder
alone spends 5.54), at about half a network row's time a bit (~100 ns to encode or decode:
`bench/pointcloud_profile.py "lidar 64x2048"`).

Levels are coded pass-major, as learned levels are (child k of every node, then k + 1), so a
context reads the children < k already decoded. The model's state follows the levels the
stream codes with this coder only, in level order; both sides walk the same bits through the
same integer arithmetic (nothing to protect). Contexts come from the decoder's own neighbour
tables and decoded bits, index tables sized from the header's point count, and the bits go
through the adaptive coder's memory-safe binary rANS.
"""

from __future__ import annotations

import numpy as np

from .. import entropy
from . import adaptive, mixing
from .context import N_PASSES
from .mixing import _FINE_MASK, _ONE, _count, _count_inputs, _squash

try:
    import numba
except ImportError:  # the light client install
    numba = None  # type: ignore[assignment]

INPUTS = 5  # fine fast / slow, coarse fast / slow (stretched P(0)), a constant
_BIAS_INPUT = mixing.LOGIT_ONE
_START_WEIGHT = 1 << 15  # each slow P(0) at 1/2: the first bits follow the two slow models


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


class Model:
    """The coder's state: mixing.py's two count models and a mixer per pass (integers the
    kernels update in place; 9 bytes a context, 36 + 9 MB at most)."""

    def __init__(self, points: int):
        (self.counts, self.probability, self.coarse_counts,
         self.coarse_probability) = mixing.count_tables(points)
        self.weights = np.zeros((N_PASSES, INPUTS), dtype=np.int64)
        self.weights[:, 1] = self.weights[:, 3] = _START_WEIGHT
        self.points = points
        self._backup: tuple[np.ndarray, ...] | None = None  # snapshot's copies of the tables

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.counts, self.probability, self.coarse_counts, self.coarse_probability,
                self.weights)

    def snapshot(self, contexts: np.ndarray) -> tuple:
        """What walking bits of these contexts can change, for restore (encoder: a level
        tried, then not chosen, is undone): the touched entries' values (18 bytes a bit,
        gathered by a compiled kernel), or the whole tables when those are smaller (a large
        level; copied into buffers kept for the next time: one snapshot at a time)."""
        if contexts.size * 18 > (self.counts.size + self.coarse_counts.size) * 9:
            if self._backup is None:
                self._backup = tuple(np.empty_like(a) for a in self.arrays())
            for copy, array in zip(self._backup, self.arrays(), strict=True):
                np.copyto(copy, array)
            return ("tables",)
        counts = np.empty((contexts.size, 2), np.uint8)
        probability = np.empty((contexts.size, 4), np.int32)
        _gather_kernel(contexts, self.counts, self.probability, self.coarse_counts,
                       self.coarse_probability, counts, probability)
        return ("entries", contexts, counts, probability, self.weights.copy())

    def restore(self, saved: tuple) -> None:
        if saved[0] == "tables":
            for array, copy in zip(self.arrays(), self._backup, strict=True):
                np.copyto(array, copy)
            return
        _, contexts, counts, probability, weights = saved
        _scatter_kernel(contexts, self.counts, self.probability, self.coarse_counts,
                        self.coarse_probability, counts, probability)
        self.weights[:] = weights


@_jit
def _gather_kernel(contexts, counts, probability, coarse_counts, coarse_probability,
                   saved_counts, saved_probability):  # pragma: no cover - compiled
    """Each context's fine and coarse count and probabilities, in context order."""
    for i in range(contexts.size):
        fine = contexts[i] & _FINE_MASK
        coarse = contexts[i] >> 32
        saved_counts[i, 0] = counts[fine]
        saved_counts[i, 1] = coarse_counts[coarse]
        saved_probability[i, 0] = probability[fine, 0]
        saved_probability[i, 1] = probability[fine, 1]
        saved_probability[i, 2] = coarse_probability[coarse, 0]
        saved_probability[i, 3] = coarse_probability[coarse, 1]


@_jit
def _scatter_kernel(contexts, counts, probability, coarse_counts, coarse_probability,
                    saved_counts, saved_probability):  # pragma: no cover - compiled
    """_gather_kernel's inverse (a context seen twice has the same saved values twice)."""
    for i in range(contexts.size):
        fine = contexts[i] & _FINE_MASK
        coarse = contexts[i] >> 32
        counts[fine] = saved_counts[i, 0]
        coarse_counts[coarse] = saved_counts[i, 1]
        probability[fine, 0] = saved_probability[i, 0]
        probability[fine, 1] = saved_probability[i, 1]
        coarse_probability[coarse, 0] = saved_probability[i, 2]
        coarse_probability[coarse, 1] = saved_probability[i, 3]


@_jit
def _mixed(probability, coarse_probability, weights, ctx, k, inputs):  # pragma: no cover
    """P(0) in 2^-16 (1 .. 2^16 - 1) of a bit of context ctx (fine | coarse << 32) in pass k;
    fills `inputs` for _learn."""
    _count_inputs(probability, ctx & _FINE_MASK, inputs, 0)
    _count_inputs(coarse_probability, ctx >> 32, inputs, 2)
    inputs[4] = _BIAS_INPUT
    dot = np.int64(0)
    for j in range(INPUTS):
        dot += weights[k, j] * inputs[j]
    p = _squash(dot >> 16)
    return min(max(p, np.int64(1)), np.int64(_ONE - 1))


@_jit
def _learn(counts, probability, coarse_counts, coarse_probability, weights, ctx, k, inputs, p,
           bit):  # pragma: no cover - compiled
    """After a bit: both count models and pass k's weights (mixing._learn without refine)."""
    target = np.int64(0) if bit else np.int64(_ONE)
    _count(counts, probability, ctx & _FINE_MASK, target)
    _count(coarse_counts, coarse_probability, ctx >> 32, target)
    error = target - p
    for j in range(INPUTS):
        w = weights[k, j] + ((inputs[j] * error) >> mixing.LEARNING_SHIFT)
        weights[k, j] = min(max(w, -mixing.WEIGHT_LIMIT), mixing.WEIGHT_LIMIT)


@_jit
def _walk_kernel(contexts, nodes, bits, counts, probability, coarse_counts, coarse_probability,
                 weights, length, f0_out):  # pragma: no cover - compiled
    """The encoder's walk over a level of `nodes` nodes (pass-major: bit i is in pass
    i // nodes): each bit's P(0) into f0_out, then the updates; returns the bits' code length
    (entropy.code_length_table units)."""
    inputs = np.zeros(INPUTS, np.int64)
    total = np.int64(0)
    for i in range(contexts.size):
        k = np.int64(i // nodes)
        ctx = np.int64(contexts[i])
        p = _mixed(probability, coarse_probability, weights, ctx, k, inputs)
        f0_out[i] = p
        bit = bits[i]
        total += length[_ONE - p] if bit else length[p]
        _learn(counts, probability, coarse_counts, coarse_probability, weights, ctx, k, inputs,
               p, bit)
    return total


@_jit
def _decode_kernel(words, state, contexts, k, counts, probability, coarse_counts,
                   coarse_probability, weights, out):  # pragma: no cover - compiled
    """Decode out.size bits of pass k at state = [x, pos] (adaptive.Decoder's), updating the
    model as the encoder did. Returns adaptive._OK or _EARLY_END; never reads outside words."""
    x = np.uint64(state[0])
    pos = np.int64(state[1])
    inputs = np.zeros(INPUTS, np.int64)
    for i in range(contexts.size):
        ctx = np.int64(contexts[i])
        p = _mixed(probability, coarse_probability, weights, ctx, k, inputs)
        bit, x, pos = adaptive._decode_bit(words, x, pos, p)
        if pos < 0:
            state[0] = x
            state[1] = np.uint64(words.size)
            return adaptive._EARLY_END
        _learn(counts, probability, coarse_counts, coarse_probability, weights, ctx, k, inputs,
               p, bit)
        out[i] = bit
    state[0] = x
    state[1] = np.uint64(pos)
    return adaptive._OK


def walk_contexts(model: Model, contexts: np.ndarray, bits: np.ndarray
                  ) -> tuple[np.ndarray, int]:
    """Code one level (encoder), given its contexts (mixing.level_contexts): each bit's P(0)
    (uint16, pass-major, as adaptive.encode takes them) and their code length in
    2^-entropy.COST_FRACTION bits. The model moves on; model.restore(model.snapshot(contexts))
    taken before undoes it."""
    m = bits.shape[0]
    coded = np.ascontiguousarray(np.asarray(bits, dtype=np.uint8).T).reshape(-1)  # pass-major
    if contexts.shape != (N_PASSES * m,) or contexts.dtype != np.int64:
        raise ValueError("one int64 context per bit of the level")
    contexts = np.ascontiguousarray(contexts)
    mixing._check_contexts(contexts, model.points)
    f0 = np.empty(coded.size, dtype=adaptive.F0_DTYPE)
    cost = _walk_kernel(contexts, np.int64(max(m, 1)), coded, *model.arrays(),
                        entropy.code_length_table(), f0)
    return f0, int(cost)


class Decoder(adaptive.LenientDecoder):
    """The neighbour-coded levels' stream being decoded, pass by pass (coder.decompress):
    decode(contexts, k) -> bits, finish(); lenient=True (benchmarks) yields zeros once the
    stream breaks off instead of raising."""

    label = "neighbour occupancy data"

    def __init__(self, data: bytes, points: int, lenient: bool = False):
        super().__init__(data, lenient)
        self.model = Model(points)

    def decode(self, contexts: np.ndarray, k: int) -> np.ndarray:
        c = np.ascontiguousarray(contexts, dtype=np.int64).reshape(-1)
        out = np.zeros(c.size, dtype=np.int32)
        if self.failed:
            return out
        if not 0 <= k < N_PASSES:
            raise ValueError(f"pass {k} outside 0..7")  # the decoder's own
        mixing._check_contexts(c, self.model.points)
        code = _decode_kernel(self.words, self.state, c, np.int64(k), *self.model.arrays(), out)
        return self._checked(code, out)
