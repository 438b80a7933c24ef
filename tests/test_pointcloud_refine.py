"""Refined learned probabilities (pointcloud/refine.py): integer-exact adaptation of the
model's grid-index probabilities per stream, chosen by the encoder only when smaller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprocodec import container, entropy
from reprocodec.errors import ContainerError, TooLargeError, VerificationError
from reprocodec.pointcloud import PointCloudCodec, inspect_fields, octree, refine
from reprocodec.pointcloud.codec import PAYLOAD, REFINED_PAYLOAD
from reprocodec.pointcloud.grid import GRID_K
from reprocodec.pointcloud.ply import read_ply
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


@pytest.fixture(scope="module")
def codec():
    return PointCloudCodec.load()


@pytest.fixture(scope="module")
def camel():
    return read_ply(SAMPLES / "camel_d6.ply")


def _reference_f0(rows: np.ndarray, bits: np.ndarray, f0_table: np.ndarray) -> np.ndarray:
    """The module docstring's rule in plain Python integers (an independent reading)."""
    buckets = [int(f0_table[j * refine.SPACING]) << refine.FRACTION
               for j in range(refine.BUCKETS)]
    out = []
    for g, bit in zip(rows.tolist(), bits.tolist(), strict=True):
        lo = min(g // refine.SPACING, refine.BUCKETS - 2)
        w = g - lo * refine.SPACING
        p = ((refine.SPACING - w) * buckets[lo] + w * buckets[lo + 1]) // refine.SPACING
        out.append(min(max(p >> refine.FRACTION, 1), (1 << 16) - 1))
        j = lo if 2 * w < refine.SPACING else lo + 1
        target = 0 if bit else 1 << (16 + refine.FRACTION)
        buckets[j] += (target - buckets[j]) >> refine.RATE
    return np.array(out, np.int64)


def _random_coding(seed: int, n: int, codec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f0_table = codec.tables.cdfs[:, 1].astype(np.int64)
    rows = rng.integers(0, 2 * GRID_K + 1, n)
    bits = (rng.random(n) * (1 << 16) >= f0_table[rows]).astype(np.uint8)  # the model's law
    return rows, bits, f0_table


def test_probabilities_follow_the_rule_and_round_trip(codec):
    rows, bits, f0_table = _random_coding(3, 20000, codec)
    f0 = np.empty(rows.size, np.int64)
    refine._walk_kernel(rows, bits, refine.initial_buckets(f0_table), f0)
    np.testing.assert_array_equal(f0, _reference_f0(rows, bits, f0_table))
    # The encoder's price of the same walk: the code lengths of exactly these probabilities,
    # and beside them of the static table's
    length = entropy.code_length_table()
    buckets = refine.initial_buckets(f0_table)
    static = f0_table[rows]
    assert refine.code_lengths(bits, rows - GRID_K, buckets, f0_table) == (
        int(np.sum(np.where(bits, length[(1 << 16) - static], length[static]))),
        int(np.sum(np.where(bits, length[(1 << 16) - f0], length[f0]))))
    # a strided bool column (the encoder passes bits[:, k]) prices the same
    wide = np.zeros((bits.size, 3), dtype=bool)
    wide[:, 1] = bits.astype(bool)
    assert refine.code_lengths(wide[:, 1], rows - GRID_K, refine.initial_buckets(f0_table),
                               f0_table) == refine.code_lengths(
        bits, rows - GRID_K, refine.initial_buckets(f0_table), f0_table)
    with pytest.raises(ValueError):
        refine.code_lengths(bits, rows, refine.initial_buckets(f0_table), f0_table)  # > K
    with pytest.raises(ValueError):  # 2-D: the kernel walks one coding order
        refine.code_lengths(wide, np.zeros(wide.shape, np.int16),
                            refine.initial_buckets(f0_table), f0_table)
    # the static sum is the one coder._code_length computes (the encoder uses either), and
    # any non-zero value is a 1 bit to both
    from reprocodec.pointcloud import coder

    index = rows - GRID_K
    as_int = bits.astype(np.int64) * 256
    assert refine.code_lengths(as_int, index, refine.initial_buckets(f0_table), f0_table)[0] \
        == coder._code_length(as_int, index, codec.tables)
    walked = refine.initial_buckets(f0_table)
    refine._walk_kernel(rows, bits, walked, f0)
    np.testing.assert_array_equal(buckets, walked)  # and it leaves the state the walk does
    data = refine.encode(bits, rows, f0_table)
    decoder = refine.Decoder(data, f0_table)
    got = np.concatenate([decoder.decode(rows[:7000]), decoder.decode(rows[7000:])])
    decoder.finish()
    np.testing.assert_array_equal(got, bits)


def test_truncated_or_overlong_refined_data_is_refused(codec):
    rows, bits, f0_table = _random_coding(4, 5000, codec)
    data = refine.encode(bits, rows, f0_table)
    for bad in (b"", data[:4], data[:-4], data[:8]):
        with pytest.raises(ContainerError):
            decoder = refine.Decoder(bad, f0_table)
            decoder.decode(rows)
            decoder.finish()
    with pytest.raises(ContainerError, match="does not end"):
        decoder = refine.Decoder(data + data[-4:], f0_table)
        decoder.decode(rows)
        decoder.finish()
    lenient = refine.Decoder(data[:8], f0_table, lenient=True)  # benchmarks: zeros, no raise
    assert not lenient.decode(rows).any() and lenient.failed


def test_the_encoder_keeps_the_smaller_coding_and_both_decode(codec, camel, monkeypatch):
    expected = octree.voxelize(camel, 6).voxels
    refined = codec.encode(camel, Mode.SYNDROME, depth=6)
    assert [p.name for p in refined.payloads] == [REFINED_PAYLOAD]
    monkeypatch.setattr(codec, "refine", False)
    static = codec.encode(camel, Mode.SYNDROME, depth=6)
    assert [p.name for p in static.payloads] == [PAYLOAD]
    assert refined.ByteSize() < static.ByteSize()
    assert inspect_fields(refined)["learned_probabilities"] == "refined"
    assert inspect_fields(static)["learned_probabilities"] == "model"
    for msg in (refined, static):
        out = codec.decode(container.unpack(container.pack(msg)))
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, expected)
    # Same protected indices either way: refinement is after the safeguard, integers only.
    assert refined.protected[0].indices_checksum == static.protected[0].indices_checksum


def _refused_or_exact(codec, msg, data: bytes, expected: np.ndarray) -> str:
    out = container.unpack(container.pack(msg))
    out.payloads[0].data = data
    out.payloads[0].crc32 = container.crc32(data)  # as an attacker would
    try:
        got = codec.decode(container.unpack(out.SerializeToString(deterministic=True)))
    except (ContainerError, VerificationError, TooLargeError) as exc:
        return type(exc).__name__
    np.testing.assert_array_equal(got.voxels, expected)
    return "exact"


def test_hostile_refined_payloads_are_refused(codec, camel):
    msg = codec.encode(camel, Mode.SYNDROME, depth=6)
    expected = octree.voxelize(camel, 6).voxels
    good = bytes(msg.payloads[0].data)
    rng = np.random.default_rng(5)
    variants = [b"", good[:4], good[:8], good[:-4], good + b"\x00" * 4, b"\x00" * len(good),
                b"\xff" * len(good), b"\xff" * (1 << 16)]
    for _ in range(30):
        edit = bytearray(good)
        edit[int(rng.integers(0, len(edit)))] ^= 1 << int(rng.integers(8))
        variants.append(bytes(edit))
    outcomes = [_refused_or_exact(codec, msg, v, expected) for v in variants]
    assert outcomes.count("exact") <= 2, outcomes  # an edit of padding-like bits at most


def test_a_refined_payload_beside_a_static_one_is_refused(codec, camel):
    msg = codec.encode(camel, Mode.SYNDROME, depth=6)
    twice = container.unpack(container.pack(msg))
    extra = twice.payloads.add()
    extra.CopyFrom(twice.payloads[0])
    extra.name = PAYLOAD
    with pytest.raises(ContainerError):
        codec.decode(container.unpack(twice.SerializeToString(deterministic=True)))


def test_a_mixed_stream_with_refined_learned_levels_round_trips(codec):
    """Refinement walks the learned levels only, in their coding order, across the adaptive
    levels between them; both sides agree."""
    rng = np.random.default_rng(5)
    u, v = rng.uniform(0, 2 * np.pi, 200000), rng.uniform(0, 2 * np.pi, 200000)
    surface = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u),
                        0.35 * np.sin(v)], 1)[rng.random(200000) < 0.05]  # ~10k points, sparse
    msg = container.unpack(container.pack(codec.encode(surface, Mode.SYNDROME, depth=10)))
    levels = inspect_fields(msg)["level_coders"]
    assert [p.name for p in msg.payloads] == [REFINED_PAYLOAD, "occupancy_adaptive"], levels
    assert "A" in levels and "L" in levels
    out = codec.decode(msg)
    assert out.bit_exact
    np.testing.assert_array_equal(out.voxels, octree.voxelize(surface, 10).voxels)


