"""Side information as a trust boundary: the header-less body API, and crafted streams that no
encoder writes, each refused with MalformedSideInfo before any expensive work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprocodec.safeguard import (
    DecisionQuantizer,
    ErrorBound,
    MalformedSideInfo,
    Mode,
    SafeguardError,
    SyndromeParts,
    elimination,
    protect,
    resolve,
    resolve_body,
    resolve_syndromes,
)
from reprocodec.safeguard import syndrome as gf2
from reprocodec.safeguard.bitio import BitReader, BitWriter, decode_varint, encode_varint

PROTECTED_MODES = [Mode.FLAGS, Mode.SIMPLIFIED, Mode.SYNDROME]
UNIT, TIGHT = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.02)


# ---------------------------------------------------------------- body API ------------------

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000),
       relative=st.booleans(), mode=st.sampled_from(list(Mode)))
def test_body_and_stream_resolve_alike(seed, n, relative, mode):
    rng = np.random.default_rng(seed)
    if relative:
        q = DecisionQuantizer.from_thresholds(np.exp(np.linspace(np.log(0.11), np.log(256), 63)))
        bound = ErrorBound.relative(1e-3)
        v = q.thresholds[rng.integers(0, 63, n)] * (1 + rng.uniform(-3e-3, 3e-3, n))
        v_dec = v * (1 + rng.uniform(-1, 1, n) * 1e-3 * 0.999)
    else:
        q, bound = UNIT, TIGHT
        v = rng.integers(-30, 30, n) + 0.5 + rng.uniform(-0.06, 0.06, n)
        v_dec = v + rng.uniform(-1, 1, n) * 0.02 * 0.999
    p = protect(v, q, bound, mode)
    from_stream = resolve(v_dec, q, bound, p.stream, mode)
    from_body = resolve_body(v_dec, q, bound, p.body, mode)
    np.testing.assert_array_equal(from_body, from_stream)
    if mode is not Mode.NONE:  # mode none follows the decoder's own floats
        np.testing.assert_array_equal(from_stream, p.indices)
    if mode is not Mode.NONE and p.body:
        assert p.stream.endswith(p.body) and len(p.stream) - len(p.body) == 1 + len(
            encode_varint(n))


# What protect writes after the header when nothing is risky (documented in modes).
NOTHING_RISKY = {Mode.FLAGS: b"\x00\x00", Mode.SIMPLIFIED: b"\x00\x00", Mode.SYNDROME: b"\x00"}


@pytest.mark.parametrize("mode", PROTECTED_MODES)
def test_nothing_risky_is_the_empty_body(mode):
    v = np.arange(40, dtype=np.float64) + 0.1  # every element far from the thresholds at k+1/2
    p = protect(v, UNIT, TIGHT, mode)
    assert p.risky_count == 0 and p.candidate_count == 0
    header = bytes([p.stream[0]]) + encode_varint(v.size)
    assert p.stream == header + NOTHING_RISKY[mode]
    assert p.body == b""
    v_dec = v + 0.019
    for body in (b"", NOTHING_RISKY[mode]):
        np.testing.assert_array_equal(resolve_body(v_dec, UNIT, TIGHT, body, mode), p.indices)
    # The empty body means nothing risky: where something is risky it is not the same.
    w = v.copy()
    w[3] = 3.49
    p = protect(w, UNIT, TIGHT, mode)
    assert p.body != b"" and p.risky_count == 1


def test_mode_none_has_no_body():
    p = protect(np.arange(5.0), UNIT, TIGHT, Mode.NONE)
    assert p.stream == p.body == b""
    np.testing.assert_array_equal(resolve_body(np.arange(5.0), UNIT, TIGHT, b"", "none"),
                                  p.indices)
    with pytest.raises(MalformedSideInfo, match="no side information"):
        resolve_body(np.arange(5.0), UNIT, TIGHT, b"\x00", "none")


# ---------------------------------------------------------------- header and framing --------

def _risky_tensor(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20, 20, n) + 0.5 + rng.uniform(-0.05, 0.05, n)


@pytest.mark.parametrize("mode", PROTECTED_MODES)
def test_header_errors_are_malformed(mode):
    v = _risky_tensor()
    stream = protect(v, UNIT, TIGHT, mode).stream
    cases = {
        "not a": bytes([9]) + stream[1:],
        "reprocodec 0.1": bytes([3]) + stream[1:],
        "for 201 elements": stream[:1] + encode_varint(201) + stream[3:],
        "truncated inside a varint": stream[:1],
    }
    for message, bad in cases.items():
        with pytest.raises(MalformedSideInfo, match=message):
            resolve(v, UNIT, TIGHT, bad, mode)


@pytest.mark.parametrize("mode", PROTECTED_MODES)
def test_trailing_bytes_are_malformed(mode):
    v = _risky_tensor()
    p = protect(v, UNIT, TIGHT, mode)
    for extra in (b"\x00", b"\x01", b"\xff" * 7):
        with pytest.raises(MalformedSideInfo, match="trailing"):
            resolve(v, UNIT, TIGHT, p.stream + extra, mode)
    # A set padding bit in the last byte is garbage too (the writer pads with zeros).
    body = p.body
    used = _bits_used(body, mode, v.size)
    if used % 8:
        bad = body[:-1] + bytes([body[-1] | 0x80])
        with pytest.raises(MalformedSideInfo, match="trailing"):
            resolve_body(v, UNIT, TIGHT, bad, mode)


def _bits_used(body: bytes, mode: Mode, n: int) -> int:
    count, pos = decode_varint(body, 0)
    reader = BitReader(body[pos:])
    if mode is Mode.SYNDROME:
        reader.read_int(int(reader.read_rice(count).sum()))
    else:
        reader.read_rice(count)
        if mode is Mode.FLAGS:
            reader.read_bits(count, 1)
    return 8 * pos + (8 * (len(body) - pos) - reader.remaining)


# ---------------------------------------------------------------- bit readers ---------------

def test_varint_readers_are_bounded():
    with pytest.raises(MalformedSideInfo, match="overlong"):
        decode_varint(b"\xff" * 1000 + b"\x01", 0)
    with pytest.raises(MalformedSideInfo, match="non-minimal"):
        decode_varint(b"\x80\x00", 0)
    assert decode_varint(encode_varint(2**63 - 1), 0) == (2**63 - 1, 9)
    with pytest.raises(MalformedSideInfo, match="overlong"):
        decode_varint(encode_varint(2**63), 0)
    with pytest.raises(MalformedSideInfo, match="truncated"):
        decode_varint(b"\x80\x80", 0)


def test_bit_readers_refuse_counts_beyond_the_stream():
    data = b"\xff" * 1000  # a unary run over the whole stream, never terminated
    with pytest.raises(MalformedSideInfo, match="unary"):
        BitReader(data).read_unary(3)
    with pytest.raises(MalformedSideInfo, match="truncated"):
        BitReader(data).read_unary(2**60)
    with pytest.raises(MalformedSideInfo, match="truncated"):
        BitReader(data).read_rice(2**60)
    with pytest.raises(MalformedSideInfo, match="truncated"):
        BitReader(data).read_bits(2**60, 1)
    with pytest.raises(MalformedSideInfo, match="truncated"):
        BitReader(data).read_int(2**60)
    # A parameter of 63 is past the largest written (62).
    w = BitWriter()
    w.write_bits(np.array([63]), 6)
    w.write_raw(np.zeros(8, np.uint8))
    with pytest.raises(MalformedSideInfo, match="Rice parameter"):
        BitReader(w.getvalue()).read_rice(1)


@pytest.mark.parametrize("mode", [Mode.FLAGS, Mode.SIMPLIFIED])
def test_risky_map_counts_are_checked(mode):
    v = _risky_tensor(100)
    for body, message in ((encode_varint(2**60), "claims"),
                          (encode_varint(101) + b"\x00" * 20, "claims"),
                          (encode_varint(100) + b"\x00", "truncated"),
                          (encode_varint(3) + b"\xff" * 100, "Rice parameter"),
                          (encode_varint(3) + b"\x3c" + b"\xff" * 100, "truncated"),
                          (encode_varint(0) + b"", "truncated")):  # count 0 without parameter
        with pytest.raises(MalformedSideInfo, match=message):
            resolve_body(v, UNIT, TIGHT, body, mode)


# ---------------------------------------------------------------- syndrome caps -------------

def _syndrome_body(n_blocks: int, rows: list[int] | None = None, syndrome_bits: int | None = None,
                   extra: bytes = b"") -> bytes:
    w = BitWriter()
    if rows is not None:
        w.write_rice(np.array(rows, dtype=np.int64))
        w.write_raw(np.zeros(sum(rows) if syndrome_bits is None else syndrome_bits, np.uint8))
    return encode_varint(n_blocks) + w.getvalue() + extra


def _no_elimination(monkeypatch):
    """Make any elimination or decoder-tensor pass fail the test: refusals come first."""
    def boom(*args, **kwargs):
        raise AssertionError("expensive work ran before the stream was refused")

    monkeypatch.setattr(elimination, "block_solve", boom)
    monkeypatch.setattr(gf2, "block_syndromes", boom)
    monkeypatch.setattr(DecisionQuantizer, "index_and_near", boom)


@pytest.mark.parametrize("body, message", [
    (_syndrome_body(1001), "more syndrome blocks than elements"),
    (_syndrome_body(2**62), "more syndrome blocks than elements"),
    (_syndrome_body(900, [1] * 10), "truncated"),  # 900 row counts cannot fit in a few bytes
    (_syndrome_body(4, [30, 30, 30, 20], syndrome_bits=90), "truncated"),
    (_syndrome_body(1, [1000 + 65]), "impossible syndrome size"),  # > grid rows + 64
    (_syndrome_body(10, [101 + 64] * 10), "impossible syndrome size"),
    (_syndrome_body(2, [3, 3], extra=b"\x00"), "trailing"),
])
def test_syndrome_structure_is_checked_before_any_work(monkeypatch, body, message):
    v = _risky_tensor(1000)
    _no_elimination(monkeypatch)
    with pytest.raises(MalformedSideInfo, match=message):
        resolve_body(v, UNIT, TIGHT, body, Mode.SYNDROME)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000))
def test_syndrome_fields_resolve_as_the_body(seed, n):
    """Protected.syndromes, what a caller that frames the body's fields itself keeps, resolves
    through resolve_syndromes to the body's indices; None exactly when the body is empty."""
    rng = np.random.default_rng(seed)
    v = rng.integers(-30, 30, n) + 0.5 + rng.uniform(-0.06, 0.06, n)
    v_dec = v + rng.uniform(-1, 1, n) * 0.02 * 0.999
    p = protect(v, UNIT, TIGHT, Mode.SYNDROME)
    assert (p.syndromes is None) == (p.body == b"")
    parts = p.syndromes or SyndromeParts(np.zeros(0, np.int64), [])
    np.testing.assert_array_equal(resolve_syndromes(v_dec, UNIT, TIGHT, parts), p.indices)
    np.testing.assert_array_equal(resolve_body(v_dec, UNIT, TIGHT, p.body, Mode.SYNDROME),
                                  p.indices)
    if p.syndromes is not None:
        assert all(0 <= s < 1 << m for s, m in zip(p.syndromes.sent, p.syndromes.rows.tolist(),
                                                   strict=True))


