"""Property tests: any decoder within the bound reproduces the encoder's indices exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprocodec.checksum import checksum
from reprocodec.safeguard import (
    DecisionQuantizer,
    ErrorBound,
    MalformedSideInfo,
    Mode,
    SafeguardError,
    protect,
    resolve,
)

PROTECTED_MODES = [Mode.FLAGS, Mode.SIMPLIFIED, Mode.SYNDROME]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scale_table_quantizer() -> DecisionQuantizer:
    """CompressAI's default scale table (0.11 .. 256, 64 log-spaced levels), minus the last."""
    table = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
    return DecisionQuantizer.from_thresholds(table[:-1])


@st.composite
def setups(draw):
    """A quantizer, a bound, and encoder values crowded around thresholds."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 3000))
    if draw(st.booleans()):
        step = draw(st.sampled_from([1.0, 1 / 32, 0.37, 10.0]))
        q = DecisionQuantizer.uniform(step, offset=draw(st.sampled_from([0.0, 0.25, -3.1])))
        e = step * draw(st.sampled_from([1e-7, 1e-4, 1e-2, 0.2]))
        bound = ErrorBound.absolute(e)
        centers = q.offset + (rng.integers(-40, 40, n) + 0.5) * step
        near_scale = np.full(n, e)
    else:
        q = scale_table_quantizer()
        e = draw(st.sampled_from([1e-7, 1e-5, 1e-3, 0.02]))
        bound = ErrorBound.relative(e)
        centers = q.thresholds[rng.integers(0, q.thresholds.size, n)]
        near_scale = e * centers
    # Half the elements within 3e of a threshold (the interesting zone), half anywhere.
    v_enc = centers + rng.uniform(-3, 3, n) * near_scale
    anywhere = rng.random(n) < 0.5
    v_enc[anywhere] = centers[anywhere] + rng.uniform(-1, 1, anywhere.sum()) * (
        50 * near_scale[anywhere] + 1.0
    )
    if bound.kind == "relative":
        v_enc = np.abs(v_enc) + 1e-3
    shape = draw(st.sampled_from([(n,), (1, n), (n, 1, 1)]))
    return q, bound, v_enc.reshape(shape), rng


def adversarial_decoder(q, bound, v_enc, rng):
    """Decoder values within the bound: at thresholds, one ulp either side, pushed across a
    threshold as far as the bound allows, or random within it."""
    flat = v_enc.ravel()
    allowed = bound.value if bound.kind == "absolute" else bound.value * np.abs(flat)
    near = q.nearest(flat)
    choice = rng.integers(0, 6, flat.size)
    v = flat + rng.uniform(-1, 1, flat.size) * allowed
    v = np.where(choice == 1, near.t, v)
    v = np.where(choice == 2, np.nextafter(near.t, np.inf), v)
    v = np.where(choice == 3, np.nextafter(near.t, -np.inf), v)
    v = np.where(choice == 4, flat + allowed * np.sign(near.t - flat), v)  # push across
    v = np.where(choice == 5, flat - allowed * np.sign(near.t - flat), v)
    # Keep strictly inside the promise (the rounding of flat +- allowed may add an ulp).
    v = np.clip(v, flat - allowed * (1 - 1e-9), flat + allowed * (1 - 1e-9))
    return v.reshape(v_enc.shape)


@SETTINGS
@given(setup=setups(), mode=st.sampled_from(PROTECTED_MODES))
def test_resolve_reproduces_encoder_indices_within_bound(setup, mode):
    q, bound, v_enc, rng = setup
    protected = protect(v_enc, q, bound, mode)
    assert protected.indices.shape == v_enc.shape
    v_dec = adversarial_decoder(q, bound, v_enc, rng)
    indices = resolve(v_dec, q, bound, protected.stream, mode)
    np.testing.assert_array_equal(indices, protected.indices)


@SETTINGS
@given(setup=setups())
def test_unprotected_decoder_can_disagree_and_protected_modes_agree(setup):
    """The point of it all: mode none follows the decoder's own floats."""
    q, bound, v_enc, rng = setup
    v_dec = adversarial_decoder(q, bound, v_enc, rng)
    plain = resolve(v_dec, q, bound, b"", Mode.NONE)
    np.testing.assert_array_equal(plain, q.index(v_dec))
    for mode in PROTECTED_MODES:
        p = protect(v_enc, q, bound, mode)
        np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, mode), p.indices)


