"""Relative bounds at the spacing limit: an element can be nearer one threshold yet inside the
(larger) radius of its other neighbour. Every mode must still reproduce the encoder's indices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprocodec.safeguard import (
    DecisionQuantizer,
    ErrorBound,
    Mode,
    SafeguardError,
    protect,
    resolve,
)

PROTECTED_MODES = [Mode.FLAGS, Mode.SIMPLIFIED, Mode.SYNDROME]


def tight_thresholds(bound: ErrorBound, first: float, count: int, margin: float) -> np.ndarray:
    """Positive thresholds spaced `margin` (relative) above what check_bound allows, mirrored
    to negative ones: t_{i+1} - t_i = margin * (E(t_i) + E(t_{i+1})) with E(t) = c|t|."""
    c = float(np.asarray(bound.encoder_radius(np.array([1.0])))[0])
    ratio = (1 + margin * c) / (1 - margin * c)
    positive = first * ratio ** np.arange(count)
    return np.concatenate([-positive[::-1], positive])


@st.composite
def limit_setups(draw):
    e = draw(st.sampled_from([1e-3, 0.01, 0.05, 0.1, 0.2, 0.24]))
    bound = ErrorBound.relative(e)
    margin = draw(st.sampled_from([1 + 1e-6, 1 + 1e-3, 1.05]))
    t = tight_thresholds(bound, draw(st.sampled_from([0.11, 1.0, 37.0])), 6, margin)
    q = DecisionQuantizer.from_thresholds(t)
    q.check_bound(bound)  # really admissible, just
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 2000))
    # Encoder values anywhere: a third uniform over the whole range, the rest within a gap of a
    # threshold (where the neighbours' zones meet).
    span = 1.2 * float(np.abs(t).max())
    v_enc = rng.uniform(-span, span, n)
    near = rng.random(n) < 2 / 3
    centre = t[rng.integers(0, t.size, n)]
    v_enc[near] = (centre * (1 + rng.uniform(-1, 1, n) * min(0.9, 3 * e)))[near]
    # Decoder values anywhere within the bound, half of them at its edge (pushed away from or
    # towards a neighbour as far as the promise allows).
    allowed = e * np.abs(v_enc) * (1 - 1e-9)
    w = rng.uniform(-1, 1, n)
    edge = rng.random(n) < 0.5
    w[edge] = np.sign(w[edge])
    v_dec = v_enc + w * allowed
    return q, bound, v_enc, v_dec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=limit_setups(), mode=st.sampled_from(PROTECTED_MODES))
def test_relative_bound_at_the_spacing_limit(setup, mode):
    q, bound, v_enc, v_dec = setup
    p = protect(v_enc, q, bound, mode)
    np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, mode), p.indices)


def _crossing_example(e: float = 0.2):
    """One hand-built element for each way the nearest-threshold rule fails (see the module
    docstring); thresholds 1 and its neighbour above at the spacing limit."""
    bound = ErrorBound.relative(e)
    t = tight_thresholds(bound, 1.0, 2, 1 + 1e-6)[2:]  # two positive thresholds t0 < t1
    q = DecisionQuantizer.from_thresholds(t)
    r1 = float(np.asarray(bound.risky_radius(t[1:]))[0])
    # Encoder just inside t1's risky zone from below; decoder pushed down by the whole bound:
    # past the midpoint, nearer t0, although the threshold that matters is t1.
    v_enc = np.array([t[1] - 0.99 * r1])
    v_dec = v_enc - e * np.abs(v_enc) * (1 - 1e-9)
    assert abs(v_dec[0] - t[0]) < abs(v_dec[0] - t[1])
    return q, bound, v_enc, v_dec


@pytest.mark.parametrize("mode", PROTECTED_MODES)
def test_decoder_nearer_the_other_threshold(mode):
    q, bound, v_enc, v_dec = _crossing_example()
    p = protect(v_enc, q, bound, mode)
    np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, mode), p.indices)


def test_encoder_zone_reaches_past_the_midpoint():
    """An encoder value nearer t0 but within t1's encoder radius belongs to the syndrome zone
    (a decoder within the bound can be within t1's risky radius), reported with t1."""
    bound = ErrorBound.relative(0.2)
    t = tight_thresholds(bound, 1.0, 2, 1 + 1e-6)[2:]
    q = DecisionQuantizer.from_thresholds(t)
    e1 = float(np.asarray(bound.encoder_radius(t[1:]))[0])
    v = np.array([t[1] - 0.99 * e1])
    assert abs(v[0] - t[0]) < abs(v[0] - t[1])
    _, zone, near = q.index_and_near(v, bound.encoder_radius)
    assert zone.tolist() == [0] and near.j.tolist() == [1]
    assert near.distance[0] == pytest.approx(0.99 * e1)
    # ... and a decoder value there is in the decoder's zone for t1 only when within t1's
    # risky radius: this one is not.
    _, zone_d, _ = q.index_and_near(v, bound.risky_radius)
    assert zone_d.size == 0


def test_decoder_outside_every_encoder_radius_is_refused():
    """flags/simplified: a named element whose decoder value is within no threshold's encoder
    radius shows that the decoder is outside the bound."""
    q, bound, v_enc, _ = _crossing_example()
    far = np.array([0.3 * q.thresholds[0]])  # below t0's encoder radius (0.56 t0 at e 0.2)
    for mode in (Mode.FLAGS, Mode.SIMPLIFIED):
        p = protect(v_enc, q, bound, mode)
        with pytest.raises(SafeguardError, match="outside the error bound"):
            resolve(far, q, bound, p.stream, mode)


def test_syndrome_decoder_zone_stays_inside_the_encoder_zone():
    """Element b: the decoder is within t1's risky radius, so b is a decoder candidate; its
    encoder value is nearer t0, yet within t1's encoder radius, so it must be an encoder
    candidate too (else the block has more decoder candidates than rows: a false 'outside the
    error bound' before the fix). Element a really crosses t1."""
    e = 0.2
    bound = ErrorBound.relative(e)
    t = tight_thresholds(bound, 1.0, 2, 1 + 1e-6)[2:]
    q = DecisionQuantizer.from_thresholds(t)
    r1 = float(np.asarray(bound.risky_radius(t[1:]))[0])
    b_dec = t[1] - 0.99 * r1
    v_enc = np.array([t[1] + 0.5 * r1, b_dec / (1 + e * (1 - 1e-9))])
    v_dec = np.array([t[1] - 1e-9, b_dec])
    assert np.all(np.abs(v_dec - v_enc) <= e * np.abs(v_enc))
    assert abs(v_enc[1] - t[0]) < abs(v_enc[1] - t[1])
    p = protect(v_enc, q, bound, Mode.SYNDROME)
    assert p.candidate_count == 2
    np.testing.assert_array_equal(resolve(v_dec, q, bound, p.stream, Mode.SYNDROME), p.indices)


def _kernel_and_reference(q, values, radius):
    from reprocodec.safeguard import native

    if not native.AVAILABLE:
        pytest.fail("numba is part of the server extra the tests run with")
    out = []
    for available in (True, False):
        native.AVAILABLE = available
        try:
            out.append(q.index_and_near(values, radius))
        finally:
            native.AVAILABLE = True
    return out


@pytest.mark.parametrize("e, margin", [(0.2, 1 + 1e-6), (0.05, 1.01), (1e-3, 1 + 1e-6),
                                       (0.2, 0.3)])  # margin < 1: overlapping zones
def test_thresholds_kernel_equals_reference_at_the_spacing_limit(e, margin):
    """The numba pass and the numpy reference pick the same elements and the same threshold,
    bit for bit, where the zones meet (and, with zones that overlap, which check_bound refuses,
    by the same tie rules)."""
    bound = ErrorBound.relative(e)
    t = tight_thresholds(bound, 0.7, 5, margin)
    q = DecisionQuantizer.from_thresholds(t)
    rng = np.random.default_rng(4)
    mid = (t[1:] + t[:-1]) / 2
    values = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), mid,
                             np.nextafter(mid, np.inf), [0.0, -0.0, 1e9, -1e9],
                             rng.uniform(-1.2, 1.2, 30_000) * np.abs(t).max()])
    for radius in (bound.risky_radius, bound.encoder_radius):
        for v in (values, values.astype(np.float32)):
            (k, pos, near), (k_ref, pos_ref, near_ref) = _kernel_and_reference(q, v, radius)
            assert np.array_equal(k, k_ref) and np.array_equal(pos, pos_ref)
            assert np.array_equal(near.j, near_ref.j)
            assert np.array_equal(near.t, near_ref.t)
            assert np.array_equal(near.distance, near_ref.distance)
            # The reported threshold is one the element is within the radius of.
            assert np.all(near.distance <= np.asarray(radius(near.t)))
            # ... and every element within the radius of any threshold is reported.
            d = np.abs(v.astype(np.float64)[:, None] - t[None, :])
            anywhere = np.flatnonzero((d <= np.asarray(radius(t))[None, :]).any(axis=1))
            assert np.array_equal(pos, anywhere)
