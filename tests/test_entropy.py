"""reprocodec.entropy: byte-compatible with CompressAI's rANS on valid streams, memory-safe
and exact about where a stream ends on any other bytes."""

from __future__ import annotations

import numpy as np
import pytest

from reprocodec import entropy
from reprocodec.entropy import CdfTables, EntropyStreamError
from reprocodec.errors import InputError


def random_tables(rng: np.random.Generator, count: int = 12, longest: int = 30) -> CdfTables:
    cdfs = np.zeros((count, longest + 1), np.int32)
    lengths = np.zeros(count, np.int32)
    offsets = -rng.integers(0, 15, count).astype(np.int32)
    for t in range(count):
        n = int(rng.integers(3, longest + 1))
        p = rng.random(n - 1) + 0.01
        f = np.maximum(1, np.floor(p / p.sum() * (65536 - n))).astype(np.int64)
        f[-1] += 65536 - f.sum()
        cdfs[t, :n] = np.concatenate([[0], np.cumsum(f)])
        lengths[t] = n
    return CdfTables.from_arrays(cdfs, lengths, offsets)


def random_message(rng: np.random.Generator, tables: CdfTables, n: int, escapes: bool = True):
    indexes = rng.integers(0, tables.count, n).astype(np.int32)
    symbols = np.round(rng.normal(0, 8, n)).astype(np.int32)
    if escapes and n:  # far outside every table: escape (bypass) coding
        where = rng.integers(0, n, max(1, n // 50))
        symbols[where] = rng.integers(-(1 << 25), 1 << 25, where.size)
    return symbols, indexes


def compressai_encode(symbols, indexes, tables: CdfTables) -> bytes:
    from compressai.ans import RansEncoder

    return RansEncoder().encode_with_indexes(
        symbols.tolist(), indexes.tolist(), tables.cdfs.tolist(), tables.lengths.tolist(),
        tables.offsets.tolist())


@pytest.mark.parametrize("seed", range(6))
def test_streams_are_byte_identical_to_compressai(seed):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, int(rng.integers(1, 3000)))
    data = entropy.encode(symbols, indexes, tables)
    assert data == compressai_encode(symbols, indexes, tables)
    np.testing.assert_array_equal(entropy.decode(data, indexes, tables), symbols)


def test_incremental_decoding_matches_one_call():
    rng = np.random.default_rng(7)
    tables = random_tables(rng)
    parts = [random_message(rng, tables, n) for n in (5, 400, 1, 77)]
    encoder = entropy.Encoder(tables)
    for symbols, indexes in parts:
        encoder.encode(symbols, indexes)
    data = encoder.flush()
    decoder = entropy.Decoder(data, tables)
    for symbols, indexes in parts:
        np.testing.assert_array_equal(decoder.decode(indexes), symbols)
    decoder.finish()


def test_stream_must_end_exactly_after_its_last_symbol():
    rng = np.random.default_rng(1)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 500)
    data = entropy.encode(symbols, indexes, tables)
    with pytest.raises(EntropyStreamError, match="does not end"):
        entropy.decode(data + bytes(4), indexes, tables)
    with pytest.raises(EntropyStreamError):  # one symbol short of the stream
        entropy.decode(data, indexes[:-1], tables)
    with pytest.raises(EntropyStreamError, match="ends before"):
        entropy.decode(data[:8], indexes, tables)



def test_a_start_state_no_encoder_reaches_is_refused():
    """Every encoder's state stays in [2^31, 2^63), the stream's first 8 bytes too: a start
    outside is refused before any symbol (beyond 2^63 the first decode would wrap)."""
    rng = np.random.default_rng(2)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 200)
    data = entropy.encode(symbols, indexes, tables)
    assert (1 << 31) <= int.from_bytes(data[:8], "little") < (1 << 63)
    for start in (0, (1 << 31) - 1, 1 << 63, (1 << 64) - 1):
        with pytest.raises(EntropyStreamError, match="initial state"):
            entropy.decode(start.to_bytes(8, "little") + data[8:], indexes, tables)
    for start in ((1 << 31), (1 << 63) - 1):  # inside: decoded, then refused or not, safely
        try:
            entropy.decode(start.to_bytes(8, "little") + data[8:], indexes, tables)
        except EntropyStreamError as exc:
            assert "initial state" not in str(exc)