def test_plain_rounding_flips_near_thresholds():
    """Sanity for the property above: the adversarial decoder really does flip indices."""
    rng = np.random.default_rng(1)
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(1e-3)
    v_enc = rng.integers(-5, 5, 5000) + 0.5 + rng.uniform(-1e-3, 1e-3, 5000)
    v_dec = v_enc + np.where(v_enc > np.round(v_enc - 0.5) + 0.5, -1e-3, 1e-3) * 0.999
    assert (q.index(v_dec) != q.index(v_enc)).sum() > 1000
    for mode in PROTECTED_MODES:
        p = protect(v_enc, q, bound, mode)
        np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, mode), p.indices)


@SETTINGS
@given(setup=setups(), mode=st.sampled_from(PROTECTED_MODES), factor=st.sampled_from([3, 30, 1e3]))
def test_past_the_bound_a_mismatch_is_detected(setup, mode, factor):
    q, bound, v_enc, rng = setup
    protected = protect(v_enc, q, bound, mode)
    flat = v_enc.ravel()
    allowed = bound.value if bound.kind == "absolute" else bound.value * np.abs(flat)
    v_dec = flat + rng.uniform(-factor, factor, flat.size) * allowed
    if bound.kind == "relative":
        v_dec = np.abs(v_dec)
    try:
        indices = resolve(v_dec.reshape(v_enc.shape), q, bound, protected.stream, mode)
    except SafeguardError:
        return  # detected by the safeguard itself
    same = np.array_equal(indices, protected.indices)
    assert same == (checksum(indices) == checksum(protected.indices))


def test_simplified_codes_risky_elements_with_the_canonical_index():
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.01)
    v = np.array([0.495, 0.505, 3.2, -0.505])
    p = protect(v, q, bound, Mode.SIMPLIFIED)
    np.testing.assert_array_equal(p.indices, [0, 0, 3, -1])  # bin below each near threshold
    assert p.risky_count == 3


def test_syndrome_costs_far_less_than_flags():
    rng = np.random.default_rng(2)
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(5e-4)
    v = rng.uniform(-100, 100, 300_000)
    flags = protect(v, q, bound, Mode.FLAGS)
    syndrome = protect(v, q, bound, Mode.SYNDROME)
    assert flags.risky_count > 200
    assert len(syndrome.stream) * 3 <= len(flags.stream)


def test_tensor_of_ten_million_elements():
    rng = np.random.default_rng(3)
    q, bound = DecisionQuantizer.uniform(1 / 32), ErrorBound.absolute(1e-6)
    v = rng.normal(0, 4, 10_000_000).astype(np.float32)
    v_dec = v + rng.uniform(-1e-6, 1e-6, v.size) * 0.99
    p = protect(v, q, bound, Mode.SYNDROME)
    np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, Mode.SYNDROME), p.indices)


def test_thresholds_closer_than_4e_are_rejected():
    with pytest.raises(SafeguardError, match="too loose"):
        protect(np.zeros(3), DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.26), "flags")
    with pytest.raises(SafeguardError, match="too loose"):
        protect(np.ones(3), scale_table_quantizer(), ErrorBound.relative(0.04), "syndrome")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    with pytest.raises(SafeguardError, match="NaN or infinity"):
        protect(np.array([1.0, bad]), DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.1),
                "syndrome")