@pytest.mark.parametrize("rows, sent, message", [
    ([3, 3], [1], "a row count per block"),
    ([[3]], [1], "a row count per block"),
    ([3], [8], "longer than its rows"),
    ([3], [-1], "longer than its rows"),
    ([1] * 1001, [0] * 1001, "more syndrome blocks than elements"),
    ([1000 + 65], [0], "impossible syndrome size"),
])
def test_syndrome_fields_are_checked_before_any_work(monkeypatch, rows, sent, message):
    """resolve_syndromes refuses fields no encoder writes as resolve_body does, before the
    tensor pass or any elimination."""
    v = _risky_tensor(1000)
    _no_elimination(monkeypatch)
    with pytest.raises(MalformedSideInfo, match=message):
        resolve_syndromes(v, UNIT, TIGHT, SyndromeParts(np.array(rows, dtype=np.int64), sent))


def test_total_rows_cap(monkeypatch):
    """5 elements in 3 blocks: each block may have up to 2 + 64 rows, but no encoder writes
    more than n + 64 rows per block in all."""
    _no_elimination(monkeypatch)
    with pytest.raises(MalformedSideInfo, match="more syndrome rows than elements"):
        resolve_body(_risky_tensor(5), UNIT, TIGHT, _syndrome_body(3, [66, 66, 66]), "syndrome")