def test_narrow_dtypes_hold_their_ranges():
    """The encoder and decoder keep grid indices (and table rows, index + K) in int16 and the
    adaptive coder's probabilities of 0 in adaptive.F0_DTYPE: both ranges must fit."""
    from reprocodec.pointcloud import adaptive

    assert 2 * GRID_K <= np.iinfo(np.int16).max
    assert adaptive._ONE - 1 <= np.iinfo(adaptive.F0_DTYPE).max


def test_learned_code_length_is_the_sum_over_bits(codec):
    """coder._code_length (counts per bit and table row, weighed) equals the plain sum of each
    bit's code length under its row's probability."""
    from reprocodec import entropy
    from reprocodec.pointcloud import coder

    rng = np.random.default_rng(9)
    index = rng.integers(-GRID_K, GRID_K + 1, 3000).astype(np.int16)
    bits = rng.random(3000) < 0.4
    length = entropy.code_length_table()
    p0 = codec.tables.cdfs[:, 1].astype(np.int64)
    expected = sum(int(length[(1 << entropy.PRECISION) - p0[i + GRID_K] if b
                              else p0[i + GRID_K]])
                   for i, b in zip(index.tolist(), bits.tolist(), strict=True))
    assert coder._code_length(bits, index, codec.tables) == expected