def test_values_beyond_exact_grid_arithmetic_are_rejected():
    with pytest.raises(SafeguardError, match="beyond 2\\*\\*52 grid steps"):
        protect(np.array([1.0, 2.0**60]), DecisionQuantizer.uniform(1.0),
                ErrorBound.absolute(0.1), "syndrome")


def _assert_native_equals_reference(q, values, radius):
    from reprocodec.safeguard import native

    if not native.AVAILABLE:
        pytest.fail("numba is part of the server extra the tests run with")
    for v in (values, values.astype(np.float32)):
        for r in (None, radius):
            k, pos, near = q.index_and_near(v, r)
            native.AVAILABLE = False
            try:
                k_ref, pos_ref, near_ref = q.index_and_near(v, r)
            finally:
                native.AVAILABLE = True
            assert np.array_equal(k, k_ref) and np.array_equal(pos, pos_ref)
            assert np.array_equal(near.j, near_ref.j)
            assert np.array_equal(near.distance, near_ref.distance)


def test_thresholds_kernel_equals_numpy_reference():
    """Sorted thresholds (a CompressAI-like log-spaced scale table, relative bound): the numba
    pass and the numpy reference agree at, around and outside the thresholds."""
    t = np.exp(np.linspace(np.log(0.11), np.log(256), 63))
    q, bound = DecisionQuantizer.from_thresholds(t), ErrorBound.relative(1e-4)
    rng = np.random.default_rng(2)
    mid = (t[1:] + t[:-1]) / 2
    values = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), mid,
                             t * (1 + 1e-4), [0.0, -1.0, 1e6], rng.uniform(0, 300, 20_000)])
    _assert_native_equals_reference(q, values, bound.risky_radius)
    _assert_native_equals_reference(q, values, bound.encoder_radius)
    assert np.array_equal(q.index(t), np.arange(t.size))  # a threshold belongs to the bin below


@pytest.mark.parametrize("step, offset", [(1.0, 0.0), (1 / 32, 0.0), (0.3, -0.17)])
def test_uniform_kernel_equals_numpy_reference(step, offset):
    """The fused numba pass and its numpy twin agree on k and on the near positions, on values
    exactly at thresholds, one ulp either side, at +-0, negative and float32 inputs."""
    q = DecisionQuantizer.uniform(step, offset)
    rng = np.random.default_rng(1)
    t = offset + (np.arange(-300, 300) + 0.5) * step
    values = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf),
                             [0.0, -0.0, offset], rng.uniform(-100, 100, 20_000)])
    _assert_native_equals_reference(q, values, lambda t: 1e-3 * step)
    # And k is #{t : v > t}: an exact threshold belongs to the bin below, one ulp above it to
    # the bin above. (Only where the grid arithmetic is exact: a dyadic step, |u| >= 1. Elsewhere
    # the computed threshold is within an ulp or so of the true one, which RADIUS_SLACK covers.)
    if (step, offset) == (1.0, 0.0):
        exact = t[np.abs(t) >= 1]
        k = q.index(exact)
        assert np.array_equal(k, (exact - 0.5).astype(np.int64))  # threshold i + 1/2 -> bin i
        assert np.array_equal(q.index(np.nextafter(exact, np.inf)), k + 1)


def test_stream_for_another_mode_or_size_is_rejected():
    """Structural: no encoder wrote this stream for this tensor (INVALID_ARGUMENT)."""
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.01)
    p = protect(np.arange(10) + 0.5, q, bound, Mode.FLAGS)
    with pytest.raises(MalformedSideInfo, match="not a 'syndrome' stream"):
        resolve(np.arange(10) + 0.5, q, bound, p.stream, Mode.SYNDROME)
    with pytest.raises(MalformedSideInfo, match="for 10 elements"):
        resolve(np.arange(11) + 0.5, q, bound, p.stream, Mode.FLAGS)
    with pytest.raises(MalformedSideInfo, match="no side information"):
        resolve(np.arange(10) + 0.5, q, bound, p.stream, Mode.NONE)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), mode=st.sampled_from(PROTECTED_MODES))