def test_every_truncation_and_mutation_is_refused_or_decodes_without_crashing():
    rng = np.random.default_rng(2)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 300)
    data = entropy.encode(symbols, indexes, tables)
    for cut in range(len(data)):
        with pytest.raises(EntropyStreamError):
            entropy.decode(data[:cut], indexes, tables)
    refused = 0
    for _ in range(2000):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            out = entropy.decode(bytes(mutated), indexes, tables)
        except EntropyStreamError:
            refused += 1
            continue
        assert out.shape == symbols.shape  # decodable bytes: some symbols, never a crash
    assert refused > 1500  # the end-of-stream check catches nearly every change


@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80])
def test_long_runs_of_one_byte_are_refused(fill):
    """0xFF runs read past the buffer in CompressAI's decoder; here they are refused."""
    rng = np.random.default_rng(3)
    tables = random_tables(rng)
    _, indexes = random_message(rng, tables, 5000)
    with pytest.raises(EntropyStreamError):
        entropy.decode(bytes([fill]) * 4096, indexes, tables)


def test_escape_longer_than_any_encoder_writes_is_refused():
    # One table whose symbol 0 is the escape with nearly all the mass: every state decodes
    # escapes, and a state of all-ones nibbles signals an endless escape length.
    tables = CdfTables.from_arrays(np.array([[0, 1, 65536]]), [3], [0])
    # low nibbles 0xF...: escape-count runs of 15 (a start below 2^63, as every encoder's)
    state = (1 << 62) | ((1 << 60) - 1)
    data = np.array([state & 0xFFFFFFFF, state >> 32], "<u4").tobytes() + b"\xff" * 64
    with pytest.raises(EntropyStreamError, match="escape"):
        entropy.decode(data, np.zeros(4, np.int32), tables)


def test_table_index_out_of_range_is_refused_not_read():
    rng = np.random.default_rng(4)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 50)
    data = entropy.encode(symbols, indexes, tables)
    bad = indexes.copy()
    bad[10] = tables.count
    with pytest.raises(EntropyStreamError, match="index"):
        entropy.decode(data, bad, tables)
    with pytest.raises(InputError):
        entropy.encode(symbols, bad, tables)


def test_encoder_refuses_what_no_decoder_could_read():
    tables = CdfTables.from_arrays(np.array([[0, 30000, 65536, 65536]]), [4], [0])
    with pytest.raises(InputError, match="range"):  # binary table without an escape
        entropy.encode(np.array([2]), np.array([0]), tables)
    wide = CdfTables.from_arrays(np.array([[0, 30000, 60000, 65536]]), [4], [0])
    with pytest.raises(InputError, match="range"):
        entropy.encode(np.array([1 << 27]), np.array([0]), wide)


@pytest.mark.parametrize("cdfs, lengths", [
    ([[0, 100, 100, 65536]], [4]),  # a regular symbol without probability
    ([[1, 100, 65536]], [3]),  # does not start at 0
    ([[0, 100, 65535]], [3]),  # does not end at 2^16
    ([[0, 100, 65536]], [5]),  # length beyond the row
])
def test_invalid_tables_are_refused_at_load(cdfs, lengths):
    with pytest.raises(InputError):
        CdfTables.from_arrays(np.array(cdfs), lengths, [0])


def test_lenient_decoding_returns_zeros_after_a_break_instead_of_raising():
    rng = np.random.default_rng(5)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 200)
    data = entropy.encode(symbols, indexes, tables)
    decoder = entropy.Decoder(data[:12], tables, lenient=True)
    out = decoder.decode(indexes)
    decoder.finish()
    assert decoder.failed and out.shape == symbols.shape


