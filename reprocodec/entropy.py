"""Entropy coding: the only code in reprocodec that touches an entropy coder.

A 64-bit rANS coder over 16-bit integer CDF tables, byte-compatible with CompressAI's
`BufferedRansEncoder` / `RansDecoder` (same tables, same symbol -> (start, frequency) mapping,
same 4-bit bypass coding of values outside a table's range, same word order), so streams and
tables carry over unchanged. Unlike CompressAI's C++ decoder, whose asserts are compiled out
and which reads past its buffer on hostile bytes, the decoder here is memory-safe for any byte
string: every word read is bounds-checked, bypass runs are capped at what an honest encoder can
write, table indexes are checked, and the stream must end exactly where the coder says it does
(all words consumed and the state back at the encoder's initial value).

    encode(symbols, indexes, tables) -> bytes      decode(data, indexes, tables) -> symbols
    Encoder().encode(...) ... .flush()             Decoder(data).decode(...) ... .finish()

numpy in and out. The kernels are numba-compiled (`nogil`, so concurrent requests run in
parallel); without numba (the light client, which never decodes) the same functions run as
plain Python, which is slow but identical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import ContainerError, InputError
from .kernels import compiled

PRECISION = 16  # CDF tables sum to 2^16
BYPASS_BITS = 4
BYPASS_MAX = (1 << BYPASS_BITS) - 1
# |symbol - offset| an encoder accepts. Raw escape values then stay below 2^28, at most 7
# nibbles: CompressAI's encoder loops forever from 8 nibbles on (a 32-bit shift), so no stream
# it could write needs more. A decoder refuses longer escapes instead of looping.
MAX_MAGNITUDE = 1 << 26
MAX_BYPASS_NIBBLES = 7
_RANS_L = 1 << 31  # lower bound of the normalised state; also the encoder's initial state
# Every encoder's state stays below _RANS_L << 32 (Rans64's invariant: a put renormalises
# first), its last state too, which the stream starts with: a decoder refuses any other start
# (beyond it the first decode's products would wrap around 2^64).
_RANS_END = _RANS_L << 32

# Encoders compare code lengths to choose between coders: in integer units of 2^-COST_FRACTION
# bits (code_length_table), summed exactly, so the choice and the stream bytes are the same on
# every machine (a float log2 or a SIMD float sum could break a near tie differently).
COST_FRACTION = 16


@functools.cache
def code_length_table() -> np.ndarray:
    """int64 (2^PRECISION + 1,): entry f is the code length of a symbol of frequency f out of
    2^PRECISION, PRECISION - log2(f), in units of 2^-COST_FRACTION bits (f = 0: a huge cost).
    Integer arithmetic only: log2 by repeated squaring of the fixed-point mantissa, each
    result bit exact (truncated), the same on every host."""
    f = np.arange(1, (1 << PRECISION) + 1, dtype=np.int64)
    whole = sum((f >> (s + 1) > 0).astype(np.int64) for s in range(PRECISION))  # floor(log2)
    scale = 1 << 30
    mantissa = np.left_shift(f, 30 - whole)  # f / 2^whole in [1, 2), 30 fraction bits
    fraction = np.zeros_like(f)
    for _ in range(COST_FRACTION):
        mantissa = (mantissa * mantissa) >> 30  # < 2^62: no overflow
        carry = mantissa >= 2 * scale
        fraction = 2 * fraction + carry
        mantissa = np.where(carry, mantissa >> 1, mantissa)
    log2_fixed = (whole << COST_FRACTION) + fraction
    table = np.empty((1 << PRECISION) + 1, dtype=np.int64)
    table[0] = 1 << 40  # never coded: far more than any real code length
    table[1:] = (PRECISION << COST_FRACTION) - log2_fixed
    table.setflags(write=False)
    return table


def stream_floor(code_length: int, symbols: int) -> int:
    """A lower bound, in code-length units, of the size of a stream of `symbols` table symbols
    (no escapes: the point-cloud coders' streams) whose summed code_length_table lengths are
    `code_length`. The state x starts at _RANS_L = 2^31, never drops below it, and ends as the
    64 flushed bits, so the stream holds at least log2(x) + 32 bits per word out. A put of
    frequency f maps x to at least (x - f + 1) * 2^16 / f: log2(x) grows by the true length
    less at most log2(1 / (1 - 2^-15)) bits (2.885 units), and the table is at most 2 units
    over the true length (tests/test_entropy.py): 5 units a symbol. A word out (x >= 2^47)
    loses at most 2.885 units too, and a stream below its ideal length has at most ideal / 32
    words: under code_length / 2^19 units. The initial state's 31 bits are the margin."""
    return code_length - 5 * symbols - (code_length >> 19)


# Decoder outcomes (kernel return codes).
_OK, _EARLY_END, _BAD_INDEX, _BYPASS_RUN, _BAD_STATE, _BAD_VALUE = 0, 1, 2, 3, 4, 5
_MESSAGES = {
    _EARLY_END: "entropy-coded data ends before its last symbol",
    _BAD_INDEX: "a CDF table index is out of range",
    _BYPASS_RUN: "an escape code is longer than any encoder writes",
    _BAD_STATE: "entropy-coded data has an invalid initial state",
    _BAD_VALUE: "an escaped value is beyond any encoder's range",
}


class EntropyStreamError(ContainerError):
    """The entropy-coded bytes are not a stream this coder wrote (corrupt or hostile)."""


@dataclass(frozen=True)
class CdfTables:
    """Quantized CDFs (one row per table, 2^16 at each row's last used entry), each row's
    length and the symbol offset of its first entry: CompressAI's `_quantized_cdf`,
    `_cdf_length` and `_offset` buffers, taken from the weights file and never recomputed."""

    cdfs: np.ndarray  # int32 [tables, max_length]
    lengths: np.ndarray  # int32 [tables]
    offsets: np.ndarray  # int32 [tables]

    @classmethod
    def from_arrays(cls, cdfs, lengths, offsets) -> CdfTables:
        """Validated copy: rows start at 0, end at 2^16, and every regular symbol has a
        frequency of at least 1. The escape symbol (the row's last) may have none, as in a
        binary table that can never escape; the encoder then refuses out-of-range symbols."""
        c = np.ascontiguousarray(np.asarray(cdfs), dtype=np.int32)
        n = np.ascontiguousarray(np.asarray(lengths).reshape(-1), dtype=np.int32)
        o = np.ascontiguousarray(np.asarray(offsets).reshape(-1), dtype=np.int32)
        if c.ndim != 2 or c.shape[0] == 0 or n.shape != (c.shape[0],) or o.shape != n.shape:
            raise InputError(f"CDF tables of shape {c.shape}, {n.shape}, {o.shape} disagree")
        if np.any(n < 3) or np.any(n > c.shape[1]):
            raise InputError("CDF table lengths out of range")
        for row, length in zip(c, n.tolist(), strict=True):
            used = row[:length]
            freq = np.diff(used)
            if used[0] != 0 or used[-1] != 1 << PRECISION or np.any(freq[:-1] <= 0) \
                    or freq[-1] < 0:
                raise InputError("a CDF table is not an increasing 0..2^16 table")
        return cls(c, n, o)

    @classmethod
    def from_entropy_model(cls, module) -> CdfTables:
        """The tables a CompressAI entropy model holds (loaded from the weights file)."""
        from .numerics import to_host

        return cls.from_arrays(to_host(module._quantized_cdf), to_host(module._cdf_length),
                               to_host(module._offset))

    @property
    def count(self) -> int:
        return int(self.cdfs.shape[0])


# ----------------------------------------------------------------------------- kernels


def jit_inline(fn):
    """A kernel's per-symbol step, inlined into the kernel in numba's IR. Called as a
    function, every array passed to it cost a reference count's increment and decrement on
    each symbol (neighbour.py's walks, which pass a dozen arrays, ran three times slower).
    Inlined, an array the step touches only inside a branch still costs them: numba prunes a
    pair only within a block, hence the branch-free _emit and _renormalize. The binary rANS
    encoder went 40 -> 16 (inlined) -> 9 ns a bit (branch-free; /tmp script, 3 M bits)."""
    return compiled(fn, inline="always")


@compiled
def _count_items(symbols, indexes, cdfs, lengths, offsets):  # pragma: no cover - compiled
    """Number of coded items (table symbols plus bypass nibbles): sizes the output buffer.
    Returns -1 if a symbol is beyond MAX_MAGNITUDE or an index out of range."""
    items = 0
    for i in range(symbols.size):
        t = indexes[i]
        if t < 0 or t >= lengths.size:
            return -1
        max_value = lengths[t] - 2
        value = np.int64(symbols[i]) - offsets[t]
        if value < -MAX_MAGNITUDE or value > MAX_MAGNITUDE:
            return -1
        items += 1
        if value < 0 or value >= max_value:
            if cdfs[t, max_value + 1] == cdfs[t, max_value]:  # this table cannot escape
                return -1
            raw = -2 * value - 1 if value < 0 else 2 * (value - max_value)
            n_bypass = 0
            while (raw >> (n_bypass * BYPASS_BITS)) != 0:
                n_bypass += 1
            items += n_bypass // BYPASS_MAX + 1 + n_bypass
    return items


@jit_inline
def _emit(out, pos, x, x_max):  # pragma: no cover - compiled
    """Rans64's renormalisation before a put: at or above x_max the state's low 32-bit word
    goes out (the stream is written from the end). Branch-free, as _renormalize: the word is
    written at pos - 1 either way and kept only if it went out. That slot is always inside
    `out`: every encoder's buffer holds two words more than it has items, and each item emits
    at most one word, so pos >= 2 + the items still to code."""
    emit = np.int64(x >= x_max)
    out[pos - 1] = np.uint32(x & np.uint64(0xFFFFFFFF))
    return x >> np.uint64(32 * emit), pos - emit


@jit_inline
def _put(out, pos, x, start, freq):  # pragma: no cover - compiled
    """Rans64EncPut of one symbol (start, freq out of 2^PRECISION): returns (x, pos)."""
    x, pos = _emit(out, pos, x, np.uint64((_RANS_L >> PRECISION) << 32) * freq)
    x = np.uint64(x)
    return ((x // freq) << np.uint64(PRECISION)) + (x % freq) + start, pos


@compiled
def _flush(out, pos, x):  # pragma: no cover - compiled
    """Rans64EncFlush: the final state as two words in front; returns the first word's index."""
    pos -= 2
    out[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
    out[pos + 1] = np.uint32(x >> np.uint64(32))
    return pos


@compiled
def _encode_kernel(symbols, indexes, cdfs, lengths, offsets, out):  # pragma: no cover
    """rANS-encode symbols in reverse into out (uint32 words, filled from the end); returns
    the index of the first word written. Items of one symbol, in decoding order: the table
    symbol, then (out of range) the nibble count in runs of BYPASS_MAX, then the nibbles."""
    x = np.uint64(_RANS_L)
    pos = out.size
    bits_max = np.uint64((_RANS_L >> BYPASS_BITS) << 32)  # Rans64EncPutBits' bound
    for i in range(symbols.size - 1, -1, -1):
        t = indexes[i]
        max_value = lengths[t] - 2
        value = np.int64(symbols[i]) - offsets[t]
        # Reverse of the decoding order: nibbles last-to-first, counts, then the table symbol.
        if value < 0 or value >= max_value:
            raw = -2 * value - 1 if value < 0 else 2 * (value - max_value)
            n_bypass = 0
            while (raw >> (n_bypass * BYPASS_BITS)) != 0:
                n_bypass += 1
            for j in range(n_bypass - 1, -1, -1):
                v = (raw >> (j * BYPASS_BITS)) & BYPASS_MAX
                x, pos = _emit(out, pos, x, bits_max)
                x = (np.uint64(x) << np.uint64(BYPASS_BITS)) | np.uint64(v)
            # The count: n_bypass // BYPASS_MAX full runs, then the remainder, decoded in that
            # order, so encoded remainder first.
            runs = n_bypass // BYPASS_MAX
            count_items = runs + 1
            for j in range(count_items - 1, -1, -1):
                v = BYPASS_MAX if j < runs else n_bypass - runs * BYPASS_MAX
                x, pos = _emit(out, pos, x, bits_max)
                x = (np.uint64(x) << np.uint64(BYPASS_BITS)) | np.uint64(v)
            value = max_value
        start = np.uint64(cdfs[t, value])
        freq = np.uint64(cdfs[t, value + 1] - cdfs[t, value])
        x, pos = _put(out, pos, x, start, freq)
    return _flush(out, pos, x)


@compiled
def _store(state, x, pos, code):  # pragma: no cover - compiled
    state[0] = x
    state[1] = np.uint64(pos)
    return code


@jit_inline
def _renormalize(words, x, pos):  # pragma: no cover - compiled
    """Rans64's refill: below 2^31 the state takes the next 32-bit word. pos -1: the stream
    ended first (never read past it). Branch-free, so that the words' reference count is not
    taken and dropped around every symbol: the word is read at min(pos, last), always inside
    `words`, which must not be empty (every decoder's stream is at least two words, checked
    where its words are made), and used only when the state needs it and pos is inside."""
    last = words.size - 1
    word = np.uint64(words[min(pos, last)])
    low = np.int64(x < np.uint64(_RANS_L))
    take = low & np.int64(pos <= last)
    ended = low - take  # 1: the state needs a word and none is left
    x = (x << np.uint64(32 * take)) | (word * np.uint64(take))
    return x, (pos + take) * (1 - ended) - ended


@compiled
def _decode_kernel(words, state, indexes, cdfs, lengths, offsets, out):  # pragma: no cover
    """Decode out.size symbols from words starting at state = [x, pos]; updates state.
    Returns _OK or the first error code; never reads outside words."""
    x = np.uint64(state[0])
    pos = np.int64(state[1])
    mask = np.uint64((1 << PRECISION) - 1)
    nibble = np.uint64(BYPASS_MAX)
    for i in range(out.size):
        t = indexes[i]
        if t < 0 or t >= lengths.size:
            return _store(state, x, pos, _BAD_INDEX)
        length = lengths[t]
        cum = np.int64(x & mask)
        # Binary search: the last s with cdf[s] <= cum (cdf[0] = 0 <= cum < 2^16 = cdf[end]).
        lo, hi = 0, length - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if cdfs[t, mid] <= cum:
                lo = mid
            else:
                hi = mid
        s = lo
        start = np.uint64(cdfs[t, s])
        freq = np.uint64(cdfs[t, s + 1] - cdfs[t, s])
        x, pos = _renormalize(words, freq * (x >> np.uint64(PRECISION)) + (x & mask) - start,
                              pos)
        x = np.uint64(x)  # a no-op compiled; keeps the Python reference in uint64
        if pos < 0:
            return _store(state, x, words.size, _EARLY_END)
        value = np.int64(s)
        max_value = length - 2
        if value == max_value:  # escape: nibble count (runs of BYPASS_MAX), then the nibbles
            n_bypass = 0
            v = BYPASS_MAX
            while v == BYPASS_MAX:
                v = np.int64(x & nibble)
                x, pos = _renormalize(words, x >> np.uint64(BYPASS_BITS), pos)
                x = np.uint64(x)
                if pos < 0:
                    return _store(state, x, words.size, _EARLY_END)
                n_bypass += v
                if n_bypass > MAX_BYPASS_NIBBLES:
                    return _store(state, x, pos, _BYPASS_RUN)
            raw = np.int64(0)
            for j in range(n_bypass):
                raw |= np.int64(x & nibble) << (j * BYPASS_BITS)
                x, pos = _renormalize(words, x >> np.uint64(BYPASS_BITS), pos)
                x = np.uint64(x)
                if pos < 0:
                    return _store(state, x, words.size, _EARLY_END)
            value = raw >> 1
            if raw & 1:
                value = -value - 1
            else:
                value += max_value
            if value > MAX_MAGNITUDE or value < -MAX_MAGNITUDE:
                return _store(state, x, pos, _BAD_VALUE)
        out[i] = value + offsets[t]
    return _store(state, x, pos, _OK)


# ------------------------------------------------------------------------------ API

def _flat_int32(a, what: str) -> np.ndarray:
    arr = np.asarray(a).reshape(-1)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{what} must be integers, not {arr.dtype}")
    # A silent wrap to int32 would turn an out-of-range index into a valid-looking one.
    if arr.size and (arr.min() < -(1 << 31) or arr.max() >= 1 << 31):
        raise InputError(f"{what} are beyond the 32-bit range the coder works in")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    """The buffered int32 chunks as one array: a single chunk as it is (no copy of what may be
    the largest array a caller holds)."""
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)


class Encoder:
    """Buffers (symbols, indexes) pairs; `flush` codes them all into one stream."""

    def __init__(self, tables: CdfTables):
        self.tables = tables
        self._symbols: list[np.ndarray] = []
        self._indexes: list[np.ndarray] = []

    def encode(self, symbols, indexes) -> None:
        s, t = _flat_int32(symbols, "symbols"), _flat_int32(indexes, "indexes")
        if s.shape != t.shape:
            raise InputError(f"{s.size} symbols but {t.size} table indexes")
        self._symbols.append(s)
        self._indexes.append(t)

    def flush(self) -> bytes:
        tables = self.tables
        s, t = _joined(self._symbols), _joined(self._indexes)
        self._symbols, self._indexes = [], []
        items = _count_items(s, t, tables.cdfs, tables.lengths, tables.offsets)
        if items < 0:
            raise InputError("a symbol is beyond its table's range or the coder's, or a table "
                             "index is out of range (non-finite or absurd latent values?)")
        out = np.zeros(items + 2, dtype=np.uint32)
        first = _encode_kernel(s, t, tables.cdfs, tables.lengths, tables.offsets, out)
        return out[first:].astype("<u4").tobytes()


class Decoder:
    """Decodes a stream in as many `decode` calls as the encoder made `encode` calls (the
    indexes of a call may depend on what earlier calls returned); `finish` checks that the
    stream ends exactly there.

    lenient=True (benchmarks measuring what an unprotected decoder would return): a stream
    that breaks off yields zeros for the rest instead of raising; `failed` tells."""

    def __init__(self, data: bytes, tables: CdfTables, lenient: bool = False):
        self.tables, self.lenient, self.failed = tables, lenient, False
        data = bytes(data)
        if len(data) < 8 or len(data) % 4:
            self._fail(f"entropy-coded data of {len(data)} bytes is not a whole rANS stream")
            data = bytes(8)
        self._words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        x = int(self._words[0]) | (int(self._words[1]) << 32)
        if not _RANS_L <= x < _RANS_END:
            self._fail(_MESSAGES[_BAD_STATE])
        self._state = np.array([x, 2], dtype=np.uint64)

    def _fail(self, message: str) -> None:
        self.failed = True
        if not self.lenient:
            raise EntropyStreamError(f"malformed bitstream: {message}")

    def decode(self, indexes) -> np.ndarray:
        t = _flat_int32(indexes, "indexes")
        out = np.zeros(t.size, dtype=np.int32)
        if self.failed:
            return out
        tables = self.tables
        code = _decode_kernel(self._words, self._state, t, tables.cdfs, tables.lengths,
                              tables.offsets, out)
        if code != _OK:
            self._fail(_MESSAGES[code])
        return out

    def finish(self) -> None:
        x, pos = int(self._state[0]), int(self._state[1])
        if not self.failed and (pos != self._words.size or x != _RANS_L):
            self._fail("entropy-coded data does not end where its last symbol does "
                       f"({self._words.size - pos} words left over)")


def encode(symbols, indexes, tables: CdfTables) -> bytes:
    encoder = Encoder(tables)
    encoder.encode(symbols, indexes)
    return encoder.flush()


def decode(data: bytes, indexes, tables: CdfTables, lenient: bool = False) -> np.ndarray:
    """All symbols of a stream (one encode call), checked to end exactly after the last."""
    decoder = Decoder(data, tables, lenient)
    symbols = decoder.decode(indexes)
    decoder.finish()
    return symbols