def test_malformed_side_information_raises_only_safeguard_error(data, mode):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(0.02)
    v = rng.integers(-20, 20, 500) + 0.5 + rng.uniform(-0.05, 0.05, 500)
    stream = bytearray(protect(v, q, bound, mode).stream)
    action = data.draw(st.sampled_from(["flip", "truncate", "random", "extend"]))
    if action == "flip" and stream:
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "truncate":
        stream = stream[: data.draw(st.integers(0, len(stream)))]
    elif action == "random":
        stream = bytearray(data.draw(st.binary(max_size=200)))
    else:
        stream += data.draw(st.binary(min_size=1, max_size=50))
    try:
        out = resolve(v, q, bound, bytes(stream), mode)
    except SafeguardError:
        return
    assert out.shape == v.shape


def _full_rank(keys: np.ndarray, m: int) -> bool:
    """Direct check: H's first m rows restricted to these columns have full column rank."""
    from reprocodec.safeguard import elimination

    basis: dict = {}
    return all(elimination._insert(basis, col, 0) >= 0
               for col in elimination._columns(keys, m))


def _random_blocks(rng, sizes):
    keys = np.concatenate([np.sort(rng.choice(100_000, c, replace=False)) for c in sizes])
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return keys.astype(np.int64), starts


def test_block_rows_are_the_fewest_that_make_the_encoder_zone_independent():
    """Both implementations (numba kernel and Python ints) against a direct rank check."""
    from reprocodec.safeguard import elimination

    rng = np.random.default_rng(7)
    sizes = [0, 1, 2, 5, 30, 63, 64, 65, 130, 0, 200]
    keys, starts = _random_blocks(rng, sizes)
    rows = elimination.block_rows_python(keys, starts)
    if not elimination.native.AVAILABLE:
        pytest.fail("numba is part of the server extra the tests run with")
    assert np.array_equal(elimination.block_rows_native(keys, starts), rows)
    for b, c in enumerate(sizes):
        block = keys[starts[b]:starts[b + 1]]
        m = int(rows[b])
        assert m >= c and (c == 0 or _full_rank(block, m))
        assert m == c or not _full_rank(block, m - 1)


@pytest.mark.parametrize("impl", ["python", "native"])
def test_block_solve_recovers_any_flip_pattern_and_refuses_the_rest(impl):
    """The decoder's solve finds exactly the flipped columns of each block; a residual outside
    the column space, or more candidates than rows, is the clear error."""
    from reprocodec.safeguard import elimination, syndrome

    if impl == "native" and not elimination.native.AVAILABLE:
        pytest.fail("numba is part of the server extra the tests run with")
    solve = getattr(elimination, f"block_solve_{impl}")
    rng = np.random.default_rng(11)
    sizes = [0, 3, 40, 64, 90]
    keys, starts = _random_blocks(rng, sizes)
    rows = elimination.block_rows_python(keys, starts) + np.array([0, 0, 1, 0, 2])
    n_words = syndrome.words_for(int(rows.max()))
    truth = rng.random(keys.size) < 0.3
    residual = np.zeros((len(sizes), n_words), dtype=np.uint64)
    for b in range(len(sizes)):
        lo, hi = starts[b], starts[b + 1]
        cols = elimination._columns(keys[lo:hi], int(rows[b]))
        s = 0
        for j in np.flatnonzero(truth[lo:hi]):
            s ^= cols[j]
        residual[b] = syndrome.to_words(s, n_words)
    assert np.array_equal(solve(keys, starts, rows, residual), truth)
    # Block 1's 3 columns in 23 rows span 8 of 2^23 residuals: a random one is outside the span
    # (inconsistent: the decoder is outside the bound), and the solve says so instead of guessing.
    tall = rows.copy()
    tall[1] += 20
    bad = np.zeros_like(residual)
    bad[1, 0] = np.uint64(0b1011_0110_1110_0101_1101_011)
    with pytest.raises(SafeguardError, match="outside the error bound"):
        solve(keys, starts, tall, bad)
    too_few = rows.copy()
    too_few[2] = sizes[2] - 1
    with pytest.raises(SafeguardError, match="outside the error bound"):
        solve(keys, starts, too_few, residual)


