"""The adaptive context coder: the learned model's exact, float-free fallback, per octree level.

Each node's occupancy byte is binarized child 0 first (8 binary decisions); a decision's
context is (the parent's occupancy byte, the node's position in its parent, the bits of this
byte decoded so far), 2^19 contexts in all. Each context keeps two counts; P(bit = 0) is the
Krichevsky-Trofimov estimate (n0 + 1/2) / (n0 + n1 + 1) in 1/2^16 units, computed by integer
division:

    f0 = clamp(((2 n0 + 1) << 16) // (2 (n0 + n1) + 2), 1, 2^16 - 1)

and the counts are halved (rounding up) when their sum passes MAX_TOTAL. Every step is integer
arithmetic on int64 (no float anywhere in the decision path), so any machine that runs this
code computes the same CDFs bit for bit: no safeguard protection is needed, and none is sent.

Counts update after every decision in coding order (node by node, within a level in Morton
order, levels top-down) and persist across levels. Levels coded by the learned model or the
neighbour coder still update the counts (both sides know their bits), so the adaptive cost of
a level does not depend on which coder the other levels use: the encoder can pick, per level,
the cheapest coder (codec.py), and the result is never larger than coding every level
adaptively.

The bits go through a binary 64-bit rANS with the same word format, renormalisation and
end-of-stream rule as reprocodec.entropy (its kernels do the state updates): the decoder is
memory-safe on any bytes (every word read bounds-checked, a node whose byte decodes to zero is
refused, the caller bounds the number of decisions before decoding) and the stream must end
exactly where its last decision does. Kernels are numba-compiled; without numba the same
functions run as plain Python (slow, identical).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from .. import entropy
from ..errors import ContainerError
from ..kernels import compiled
from .rowslices import on_pool

N_CONTEXTS = 256 * 8 * 256  # (parent byte, position in parent, byte prefix with a marker bit)
MAX_TOTAL = 1 << 10  # counts of a context are halved when n0 + n1 exceeds this
_PRECISION = entropy.PRECISION
_ONE = 1 << _PRECISION
# Probabilities of 0 are 1.._ONE - 1 (16 bits): 2 bytes a decision where they are kept
# (LevelPricing's `keep`), instead of 8.
F0_DTYPE = np.uint16
_RANS_L = entropy._RANS_L

_OK, _EARLY_END, _EMPTY_NODE = 0, 1, 2
_UNPRICED = np.zeros(0, dtype=np.int64)  # _model_kernel's length table where no cost is wanted
_NO_F0 = np.zeros(0, dtype=F0_DTYPE)  # and its f0_out where no probability is
_NO_COUNTS = np.zeros((0, 2), dtype=np.int32)  # a finished LevelPricing's counts
_MESSAGES = {_EARLY_END: "adaptive occupancy data ends before its last decision",
             _EMPTY_NODE: "adaptive occupancy data decodes a node without children"}


class AdaptiveStreamError(ContainerError):
    """The adaptive occupancy bytes are not a stream this coder wrote."""


@entropy.jit_inline
def _probability(counts, ctx):  # pragma: no cover - compiled
    """KT estimate of P(bit = 0) in 1/2^16 units, integers only."""
    n0 = np.int64(counts[ctx, 0])
    n1 = np.int64(counts[ctx, 1])
    f0 = ((2 * n0 + 1) << _PRECISION) // (2 * (n0 + n1) + 2)
    return min(max(f0, np.int64(1)), np.int64(_ONE - 1))


@entropy.jit_inline
def _update(counts, ctx, bit):  # pragma: no cover - compiled
    counts[ctx, bit] += 1
    if counts[ctx, 0] + counts[ctx, 1] > MAX_TOTAL:
        counts[ctx, 0] = (counts[ctx, 0] + 1) >> 1
        counts[ctx, 1] = (counts[ctx, 1] + 1) >> 1


@compiled
def _model_kernel(occupancy, parent_byte, position, counts, f0_out, length):  # pragma: no cover
    """Walk one level's decisions in coding order: f0 of each (if f0_out has room), the count
    updates, and (if length has entries: entropy.code_length_table) their code length, which
    it returns (code_length's sum over the same f0, without keeping them)."""
    k = 0
    store = f0_out.size > 0
    price = length.size > 0
    total = np.int64(0)
    for i in range(occupancy.size):
        base = (np.int64(parent_byte[i]) * 8 + np.int64(position[i])) << 8
        byte = np.int64(occupancy[i])
        prefix = np.int64(0)
        for j in range(8):
            ctx = base | prefix | (np.int64(1) << j)
            bit = (byte >> (7 - j)) & 1
            f0 = _probability(counts, ctx)
            if store:
                f0_out[k] = f0
            if price:
                total += length[_ONE - f0] if bit else length[f0]
            k += 1
            _update(counts, ctx, bit)
            prefix |= bit << j
    return total


@compiled
def _encode_kernel(bits, f0, out):  # pragma: no cover - compiled
    """Binary rANS of bits (P(0) = f0 / 2^16) in reverse into out (filled from the end);
    returns the index of the first word written. entropy's word format."""
    x = np.uint64(_RANS_L)
    pos = out.size
    for i in range(bits.size - 1, -1, -1):
        # branch-free: a bit's value is as good as random, a branch on it mispredicted
        f = np.int64(f0[i])
        bit = np.int64(bits[i] != 0)
        x, pos = entropy._put(out, pos, x, np.uint64(f * bit),
                              np.uint64(f + bit * (_ONE - 2 * f)))
    return entropy._flush(out, pos, x)


@entropy.jit_inline
def _decode_bit(words, x, pos, f0):  # pragma: no cover - compiled
    """One binary decision at rANS state x, read position pos, P(0) = f0 / 2^16: (bit, x, pos)
    after renormalising; pos < 0 when the words ran out (entropy._renormalize bounds every
    read). The adaptive, refined, mixed and neighbour decoders' common step."""
    f = np.uint64(f0)
    cum = x & np.uint64(_ONE - 1)
    if cum < f:
        bit, start, freq = np.int64(0), np.uint64(0), f
    else:
        bit, start, freq = np.int64(1), f, np.uint64(_ONE) - f
    x, pos = entropy._renormalize(words, freq * (x >> np.uint64(_PRECISION)) + cum - start, pos)
    return bit, np.uint64(x), pos


@compiled
def _decode_kernel(words, state, parent_byte, position, counts, out):  # pragma: no cover
    """Decode out.size node bytes from words at state = [x, pos], updating the counts as the
    encoder did; updates state. Returns _OK or the first error; never reads outside words."""
    x = np.uint64(state[0])
    pos = np.int64(state[1])
    for i in range(out.size):
        base = (np.int64(parent_byte[i]) * 8 + np.int64(position[i])) << 8
        prefix = np.int64(0)
        byte = np.int64(0)
        for j in range(8):
            ctx = base | prefix | (np.int64(1) << j)
            bit, x, pos = _decode_bit(words, x, pos, _probability(counts, ctx))
            if pos < 0:
                state[0] = x
                state[1] = np.uint64(words.size)
                return _EARLY_END
            _update(counts, ctx, bit)
            prefix |= bit << j
            byte |= bit << (7 - j)
        if byte == 0:
            state[0] = x
            state[1] = np.uint64(pos)
            return _EMPTY_NODE
        out[i] = byte
    state[0] = x
    state[1] = np.uint64(pos)
    return _OK


# ------------------------------------------------------------------------------ API



def occupancy_bytes(bits: np.ndarray) -> np.ndarray:
    """(M, 8) child occupancy -> (M,) uint8 bytes, child 0 the most significant bit (any
    nonzero is a child)."""
    bits = np.ascontiguousarray(bits)
    if bits.ndim != 2 or bits.shape[1] != 8:
        raise ValueError(f"child occupancy must be (M, 8), got {bits.shape}")
    flags = bits if bits.dtype == bool else bits != 0
    out = np.empty(bits.shape[0], dtype=np.uint8)
    _bytes_kernel(flags.view(np.uint8), out)
    return out


@compiled
def _bytes_kernel(flags, out):  # pragma: no cover - compiled
    """np.packbits of the rows of 0/1 bytes (one pass: packbits along the short axis took
    ~30 ns a node)."""
    for i in range(out.size):
        byte = 0
        for c in range(8):
            byte = (byte << 1) | flags[i, c]
        out[i] = byte


def byte_bits(occupancy: np.ndarray) -> np.ndarray:
    """(M,) bytes -> (M, 8) bool child occupancy (inverse of occupancy_bytes)."""
    return np.unpackbits(np.asarray(occupancy, dtype=np.uint8)[:, None], axis=1).astype(bool)


class Model:
    """The adaptive model's state: the counts and where the current level's nodes sit in
    their parents. Both sides walk every level through it, top-down, in the same order."""

    def __init__(self):
        self.counts = np.zeros((N_CONTEXTS, 2), dtype=np.int32)
        self.parent_byte = np.zeros(1, dtype=np.uint8)  # the root: no parent, context byte 0
        self.position = np.zeros(1, dtype=np.uint8)

    def _advance(self, occupancy: np.ndarray) -> None:
        self.parent_byte, self.position = child_places(occupancy)

    def observe(self, occupancy: np.ndarray, want_f0: bool = False) -> np.ndarray:
        """Update the counts with one level's bytes (coded by either coder) and move to the
        next level; with want_f0, the probability of every decision (node-major order)."""
        occupancy = np.ascontiguousarray(occupancy, dtype=np.uint8)
        if occupancy.shape != self.parent_byte.shape:
            raise ValueError(f"{occupancy.size} node bytes for a level of "
                             f"{self.parent_byte.size} nodes")
        f0 = np.zeros(8 * occupancy.size if want_f0 else 0, dtype=F0_DTYPE)
        _model_kernel(occupancy, self.parent_byte, self.position, self.counts, f0, _UNPRICED)
        self._advance(occupancy)
        return f0

    def decode_level(self, decoder: Decoder) -> np.ndarray:
        """Decode this level's node bytes from the adaptive stream and move to the next."""
        out = np.zeros(self.parent_byte.size, dtype=np.uint8)
        code = _decode_kernel(decoder.words, decoder.state, self.parent_byte, self.position,
                              self.counts, out)
        if code != _OK:
            raise AdaptiveStreamError(f"malformed bitstream: {_MESSAGES[code]}")
        self._advance(out)
        return out


class LevelPricing:
    """The adaptive coder's pricing of every octree level, top-down as the encoder needs it:
    each level's decisions (its bits, node-major: views, no copies) and their code length
    under Model.observe's walk level by level (cost, the units of code_length), and the
    probabilities of the levels in `keep` (ascending), concatenated in coding order
    (probabilities()). The encoder keeps every level's on a small cloud; on a larger one
    none, and it walks again, keeping the levels a stream codes adaptively, when it codes
    them (codec.KEEP_ADAPTIVE_BITS): kept through the choice, a scan's encode held 2 bytes a
    decision of every level through its peak (33 MB at 0.97 M points) for the few small
    levels the adaptive coder won.

    With threads > 1 the walk runs on the row pool while the caller goes on (the encoder's
    level loop, which reads a level's cost when it reaches it: `self[level]` waits for it).
    Every array is made here, on the caller's thread, and the pool's thread runs only
    compiled kernels in them: a first try that ran Model.observe on a pool thread kept ~90
    MB more at 1.3 M points (that thread's malloc arena). One thread: made at once."""

    def __init__(self, bits: list[np.ndarray], threads: int = 1,
                 keep: Sequence[int] = ()) -> None:
        self._bits = [np.ascontiguousarray(b, dtype=bool) for b in bits]
        keep = list(keep)
        if any(b >= a for a, b in zip(keep[1:], keep, strict=False)) or \
                (keep and not 0 <= keep[0] <= keep[-1] < len(bits)):
            raise ValueError("the levels kept must be ascending indices of the octree's levels")
        for level, b in enumerate(self._bits):
            if b.ndim != 2 or b.shape[1] != 8:
                raise ValueError(f"child occupancy must be (M, 8), got {b.shape}")
            # the kernels write each level's places unchecked: its node count must be the
            # occupied children of the level above
            above = np.count_nonzero(self._bits[level - 1]) if level else 1
            if b.shape[0] != above:
                raise ValueError(f"level {level} has {b.shape[0]} nodes, its parents {above} "
                                 "children")
        self.decisions = [b.reshape(-1) for b in self._bits]
        self._kept = np.empty(sum(self._bits[level].size for level in keep), dtype=F0_DTYPE)
        ends = np.cumsum([0] + [self._bits[level].size for level in keep])
        self._f0_out = [_NO_F0] * len(bits)  # where each level's probabilities go, if kept
        for level, start, stop in zip(keep, ends[:-1], ends[1:], strict=True):
            self._f0_out[level] = self._kept[start:stop]
        self._costs = [0] * len(bits)
        self._done = [threading.Event() for _ in bits]
        # each level's node bytes, and its nodes' parent bytes and places in them (the root:
        # byte 0, place 0), freed as the walk passes
        self._occupancy: list[np.ndarray | None] = [np.empty(b.shape[0], dtype=np.uint8)
                                                    for b in self._bits]
        self._places: list[tuple[np.ndarray, np.ndarray] | None] = [
            (np.zeros(1, np.uint8), np.zeros(1, np.uint8))] + [
            (np.empty(b.shape[0], np.uint8), np.empty(b.shape[0], np.uint8))
            for b in self._bits[1:]]
        self._counts = np.zeros((N_CONTEXTS, 2), dtype=np.int32)
        self._length = entropy.code_length_table()
        self._stopped = False
        self._priced = 0  # levels whose cost is known
        self._error: BaseException | None = None
        self._job = on_pool(self._walk, threads) if threads > 1 else None
        if self._job is None:
            self._walk()

    def _walk(self) -> None:
        try:
            for level, bits in enumerate(self._bits):
                if self._stopped:
                    break
                occupancy, places = self._occupancy[level], self._places[level]
                assert occupancy is not None and places is not None
                _bytes_kernel(bits.view(np.uint8), occupancy)
                self._costs[level] = int(_model_kernel(occupancy, places[0], places[1],
                                                       self._counts, self._f0_out[level],
                                                       self._length))
                following = self._places[level + 1] if level + 1 < len(self._bits) else None
                if following is not None:
                    _places_kernel(occupancy, following[0], following[1])
                self._occupancy[level] = self._places[level] = None
                self._priced = level + 1
                self._done[level].set()
        except BaseException as exc:
            self._error = exc
        finally:
            self._counts = _NO_COUNTS  # (4 MB the encoder's loop may use meanwhile)
            for done in self._done:  # a reader waiting on a level the walk never reached
                done.set()

    def __len__(self) -> int:
        return len(self._costs)

    def __getitem__(self, level: int) -> int:
        """The level's cost, once the walk has priced it (the walk's error if it stopped
        before this level)."""
        self._done[level].wait()
        if level >= self._priced:
            raise self._error if self._error is not None else RuntimeError(
                "the adaptive pricing was closed before this level")
        return self._costs[level]

    def result(self) -> tuple[list[np.ndarray], list[int]]:
        """(decisions, costs) of every level, once the walk is done."""
        costs = [self[level] for level in range(len(self))]
        return self.decisions, costs

    def probabilities(self) -> np.ndarray:
        """The kept levels' probabilities, concatenated in coding order, once the walk is
        done."""
        self.result()
        return self._kept

    def close(self) -> None:
        """Stop the walk after its current level and wait for it (the caller is done with
        it, or gave up)."""
        self._stopped = True
        if self._job is not None:
            self._job.exception()


POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)  # of a byte


