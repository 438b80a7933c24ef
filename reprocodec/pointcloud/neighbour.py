"""The neighbour coder: a level's child bits under count models of each child's neighbourhood,
mixed, with no network (the third per-level coder, from bitstream format 5).

The adaptive coder (adaptive.py) sees a node's parent byte only; the learned model sees 27
neighbour nodes but costs a network row a bit. This coder uses mixing.py's two count models
(the 26 child-level neighbour cells, empty / occupied / not decoded yet; which of the 27
parent-level neighbours exist) and its integer logistic mixer, without the refined model
input. On scan-like clouds it codes most levels in fewer bits than either other coder (the
LiDAR sweep of `bench/pointcloud.py --clouds`: 3.72 bits a point, where the adaptive coder
alone spends 5.54), in less than a network row's time a bit (version 2: ~115 ns to encode,
~125 to decode, one thread: `bench/pointcloud_profile.py "lidar 64x2048"`; from 0.7.0, without
the node model's prefetch, ~80 and ~85 on the Intel Xeon 0.6.3 was measured on).

Version 2 (format 6, payload "occupancy_neighbour_v2") adds what a context-mixing coder
usually adds, all integers too: a third count model of the node itself (its parent's byte,
its place in it and its children decoded so far: the adaptive coder's context), mixer
weights chosen by pass and by how many of the node's children so far are occupied, and an
adaptive probability map (APM) after the mixer. The LiDAR sweep's stream is 4.2 % smaller
than version 1's (3.563 bits a point), for about a third more time a bit in the walk and the
decode step. Version 1 (format 5) is the same code with those three off, compiled apart: its
integers, and its streams, are unchanged.

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
from ..kernels import compiled
from . import adaptive, mixing, nodecontext
from .context import N_PASSES
from .mixing import _FINE_MASK, _ONE, _count, _count_inputs, _squash, apm_learn, apm_map
from .nodecontext import NODE_MASK, POP_SHIFT

VERSIONS = (1, 2)  # the model of format 5's payload, and of format 6's
# fine fast / slow, coarse fast / slow, node fast / slow (stretched P(0); the node model's are
# zero in version 1, so its weights never move), a constant
INPUTS = 7
_BIAS_INPUT = mixing.LOGIT_ONE
_START_WEIGHT = 1 << 15  # each slow P(0) at 1/2: the first bits follow the two slow models
# A snapshot lists a level's touched entries in one pass where they are at most 1 / 16 of
# its bits (a LiDAR sweep's large levels: 1-4 %; small levels get room for 1,024), in two
# otherwise
LISTED_PER_BIT = 16
# Version 2's mixer weights: one set per pass and count of the node's occupied children so far
# (version 1: one per pass, set 8 k)
WEIGHT_SETS = 8 * 8
# The APM (mixing.apm_map): one per pass; the coded P(0) is 1/4 the mixer's and 3/4 the map's


class Model:
    """The coder's state: mixing.py's two count models, version 2's node model and APM, and
    the mixer's weight sets (integers the kernels update in place; 5 bytes a context, 20 + 5
    MB at most, and 2.6 MB for the node model)."""

    def __init__(self, points: int, version: int = 2):
        if version not in VERSIONS:
            raise ValueError(f"neighbour coder version {version} is not one of {VERSIONS}")
        (self.counts, self.probability, self.coarse_counts,
         self.coarse_probability) = mixing.count_tables(points)
        nodes = nodecontext.NODE_CONTEXTS if version == 2 else 1  # version 1 never reads them
        self.node_counts = np.zeros(nodes, dtype=np.uint8)
        self.node_probability = np.zeros((nodes, 2), dtype=mixing.PROBABILITY_DTYPE)
        self.weights = np.zeros((WEIGHT_SETS, INPUTS), dtype=np.int64)
        self.weights[:, 1] = self.weights[:, 3] = _START_WEIGHT
        self.apm = mixing.apm_identity(N_PASSES)
        self.points, self.version = points, version
        self._backup: tuple[np.ndarray, ...] | None = None  # snapshot's copies of the tables
        self._marks: tuple[np.ndarray, ...] | None = None  # snapshot's marks, all clear

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.counts, self.probability, self.coarse_counts, self.coarse_probability,
                self.node_counts, self.node_probability, self.weights, self.apm)

    def kernels(self) -> tuple:
        """This version's (walk, decode) kernels."""
        return _KERNELS[self.version]

    def snapshot(self, contexts: mixing.LevelContexts,
                 extras: nodecontext.LevelExtras | None = None) -> tuple:
        """What walking bits of these contexts and extras can change, for restore (encoder: a
        level tried, then not chosen, is undone): the weights, the APM and the count tables'
        entries the contexts touch, each entry once (13 bytes: its index and values), or the
        whole tables where those are fewer bytes (copied into buffers kept for the next time:
        one snapshot at a time). A level's contexts repeat: on a LiDAR sweep's large levels
        1-4 % of the bits touch a new fine entry, so a 5 M-bit level's snapshot takes ~5 MB
        where one entry a bit took 135 MB, and a copy of the tables 52. One pass over the
        contexts (two where the entries outnumber LISTED_PER_BIT of the bits), none over the
        tables (the marks they set, kept here, are all clear between snapshots)."""
        level = contexts.checked(self.points)  # (the kernels index the tables unchecked)
        extras = nodecontext.checked_level_extras(extras, level.shapes.size, self.version)
        extended = self.version == 2
        if self._marks is None:
            self._marks = tuple(np.zeros((a.size + 63) // 64, np.uint64)
                                for a in self.arrays()[0:6:2])
        # Each table's entries, in the order the bits first touch them, listed in one pass
        # where they fit LISTED_PER_BIT of the bits (a scan's large levels: 1-4 %), else in a
        # second pass into arrays of their size (no transient of a bit each)
        arrays = (level.fine, level.shapes, _coarse_shift(self.points), *extras, extended)
        room = max(level.size // LISTED_PER_BIT, 1 << 10)
        listed = tuple(np.empty(min(room, a.size), np.int32) for a in self.arrays()[0:6:2])
        touched = _touched_kernel(*arrays, False, *self._marks, *listed)
        tables = (self.counts.size + self.coarse_counts.size + self.node_counts.size) * \
            (1 + self.probability[0].nbytes)
        whole = 13 * sum(touched) > tables
        if all(n <= entries.size for n, entries in zip(touched, listed, strict=True)):
            listed = tuple(entries[:n].copy() for entries, n in zip(listed, touched, strict=True))
        else:  # the marks were left set: listed again (unless the tables are copied) and cleared
            listed = tuple(np.empty(0 if whole else n, np.int32) for n in touched)
            _touched_kernel(*arrays, True, *self._marks, *listed)
        if whole:
            if self._backup is None:
                self._backup = tuple(np.empty_like(a) for a in self.arrays())
            for copy, array in zip(self._backup, self.arrays(), strict=True):
                np.copyto(copy, array)
            return ("tables",)
        entries = []
        for touched_entries, counts, probability in zip(listed, self.arrays()[0:6:2],
                                                        self.arrays()[1:6:2], strict=True):
            saved = (touched_entries, np.empty(touched_entries.size, np.uint8),
                     np.empty((touched_entries.size, 2), mixing.PROBABILITY_DTYPE))
            _gather_kernel(counts, probability, *saved)
            entries.append(saved)
        return ("entries", entries, self.weights.copy(), self.apm.copy())

    def restore(self, saved: tuple) -> None:
        if saved[0] == "tables":
            for array, copy in zip(self.arrays(), self._backup, strict=True):
                np.copyto(array, copy)
            return
        _, entries, weights, apm = saved
        for saved, counts, probability in zip(entries, self.arrays()[0:6:2],
                                              self.arrays()[1:6:2], strict=True):
            _scatter_kernel(counts, probability, *saved)
        self.weights[:] = weights
        self.apm[:] = apm


@compiled
def _gather_kernel(counts, probability, touched, saved_counts,
                   saved_probability):  # pragma: no cover - compiled
    """The touched entries' counts and probabilities of one count table."""
    for j in range(touched.size):
        saved_counts[j] = counts[touched[j]]
        saved_probability[j, 0] = probability[touched[j], 0]
        saved_probability[j, 1] = probability[touched[j], 1]


@compiled
def _scatter_kernel(counts, probability, touched, saved_counts,
                    saved_probability):  # pragma: no cover - compiled
    """_gather_kernel's inverse (each entry once)."""
    for j in range(touched.size):
        counts[touched[j]] = saved_counts[j]
        probability[touched[j], 0] = saved_probability[j, 0]
        probability[touched[j], 1] = saved_probability[j, 1]


@entropy.jit_inline
def _marked(marks, entry):  # pragma: no cover - compiled
    """Whether `entry` is marked in a bit set of uint64 words."""
    return (marks[entry >> 6] >> np.uint64(entry & 63)) & np.uint64(1) != 0


@entropy.jit_inline
def _flip(marks, entry):  # pragma: no cover - compiled
    marks[entry >> 6] ^= np.uint64(1) << np.uint64(entry & 63)


@compiled
def _touched_kernel(fine, shapes, coarse_shift, slots, node_bytes, extended, second,
                    fine_marks, coarse_marks, node_marks, fine_out, coarse_out,
                    node_out):  # pragma: no cover - compiled
    """The fine, coarse (and with `extended`, node) entries the bits of a level's contexts
    (LevelContexts' arrays) index, each once, in the order the bits first touch them, into
    the *_out arrays while they have room; returns how many of each. The first pass marks
    them in bit sets (a table's marks fit a core's cache: 0.5 MB for 2^22 entries) and clears
    the marks after if every entry had room; else the second (`second`, out arrays of their
    counts) lists them again from their marks and clears those."""
    a, b, c = 0, 0, 0
    m = shapes.size
    for k in range(N_PASSES):
        for j in range(m):
            # (each entry listed, and its mark flipped, where its mark is `second`: not yet
            # marked in the first pass, still marked in the second; written out here, not
            # in an inlined step, which would cost the arrays' reference counts a bit)
            ctx = mixing.level_context(fine, shapes, coarse_shift, k, j)
            f, g = ctx & _FINE_MASK, ctx >> 32
            if _marked(fine_marks, f) == second:
                _flip(fine_marks, f)
                if a < fine_out.size:
                    fine_out[a] = f
                a += 1
            if _marked(coarse_marks, g) == second:
                _flip(coarse_marks, g)
                if b < coarse_out.size:
                    coarse_out[b] = g
                b += 1
            if extended:
                n = nodecontext.node_extra(slots, node_bytes, k, j) & NODE_MASK
                if _marked(node_marks, n) == second:
                    _flip(node_marks, n)
                    if c < node_out.size:
                        node_out[c] = n
                    c += 1
    if not second and a <= fine_out.size and b <= coarse_out.size and c <= node_out.size:
        for i in range(a):
            _flip(fine_marks, fine_out[i])
        for i in range(b):
            _flip(coarse_marks, coarse_out[i])
        for i in range(c):
            _flip(node_marks, node_out[i])
    return a, b, c


def _coarse_shift(points: int) -> np.int64:
    return np.int64(64 - mixing.coarse_bits(points))


@entropy.jit_inline
def _mixed(probability, coarse_probability, node_probability, weights, apm, extended, ctx,
           extra, k, inputs):  # pragma: no cover - compiled
    """P(0) in 2^-16 (1 .. 2^16 - 1) of a bit of context ctx (fine | coarse << 32) and extra
    (node context | occupied children so far << 24) in pass k: (the coded P(0), the mixer's,
    its weight set, the APM knot below and its interpolation weight); fills `inputs` for
    _learn. Not extended (version 1): the node inputs are zero, the weight set is 8 k and the
    coded P(0) the mixer's."""
    _count_inputs(probability, ctx & _FINE_MASK, inputs, 0)
    _count_inputs(coarse_probability, ctx >> 32, inputs, 2)
    ws = 8 * k
    if extended:
        _count_inputs(node_probability, extra & NODE_MASK, inputs, 4)
        ws += extra >> POP_SHIFT
    else:
        inputs[4] = 0
        inputs[5] = 0
    inputs[6] = _BIAS_INPUT
    dot = np.int64(0)
    for j in range(INPUTS):
        dot += weights[ws, j] * inputs[j]
    logit = dot >> 16
    p = min(max(_squash(logit), np.int64(1)), np.int64(_ONE - 1))
    if not extended:
        return p, p, ws, np.int64(0), np.int64(0)
    mapped, knot, weight = apm_map(apm, k, logit)
    coded = min(max((p + 3 * mapped) >> 2, np.int64(1)), np.int64(_ONE - 1))
    return coded, p, ws, knot, weight


@entropy.jit_inline
def _learn(counts, probability, coarse_counts, coarse_probability, node_counts,
           node_probability, weights, apm, extended, ctx, extra, k, inputs, p, ws, knot, weight,
           bit):  # pragma: no cover - compiled
    """After a bit: the count models, weight set ws (along the mixer's error: p is the
    mixer's P(0)) and, extended, the APM's two knots."""
    target = np.int64(0) if bit else np.int64(_ONE)
    _count(counts, probability, ctx & _FINE_MASK, target)
    _count(coarse_counts, coarse_probability, ctx >> 32, target)
    if extended:
        _count(node_counts, node_probability, extra & NODE_MASK, target)
        apm_learn(apm, k, knot, weight, target)
    error = target - p
    for j in range(INPUTS):
        w = weights[ws, j] + ((inputs[j] * error) >> mixing.LEARNING_SHIFT)
        weights[ws, j] = min(max(w, -mixing.WEIGHT_LIMIT), mixing.WEIGHT_LIMIT)


def _version_kernels(extended: bool) -> tuple:
    """The encoder's walk and the decoder's kernel of one model version (extended: version 2),
    `extended` a constant of their compiled code (a closure's bool, which numba's cache keys
    on): version 1's do no version 2 work at all. Both share the per-bit steps, _mixed and
    _learn, inlined. The node model's entries are not prefetched (until 0.7.0 they were):
    its contexts repeat within a level, and the hints cost more than the misses they hide
    (the LiDAR sweep, one thread, in one process against 0.6.3: encode 0.78-0.80, decode
    0.75 of the time; bench/paired_trees.py --in-process)."""

    @compiled
    def walk_kernel(fine, shapes, coarse_shift, slots, node_bytes, bits, counts, probability,
                    coarse_counts, coarse_probability, node_counts, node_probability, weights,
                    apm, length, f0_out):  # pragma: no cover - compiled
        """The encoder's walk over a level (its LevelContexts' arrays and its (M, 8) bits;
        pass-major: bit i is child i // M of node i % M): each bit's P(0) into f0_out, then the
        updates; returns the bits' code length (entropy.code_length_table units). Version 1
        reads no extras."""
        inputs = np.zeros(INPUTS, np.int64)
        total = np.int64(0)
        m = shapes.size
        for k in range(N_PASSES):
            for j in range(m):
                i = k * m + j
                mixing.prefetch_level_ahead(fine, shapes, coarse_shift, k, j, counts,
                                            probability, coarse_counts, coarse_probability)
                ctx = mixing.level_context(fine, shapes, coarse_shift, k, j)
                extra = np.int64(nodecontext.node_extra(slots, node_bytes, k, j)) \
                    if extended else np.int64(0)
                coded, p, ws, knot, weight = _mixed(probability, coarse_probability,
                                                    node_probability, weights, apm, extended,
                                                    ctx, extra, np.int64(k), inputs)
                f0_out[i] = coded
                bit = bits[j, k]
                total += length[_ONE - coded] if bit else length[coded]
                _learn(counts, probability, coarse_counts, coarse_probability, node_counts,
                       node_probability, weights, apm, extended, ctx, extra, np.int64(k),
                       inputs, p, ws, knot, weight, bit)
        return total

    @compiled
    def decode_kernel(words, state, contexts, extras, k, counts, probability, coarse_counts,
                      coarse_probability, node_counts, node_probability, weights, apm,
                      out):  # pragma: no cover - compiled
        """Decode out.size bits of pass k at state = [x, pos] (adaptive.Decoder's), updating
        the model as the encoder did. Returns adaptive._OK or _EARLY_END; never reads outside
        words."""
        x = np.uint64(state[0])
        pos = np.int64(state[1])
        inputs = np.zeros(INPUTS, np.int64)
        for i in range(contexts.size):
            mixing._prefetch_ahead(contexts, i, counts, probability, coarse_counts,
                                   coarse_probability)
            ctx = np.int64(contexts[i])
            extra = np.int64(extras[i]) if extended else np.int64(0)
            coded, p, ws, knot, weight = _mixed(probability, coarse_probability,
                                                node_probability, weights, apm, extended, ctx,
                                                extra, k, inputs)
            bit, x, pos = adaptive._decode_bit(words, x, pos, coded)
            if pos < 0:
                state[0] = x
                state[1] = np.uint64(words.size)
                return adaptive._EARLY_END
            _learn(counts, probability, coarse_counts, coarse_probability, node_counts,
                   node_probability, weights, apm, extended, ctx, extra, k, inputs, p, ws, knot,
                   weight, bit)
            out[i] = bit
        state[0] = x
        state[1] = np.uint64(pos)
        return adaptive._OK

    return walk_kernel, decode_kernel


_KERNELS = {1: _version_kernels(False), 2: _version_kernels(True)}  # (walk, decode) by version


def walk_contexts(model: Model, contexts: mixing.LevelContexts, bits: np.ndarray,
                  extras: nodecontext.LevelExtras | None = None) -> tuple[np.ndarray, int]:
    """Code one level (encoder), given its contexts (mixing.level_contexts) and, version 2,
    its extras (nodecontext.LevelExtras.of): each bit's P(0) (uint16, pass-major, as
    adaptive.encode takes them) and their code length in 2^-entropy.COST_FRACTION bits. The
    model moves on; model.restore(model.snapshot(contexts, extras)) taken before undoes it."""
    # (read in place, pass by pass: a pass-major copy took a byte a bit at the walk's peak)
    occupancy = np.ascontiguousarray(bits, dtype=np.bool_).view(np.uint8)
    m = occupancy.shape[0]
    level = contexts.checked(model.points)
    if occupancy.shape != (m, N_PASSES) or level.shapes.size != m:
        raise ValueError("one context per bit of the level's (M, 8) bits")
    extras = nodecontext.checked_level_extras(extras, m, model.version)
    f0 = np.empty(occupancy.size, dtype=adaptive.F0_DTYPE)
    walk, _ = model.kernels()
    cost = walk(level.fine, level.shapes, _coarse_shift(model.points), *extras, occupancy,
                *model.arrays(), entropy.code_length_table(), f0)
    return f0, int(cost)


class Decoder(adaptive.LenientDecoder):
    """The neighbour-coded levels' stream being decoded, pass by pass (coder.decompress):
    decode(contexts, k, extras) -> bits, finish(); lenient=True (benchmarks) yields zeros
    once the stream breaks off instead of raising."""

    label = "neighbour occupancy data"

    def __init__(self, data: bytes, points: int, version: int = 2, lenient: bool = False):
        super().__init__(data, lenient)
        self.model = Model(points, version)

    def decode(self, contexts: np.ndarray, k: int, extras: np.ndarray | None = None
               ) -> np.ndarray:
        c = np.ascontiguousarray(contexts, dtype=np.int64).reshape(-1)
        out = np.zeros(c.size, dtype=np.int32)
        if self.failed:
            return out
        if not 0 <= k < N_PASSES:
            raise ValueError(f"pass {k} outside 0..7")  # the decoder's own
        mixing._check_contexts(c, self.model.points)
        e = nodecontext.checked_extras(extras, c.size, self.model.version)
        _, decode = self.model.kernels()
        code = decode(self.words, self.state, c, e, np.int64(k), *self.model.arrays(), out)
        return self._checked(code, out)