def test_syndromes_native_equal_reference():
    from reprocodec.safeguard import syndrome

    if not syndrome.native.AVAILABLE:
        pytest.fail("numba is part of the server extra the tests run with")
    rng = np.random.default_rng(3)
    # both layouts (FEW_BLOCKS), a last grid row part-filled, fewer elements than blocks
    for n, n_blocks in ((1, 1), (1000, 7), (100_003, 160), (30_001, 1), (70_001, 3),
                        (5, 8), (600, 9)):
        k = rng.integers(-300, 300, n)
        rows = rng.integers(0, 200, n_blocks)
        native = syndrome.block_syndromes(k, n_blocks, rows)
        syndrome.native.AVAILABLE = False
        try:
            reference = syndrome.block_syndromes(k, n_blocks, rows)
        finally:
            syndrome.native.AVAILABLE = True
        assert np.array_equal(native, reference)


def test_light_install_without_numba_writes_and_reads_the_same_streams():
    """The client install has no numba: the Python references must produce byte-identical
    syndrome streams and resolve the native ones (and vice versa)."""
    import subprocess
    import sys

    script = """
import sys, numpy as np
from reprocodec.safeguard import DecisionQuantizer, ErrorBound, protect, resolve, syndrome
rng = np.random.default_rng(5)
v = rng.uniform(0, 255, 200_000)
q, b = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(2e-3)
p = protect(v, q, b, "syndrome")
other = bytes.fromhex(sys.stdin.read().strip() or p.stream.hex())
w = v + rng.uniform(-2e-3, 2e-3, v.size)
assert np.array_equal(resolve(w, q, b, other, "syndrome"), p.indices)
print(syndrome.native.AVAILABLE, p.stream.hex())
"""
    def run(pure: bool, stdin: str = "") -> tuple[str, str]:
        env = {**os.environ, "REPROCODEC_PURE_PYTHON_GF2": "1" if pure else ""}
        done = subprocess.run([sys.executable, "-c", script], input=stdin, env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        native, stream = done.stdout.split()
        return native, stream

    native_flag, native_stream = run(pure=False)
    pure_flag, pure_stream = run(pure=True, stdin=native_stream)
    assert (native_flag, pure_flag) == ("True", "False")
    assert pure_stream == native_stream
    run(pure=False, stdin=pure_stream)


def test_no_element_near_a_threshold_gives_nearests_empty_answer():
    """index_and_near on a uniform grid with no element within the radius skips nearest()'s
    arithmetic (most passes of an encode): the same empty arrays, dtypes and all, and the
    same k, as with an element near a threshold beside them."""
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(1e-3)
    far = np.array([0.0, 2.0, -3.0, 7.25])  # thresholds at x.5
    k, positions, near = q.index_and_near(far, bound.encoder_radius)
    reference = q.nearest(np.empty(0))
    assert positions.size == 0
    for got, want in ((near.j, reference.j), (near.t, reference.t),
                      (near.distance, reference.distance)):
        assert got.dtype == want.dtype and got.shape == want.shape == (0,)
    k_with, positions_with, near_with = q.index_and_near(np.append(far, 0.5004),
                                                         bound.encoder_radius)
    np.testing.assert_array_equal(k, k_with[:-1])
    assert positions_with.tolist() == [4] and near_with.j.tolist() == [0]
    protected = protect(far, q, bound, Mode.SYNDROME)
    assert protected.candidate_count == 0 and protected.indices.tolist() == k.tolist()