def test_python_reference_kernels_agree_with_the_compiled_ones():
    """Without numba (light install) the same functions run as Python: same bytes."""
    if not hasattr(entropy._encode_kernel, "py_func"):
        pytest.fail("numba is part of the server install; the kernels must be compiled")
    rng = np.random.default_rng(6)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 300)
    items = entropy._count_items.py_func(symbols, indexes, tables.cdfs, tables.lengths,
                                          tables.offsets)
    out = np.zeros(items + 2, np.uint32)
    first = entropy._encode_kernel.py_func(symbols, indexes, tables.cdfs, tables.lengths,
                                           tables.offsets, out)
    data = out[first:].astype("<u4").tobytes()
    assert data == entropy.encode(symbols, indexes, tables)
    words = np.frombuffer(data, "<u4").astype(np.uint32)
    state = np.array([int(words[0]) | int(words[1]) << 32, 2], np.uint64)
    decoded = np.zeros(symbols.size, np.int32)
    code = entropy._decode_kernel.py_func(words, state, indexes, tables.cdfs, tables.lengths,
                                          tables.offsets, decoded)
    assert code == 0 and int(state[1]) == words.size
    np.testing.assert_array_equal(decoded, symbols)


@pytest.mark.parametrize("compiled", [True, False])
def test_renormalize_takes_a_word_only_when_needed_and_never_past_the_end(compiled):
    """The branch-free refill reads at min(pos, last) whatever happens: a state at or above
    2^31 keeps its words, one below takes the next word, and with none left it reports the
    end (pos -1) and keeps the state."""
    renormalize = entropy._renormalize if compiled else entropy._renormalize.py_func
    words = np.array([7, 0xDEADBEEF], np.uint32)
    high, low = np.uint64(1 << 40), np.uint64(12345)
    assert renormalize(words, high, 1) == (high, 1)
    assert renormalize(words, high, 2) == (high, 2)
    assert renormalize(words, low, 1) == ((12345 << 32) | 0xDEADBEEF, 2)
    assert renormalize(words, low, 2) == (low, -1)


@pytest.mark.parametrize("compiled", [True, False])
def test_emit_keeps_the_word_only_when_the_state_is_too_large(compiled):
    """The branch-free emit writes the low word at pos - 1 either way; only a state at or
    above the bound moves pos, so a word written for nothing is overwritten later."""
    emit = entropy._emit if compiled else entropy._emit.py_func
    out = np.zeros(4, np.uint32)
    x = np.uint64((5 << 32) | 9)
    assert emit(out, 4, x, x + np.uint64(1)) == (x, 4)
    assert emit(out, 4, x, x) == (np.uint64(5), 3) and out[3] == 9


def test_indexes_beyond_32_bits_are_refused_not_wrapped():
    rng = np.random.default_rng(8)
    tables = random_tables(rng)
    symbols, indexes = random_message(rng, tables, 20)
    data = entropy.encode(symbols, indexes, tables)
    wrapped = indexes.astype(np.int64)
    wrapped[3] += 1 << 32  # would wrap back onto a valid table as int32
    with pytest.raises(InputError, match="32-bit"):
        entropy.decode(data, wrapped, tables)
    with pytest.raises(InputError, match="32-bit"):
        entropy.encode(symbols, wrapped, tables)


def test_code_length_table_is_integer_log2_within_one_unit():
    """The encoders' choice between coders compares these integers: exact powers of two,
    never under the true length, at most one 2^-16-bit unit over it."""
    table = entropy.code_length_table()
    assert table.dtype == np.int64 and table.size == (1 << entropy.PRECISION) + 1
    unit = 1 << entropy.COST_FRACTION
    for power in range(entropy.PRECISION + 1):
        assert table[1 << power] == (entropy.PRECISION - power) * unit
    f = np.arange(1, table.size)
    true = (entropy.PRECISION - np.log2(f)) * unit
    assert np.all(table[1:] >= np.floor(true)) and np.all(table[1:] <= np.ceil(true) + 1)
    assert np.all(np.diff(table[1:]) <= 0)  # a likelier symbol never costs more
    assert table[0] > 40 * table[1]  # a zero frequency is never chosen