def child_places(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The next level's nodes, from a level's node bytes: each occupied child, in Morton
    order, with its parent's byte and its own child index (uint8 each; the adaptive model's
    context, and the neighbour coder's version 2 node slots)."""
    occupancy = np.ascontiguousarray(occupancy, dtype=np.uint8)
    n = int(POPCOUNT[occupancy].sum(dtype=np.int64))
    parent_byte, position = np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.uint8)
    _places_kernel(occupancy, parent_byte, position)
    return parent_byte, position


@compiled
def _places_kernel(occupancy, parent_byte, position):  # pragma: no cover - compiled
    """Each set bit of each byte, in order (child 0 = the top bit): np.nonzero of byte_bits
    without its (M, 8) and int64 temporaries. The caller sizes the outputs by popcount."""
    n = 0
    for i in range(occupancy.size):
        byte = occupancy[i]
        for c in range(8):
            if (byte >> (7 - c)) & 1:
                parent_byte[n] = byte
                position[n] = c
                n += 1


def decision_bits(occupancy: np.ndarray) -> np.ndarray:
    """The coded bits of node bytes in coding order (node-major, child 0 first)."""
    return byte_bits(occupancy).reshape(-1)


def _checked_decisions(bits: np.ndarray, f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits and their probabilities of 0 as the compiled kernels take them (uint8, F0_DTYPE),
    checked first: the kernels index tables with them unchecked."""
    b = np.ascontiguousarray(bits, dtype=np.uint8)
    f = np.asarray(f0)
    if b.shape != f.shape or (f.size and (f.min() < 1 or f.max() >= _ONE)):
        raise ValueError("adaptive coder: bits and probabilities disagree")
    return b, np.ascontiguousarray(f, dtype=F0_DTYPE)  # in range: checked above


def code_length(bits: np.ndarray, f0: np.ndarray) -> int:
    """Ideal code length of the decisions in units of 2^-entropy.COST_FRACTION bits (the
    encoder's choice only, never decoded; integers, so the same on every machine). One pass,
    no temporaries beside the encoder's largest arrays."""
    b, f = _checked_decisions(bits, f0)
    return int(_code_length_kernel(b, f, entropy.code_length_table()))


@compiled
def _code_length_kernel(bits, f0, length):  # pragma: no cover - compiled
    total = np.int64(0)
    for i in range(bits.size):
        f = np.int64(f0[i])
        total += length[_ONE - f] if bits[i] else length[f]
    return total


def encode(bits: np.ndarray, f0: np.ndarray) -> bytes:
    """rANS bytes of the decisions (bits in coding order, f0 their probabilities of 0)."""
    return start_encode(bits, f0, 1)()


def start_encode(bits: np.ndarray, f0: np.ndarray | Callable[[], np.ndarray], threads: int
                 ) -> Callable[[], bytes]:
    """encode() with its kernel started on the pool (threads > 1) while the caller does other
    work: the arrays are checked and made here, on the caller's thread; the function
    returned waits for the kernel and gives the bytes. f0 may be a function that gives the
    probabilities once they are made (LevelPricing.probabilities, its walk started on the
    pool before): called and its result checked on the pool, before the kernel (its error
    raised by the function returned)."""
    b = np.ascontiguousarray(bits, dtype=np.uint8)
    given = None if callable(f0) else _checked_decisions(b, f0)[1]
    out = np.zeros(b.size + 2, dtype=np.uint32)

    def run() -> int:
        f = given if given is not None else _checked_decisions(b, f0())[1]
        return int(_encode_kernel(b, f, out))

    if threads > 1:
        job = on_pool(run, threads)
        return lambda: out[job.result():].astype("<u4").tobytes()
    first = run()
    return lambda: out[first:].astype("<u4").tobytes()


class Decoder:
    """The adaptive rANS stream being decoded (Model.decode_level reads it level by level)."""

    label = "adaptive occupancy data"  # what error messages call the stream

    def __init__(self, data: bytes):
        data = bytes(data)
        if len(data) < 8 or len(data) % 4:
            raise AdaptiveStreamError(f"malformed bitstream: {self.label} of {len(data)} bytes "
                                      "is not a whole rANS stream")
        self.words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        x = int(self.words[0]) | (int(self.words[1]) << 32)
        if not _RANS_L <= x < entropy._RANS_END:
            raise AdaptiveStreamError(f"malformed bitstream: {self.label} has an invalid "
                                      "initial state")
        self.state = np.array([x, 2], dtype=np.uint64)

    def finish(self) -> None:
        x, pos = int(self.state[0]), int(self.state[1])
        if pos != self.words.size or x != _RANS_L:
            raise AdaptiveStreamError(f"malformed bitstream: {self.label} does not end at its "
                                      f"last decision ({self.words.size - pos} words left over)")


class LenientDecoder(Decoder):
    """A binary rANS stream decoded in calls with kernels of its own (refine's and mixing's
    learned streams, neighbour.py's levels): lenient=True (benchmarks) yields zeros once the
    stream breaks off instead of raising."""

    def __init__(self, data: bytes, lenient: bool = False):
        self.lenient, self.failed = lenient, False
        try:
            super().__init__(data)
        except AdaptiveStreamError:
            if not lenient:
                raise
            self.failed = True

    def _checked(self, code: int, out: np.ndarray) -> np.ndarray:
        """out, after a kernel that returned `code` (_OK or _EARLY_END)."""
        if code != _OK:
            self.failed = True
            if not self.lenient:
                raise AdaptiveStreamError(
                    f"malformed bitstream: {self.label} ends before its last decision")
            out[:] = 0
        return out

    def finish(self) -> None:
        if not self.failed:
            super().finish()


def encoded_size(voxels: np.ndarray, depth: int) -> int:
    """Bytes of the rANS stream that codes every level of a voxel set adaptively (what the
    benchmarks call the adaptive octree coder)."""
    from . import octree

    if voxels.shape[0] == 0:
        return 0
    _, bits = octree.build_levels(voxels, depth)
    pricing = LevelPricing(bits, keep=range(len(bits)))
    return len(encode(np.concatenate(pricing.decisions), pricing.probabilities()))


def level_flags(levels: tuple[bool, ...]) -> bytes:
    """The per-level coder flags at the head of the adaptive payload: bit l of a little-endian
    integer of ceil(depth / 8) bytes is set when level l is coded adaptively."""
    value = sum(1 << lv for lv, a in enumerate(levels) if a)
    return value.to_bytes((len(levels) + 7) // 8, "little")


def read_level_flags(data: bytes, depth: int, label: str = "adaptive"
                     ) -> tuple[tuple[bool, ...], bytes]:
    """level_flags' levels and the bytes after them (the neighbour payload has the same head:
    `label` names the payload in errors)."""
    size = (depth + 7) // 8
    if len(data) < size:
        raise ContainerError(f"malformed bitstream: {label} occupancy payload is shorter than "
                             "its level flags")
    value = int.from_bytes(data[:size], "little")
    if value >> depth or value == 0:
        raise ContainerError(f"malformed bitstream: {label} occupancy level flags name no "
                             "level or levels past the depth")
    return tuple(bool(value >> lv & 1) for lv in range(depth)), bytes(data[size:])