def test_work_budget_refuses_a_tall_block_before_eliminating(monkeypatch):
    """One block of 16384 rows over 20,000 decoder candidates: every structural cap holds (the
    syndrome bits are all there), but eliminating it would take ~1e11 word operations. The
    decoder refuses from the row counts alone."""
    n, m = 20_000, gf2.MAX_BLOCK_ROWS
    v = np.arange(n) + 0.5  # every element at a threshold: all of them decoder candidates
    body = _syndrome_body(1, [m])
    assert gf2.decoder_work(n, 1, np.array([m])) > 1000 * gf2.work_budget(n)
    _no_elimination(monkeypatch)
    with pytest.raises(MalformedSideInfo, match="syndrome work"):
        resolve_body(v, UNIT, TIGHT, body, Mode.SYNDROME)


def test_absurd_declared_sizes_are_refused_without_work(monkeypatch):
    """A few hostile bytes declaring huge sizes on a large tensor: each is refused as malformed,
    and neither the tensor pass nor any elimination runs (so the refusal is immediate)."""
    n = 1_000_000
    v = np.zeros(n)
    header = {mode: protect(np.zeros(1), UNIT, TIGHT, mode).stream[:1] + encode_varint(n)
              for mode in PROTECTED_MODES}
    _no_elimination(monkeypatch)
    monkeypatch.setattr(DecisionQuantizer, "index", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("tensor pass ran")))
    streams = [
        (Mode.FLAGS, header[Mode.FLAGS] + encode_varint(2**62)),
        (Mode.FLAGS, header[Mode.FLAGS] + encode_varint(n) + b"\x3f" + b"\xff" * 64),
        (Mode.SIMPLIFIED, header[Mode.SIMPLIFIED] + b"\xff" * 1000),
        (Mode.SYNDROME, header[Mode.SYNDROME] + encode_varint(n) + b"\x00" * 16),
        (Mode.SYNDROME, header[Mode.SYNDROME] + _syndrome_body(1, [2**40], syndrome_bits=8)),
        (Mode.SYNDROME, bytes([4]) + encode_varint(2**60)),
    ]
    for mode, stream in streams:
        with pytest.raises(MalformedSideInfo):
            resolve(v, UNIT, TIGHT, stream, mode)