def test_the_per_level_choice_prices_refined_probabilities(codec, monkeypatch, ground_rings):
    """Ground rings of a spinning sensor (nothing like the training meshes): the model's own
    probabilities lose most levels to the adaptive coder, refined ones win them back, and the
    stream is smaller for it; decoded exactly either way."""
    rings = ground_rings  # at format 4: the learned / adaptive choice (no neighbour coder)
    refined = codec.encode(rings, Mode.SYNDROME, depth=12, coders="smallest",
                           bitstream_format=4)
    monkeypatch.setattr(codec, "refine", False)
    static = codec.encode(rings, Mode.SYNDROME, depth=12, coders="smallest",
                          bitstream_format=4)
    learned_levels = [inspect_fields(m)["level_coders"].count("L") for m in (refined, static)]
    assert learned_levels[0] > learned_levels[1], learned_levels
    assert refined.ByteSize() < static.ByteSize()
    for msg in (refined, static):
        assert codec.decode(container.unpack(container.pack(msg))).bit_exact


@pytest.mark.parametrize("law", ["model", "against", "certain", "one"])
def test_static_stream_floor_is_below_every_static_stream(codec, law):
    """entropy.stream_floor, the bound the encoder skips the static stream by, against
    real streams: bits drawn from their rows' probabilities, bits against them (every bit
    costly: many words out), near-certain rows (many symbols per bit: the per-symbol term),
    one symbol."""
    from reprocodec.pointcloud import coder

    rng = np.random.default_rng(len(law))
    n = 1 if law == "one" else 200_000
    f0 = codec.tables.cdfs[:, 1].astype(np.int64)
    if law == "certain":
        index = np.full(n, -GRID_K, np.int16)  # P(0) at its largest
        bits = np.zeros((n, 1), bool)
    else:
        index = rng.integers(-GRID_K, GRID_K + 1, n).astype(np.int16)
        p0 = f0[index + GRID_K] / (1 << 16)
        bits = (rng.random(n) >= p0) if law != "against" else (p0 >= 0.5)
        bits = bits.reshape(n, 1)
    static_cost = coder._code_length(bits[:, 0], index, codec.tables)
    level = coder.LearnedLevel(index, [], 0, 0, static_cost, static_cost, static_cost)
    stream = coder.static_stream([level], [bits], codec.tables)
    floor = entropy.stream_floor(static_cost, n)
    real = len(stream) << (3 + entropy.COST_FRACTION)
    assert floor <= real
    assert real - floor < (96 << entropy.COST_FRACTION) + 4 * n  # and not far below


def test_skipping_the_static_stream_changes_no_byte(codec, camel, monkeypatch, ground_rings):
    """The encoder codes the static stream only when its floor does not already lose to the
    refined one: the same streams as coding it always, and skipped where refinement wins."""
    from reprocodec.pointcloud import coder

    clouds = [(camel, 6), (ground_rings, 12)]
    coded = []
    real_static = coder.static_stream
    monkeypatch.setattr(coder, "static_stream",
                        lambda *a: coded.append(1) or real_static(*a))
    skipping = [container.pack(codec.encode(p, depth=d)) for p, d in clouds]
    skipped = len(coded)
    monkeypatch.setattr(entropy, "stream_floor", lambda *a: -(1 << 62))
    coded.clear()
    always = [container.pack(codec.encode(p, depth=d)) for p, d in clouds]
    assert skipping == always
    assert skipped < len(coded)  # the floor spared some static streams