def test_decoder_outside_the_bound_is_not_malformed():
    """Valid side information that this decoder's values cannot satisfy is a plain
    SafeguardError (DATA_LOSS), not MalformedSideInfo."""
    v = _risky_tensor(2000, seed=3)
    p = protect(v, UNIT, TIGHT, Mode.SYNDROME)
    far = v + np.random.default_rng(4).uniform(-0.3, 0.3, v.size)  # 15x the bound
    with pytest.raises(SafeguardError) as info:
        resolve(far, UNIT, TIGHT, p.stream, Mode.SYNDROME)
    assert not isinstance(info.value, MalformedSideInfo)
    for mode in (Mode.FLAGS, Mode.SIMPLIFIED):
        p = protect(v, UNIT, TIGHT, mode)
        with pytest.raises(SafeguardError, match="outside the error bound") as info:
            resolve(v + 0.45, UNIT, TIGHT, p.stream, mode)  # named elements mid-bin
        assert not isinstance(info.value, MalformedSideInfo)


# ---------------------------------------------------------------- honest encoders fit -------

def test_dense_zone_gets_more_blocks_to_fit_the_budget():
    """Every element in the encoder's zone: choose_block_count's ~64 candidates per block
    would cost the decoder more than the budget, so protect doubles the block count; the
    stream it writes passes every cap and resolves."""
    n = 400_000
    rng = np.random.default_rng(8)
    v = rng.integers(-50, 50, n) + 0.5 + rng.uniform(-0.01, 0.01, n)
    zone = np.arange(n)
    first = gf2.choose_block_count(n, zone)
    _, keys, starts = gf2.split_blocks(zone, first)
    assert gf2.decoder_work(n, first, elimination.block_rows(keys, starts)) > gf2.work_budget(n)
    p = protect(v, UNIT, TIGHT, Mode.SYNDROME)
    n_blocks, pos = decode_varint(p.body, 0)
    rows = BitReader(p.body[pos:]).read_rice(n_blocks)
    assert n_blocks > first
    assert gf2.decoder_work(n, n_blocks, rows) <= gf2.work_budget(n)
    v_dec = v + rng.uniform(-1, 1, n) * 0.02 * 0.999
    np.testing.assert_array_equal(resolve(v_dec, UNIT, TIGHT, p.stream, "syndrome"), p.indices)


def test_one_block_per_element_always_fits():
    """The encoder's last resort (n blocks): every block holds one element of grid row 0,
    whose column's lowest set bit is bit 0, so each needs 1 row and the work is 2n."""
    keys, starts = np.zeros(5, np.int64), np.arange(6, dtype=np.int64)
    rows = elimination.block_rows(keys, starts)
    assert rows.tolist() == [1] * 5
    assert elimination.block_rows_python(keys, starts).tolist() == [1] * 5
    n = 10**6
    assert gf2.decoder_work(n, n, np.ones(n, np.int64)) == 2 * n <= gf2.work_budget(n)


def test_too_few_rows_anywhere_is_refused_before_any_elimination(monkeypatch):
    """A later block with more decoder candidates than rows stops the solve before the
    (possibly large) earlier blocks are eliminated; it is the decoder's disagreement
    (SafeguardError), since the stream itself is well formed."""
    keys = np.arange(70, dtype=np.int64)
    starts = np.array([0, 60, 70], dtype=np.int64)
    rows = np.array([64, 5], dtype=np.int64)

    def boom(*args, **kwargs):
        raise AssertionError("an elimination ran")

    monkeypatch.setattr(elimination, "block_solve_native", boom)
    monkeypatch.setattr(elimination, "block_solve_python", boom)
    with pytest.raises(SafeguardError, match="more candidates than rows") as info:
        elimination.block_solve(keys, starts, rows, np.zeros((2, 1), np.uint64))
    assert not isinstance(info.value, MalformedSideInfo)


# The side information of two fixed tensors, as 0.8.1 wrote it (sha256, first 16 hex digits,
# and bytes), by (quantizer, mode): a uniform grid and sorted thresholds
_WRITTEN = {
    ("uniform", Mode.SYNDROME): (18, "caa907a60f52cb25"),
    ("uniform", Mode.FLAGS): (59, "805114219917d1ec"),
    ("uniform", Mode.SIMPLIFIED): (54, "144ad55473ca68d1"),
    ("thresholds", Mode.SYNDROME): (302, "3efefd7a7c6ae10b"),
    ("thresholds", Mode.FLAGS): (861, "3db7b2548a3907c4"),
    ("thresholds", Mode.SIMPLIFIED): (733, "cde7b12b40973455"),
}


@pytest.mark.parametrize("quantizer", ["uniform", "thresholds"])
@pytest.mark.parametrize("mode", PROTECTED_MODES)
def test_the_side_information_bytes_are_those_written_before(quantizer, mode):
    """Every mode writes the bytes 0.8.1 wrote for the same tensor: syndrome mode's stream is
    now written from its fields when first read (Protected.stream), and only then; the body
    and the fields agree with it (the tensor has blocks: 2 and 33 of them)."""
    import hashlib

    v = np.arange(20000, dtype=np.float64) * 0.4999 + np.sin(np.arange(20000)) * 0.3
    q, bound = {"uniform": (UNIT, ErrorBound.absolute(1e-3)),
                "thresholds": (DecisionQuantizer.from_thresholds(np.arange(1, 9000) * 2.0 + 0.5),
                               ErrorBound.relative(1e-5))}[quantizer]
    p = protect(v, q, bound, mode)
    if mode is Mode.SYNDROME:
        assert p.written is None and "stream" not in vars(p)  # not written yet
        assert p.syndromes is not None and len(p.syndromes.sent) in (2, 33)
    size, digest = _WRITTEN[quantizer, mode]
    assert (len(p.stream), hashlib.sha256(p.stream).hexdigest()[:16]) == (size, digest)
    assert p.stream.endswith(p.body) and len(p.body) == size - 4
    np.testing.assert_array_equal(resolve(v, q, bound, p.stream, mode), p.indices)
