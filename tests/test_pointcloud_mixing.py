"""Mixed learned probabilities (pointcloud/mixing.py): integer squash/stretch, the hashed
neighbourhood contexts, the mixer's coder (versions 1 to 3) and the codec's format-4
"occupancy_mixed", format-7 "occupancy_mixed_v2" and format-8 "occupancy_mixed_v3" payloads."""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from reprocodec import container, entropy
from reprocodec.errors import ContainerError, InputError, VerificationError
from reprocodec.pointcloud import (
    PointCloudCodec,
    adaptive,
    inspect_fields,
    mixing,
    nodecontext,
    octree,
    planes,
    refine,
)
from reprocodec.pointcloud import codec as codec_module
from reprocodec.pointcloud import coder as coder_module
from reprocodec.pointcloud.adaptive import AdaptiveStreamError
from reprocodec.pointcloud.codec import (
    ADAPTIVE_PAYLOAD,
    MIX_GAIN,
    MIXED_PAYLOAD,
    MIXED_PAYLOADS,
    MIXED_V2_PAYLOAD,
    MIXED_VERSIONS,
    PAYLOAD,
    REFINED_PAYLOAD,
    mixing_version,
)
from reprocodec.pointcloud.context import N_PASSES
from reprocodec.pointcloud.grid import GRID_K
from reprocodec.pointcloud.ply import read_ply
from reprocodec.pointcloud.rowslices import row_slices
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
# bench/pointcloud.py, by path: its synthetic clouds without putting bench/ on sys.path
_spec = importlib.util.spec_from_file_location(
    "bench_pointcloud", Path(__file__).resolve().parent.parent / "bench" / "pointcloud.py")
assert _spec is not None and _spec.loader is not None
_BENCH_CLOUDS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_BENCH_CLOUDS)
MIXED_NOW = MIXED_PAYLOADS[mixing_version(container.FORMAT_VERSION)]  # what the default writes
ONE = 1 << 16
# The 26 child-level neighbour offsets in the documented order, and the conventions the
# reference below assumes (checked against octree's tables in the test that uses them)
OFFSETS = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
           if (x, y, z) != (0, 0, 0)]
PARENT_SLOTS = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)]


def _child_index(x: int, y: int, z: int) -> int:
    return x * 4 + y * 2 + z


def _hash(ctx: int, points: int, bits_of=mixing.context_bits) -> int:
    bits = bits_of(points)
    return ((ctx * 0x9E3779B97F4A7C15) % (1 << 64)) >> (64 - bits)


@pytest.fixture(scope="module")
def codec():
    return PointCloudCodec.load()


@pytest.fixture(scope="module")
def f0_table(codec):
    return codec.tables.cdfs[:, 1].astype(np.int64)


@pytest.fixture(scope="module")
def camel():
    return read_ply(SAMPLES / "camel_d6.ply")


@pytest.fixture(scope="module")
def elephant():
    """At depth 7 (23,264 points) `smallest` keeps the mixer's version 2 in every mode; the
    camel at depth 6 keeps version 1 (the same rANS words, a shorter payload name)."""
    return read_ply(SAMPLES / "elephant_d7.ply")


def _box_surface(n: int) -> np.ndarray:
    """The six faces of an axis-aligned n^3 box of integer voxels (machined-part-like: large
    flat faces, the repeats the count model learns), as floats (bench/pointcloud.py's)."""
    return _BENCH_CLOUDS.box_faces(n).astype(np.float64)


# ------------------------------------------------------------------------- squash / stretch


def test_squash_and_stretch_are_monotone_exact_inverses():
    limit = mixing.LOGIT_LIMIT
    squash, stretch = mixing.SQUASH, mixing.STRETCH
    assert squash.shape == (2 * limit + 1,) and stretch.shape == (ONE + 1,)
    assert squash.dtype == np.int64 and stretch.dtype == np.int64
    assert np.all(np.diff(squash) >= 0)
    assert squash[limit] == 32768  # logit 0
    assert squash[0] == 0 and squash[-1] == ONE
    # the knots are round(2^16 / (1 + e^-x)) at x = -12, -11.5, .. 12 and squash meets them
    knots = [round(ONE / (1 + math.exp(-(-12 + 0.5 * i)))) for i in range(49)]
    assert mixing._SQUASH_KNOTS.tolist() == knots
    assert limit == 12 * mixing.LOGIT_ONE
    np.testing.assert_array_equal(squash[::mixing.LOGIT_ONE // 2], knots)
    # nearly symmetric (the floor of the interpolation only): squash(-x) ~ 2^16 - squash(x)
    assert np.abs(squash + squash[::-1] - ONE).max() <= 1
    # stretch(p) is the least x with squash(x) >= p, for every p = 0 .. 2^16
    p = np.arange(ONE + 1)
    assert np.all(np.diff(stretch) >= 0)
    assert stretch.min() >= -limit and stretch.max() <= limit
    assert np.all(squash[stretch + limit] >= p)
    above = stretch > -limit
    assert np.all(squash[stretch[above] - 1 + limit] < p[above])
    assert np.all(p[~above] <= squash[0])  # only p = 0 stretches to the bottom
    assert stretch[32768] == 0
    # stretch(squash(x)) <= x, and squash(stretch(squash(x))) == squash(x)
    x = np.arange(-limit, limit + 1)
    assert np.all(stretch[squash] <= x)
    np.testing.assert_array_equal(squash[stretch[squash] + limit], squash)


def test_count_probabilities_fit_their_16_bit_tables():
    """Every count update, from every P(0) a table can hold, at every count and towards
    either bit, lands inside PROBABILITY_DTYPE's range again (the tables store q - 1/2 in 16
    bits: any q outside 0 .. 2^16 - 1 would wrap silently), and the fresh value, 1/2, is the
    zeros the tables start as."""
    info = np.iinfo(mixing.PROBABILITY_DTYPE)
    q = np.arange(info.min, info.max + 1, dtype=np.int64) + mixing._HALF
    assert q[0] == 0 and q[-1] == mixing._ONE - 1
    for rate in mixing._COUNT_RATE[: mixing.COUNT_LIMIT + 1]:
        for target in (0, mixing._ONE):
            moved = q + (((target - q) * rate) >> 16) - mixing._HALF  # _count's update
            assert info.min <= moved.min() and moved.max() <= info.max
    fresh = mixing.count_tables(1000)
    assert all(t.dtype == mixing.PROBABILITY_DTYPE and not t.any() for t in fresh[1::2])


def test_context_bits_follow_the_point_count():
    assert mixing.context_bits(0) == mixing.MIN_CONTEXT_BITS
    assert mixing.context_bits(1) == mixing.MIN_CONTEXT_BITS
    assert mixing.context_bits(3000) == (8 * 3000).bit_length() == 15
    assert mixing.context_bits(1 << 30) == mixing.MAX_CONTEXT_BITS
    sizes = [mixing.context_bits(n) for n in range(0, 1 << 20, 997)]
    assert sizes == sorted(sizes)


# ------------------------------------------------------------------------------ contexts


def _reference_contexts(table: np.ndarray, bits: np.ndarray, k: int, points: int) -> np.ndarray:
    """The documented context of child k of every node, in plain Python: cell c (offset c of
    OFFSETS from child k) is 0 empty, 1 occupied, 2 not decoded yet, weighted by 3^c, plus
    k * 3^26, Fibonacci-hashed to context_bits(points) bits; above bit 32 the coarse context:
    which of the 27 parent-level neighbours exist (bit s for slot s), times 8, plus k, hashed
    to coarse_bits(points) bits."""
    m = table.shape[0]
    ox, oy, oz = ((k >> 2) & 1, (k >> 1) & 1, k & 1)
    out = []
    for i in range(m):
        ctx = k * 3 ** 26
        for c, (dx, dy, dz) in enumerate(OFFSETS):
            cell = (ox + dx, oy + dy, oz + dz)  # child-level, from the node's child 0
            parent = tuple(v // 2 for v in cell)  # floor: -1, 0 or 1
            inner = tuple(v - 2 * q for v, q in zip(cell, parent, strict=True))
            node = int(table[i, PARENT_SLOTS.index(parent)])
            child = _child_index(*inner)
            if node == m:
                state = 0
            elif child < k:
                state = int(bits[node, child])
            else:
                state = 2
            ctx += state * 3 ** c
        shape = sum(1 << s for s in range(27) if int(table[i, s]) != m)
        out.append(_hash(ctx, points) | _hash(shape * 8 + k, points, mixing.coarse_bits) << 32)
    return np.array(out, np.int64)


def test_pass_contexts_match_the_documented_rule_on_random_tables():
    np.testing.assert_array_equal(octree.NEIGHBOUR_OFFSETS, PARENT_SLOTS)
    assert [_child_index(*o) for o in octree.CHILD_OFFSETS.tolist()] == list(range(8))
    rng = np.random.default_rng(11)
    for m, points, dtype in ((1, 1, np.int32), (97, 3000, np.int32), (250, 1 << 21, np.int64)):
        table = rng.integers(0, m + 1, (m, 27)).astype(dtype)  # m: absent
        table[rng.random((m, 27)) < 0.3] = m
        bits = rng.random((m, 8)) < 0.5
        size = 1 << mixing.context_bits(points)
        for k in range(8):
            got = mixing.pass_contexts(table, bits, k, points)
            assert got.dtype == np.int64 and got.shape == (m,)
            assert got.min() >= 0 and (got & 0xFFFFFFFF).max() < size
            assert (got >> 32).max() < 1 << mixing.coarse_bits(points)
            np.testing.assert_array_equal(got, _reference_contexts(table, bits, k, points))


def test_level_contexts_are_every_pass_contexts_in_one_pass(ground_rings):
    """The encoder's all-passes kernel (each node's neighbours read once) gives exactly the
    decoder's pass-by-pass contexts, on random tables and on every level of a real octree."""
    rng = np.random.default_rng(12)
    cases = []
    for m, dtype in ((1, np.int32), (120, np.int32), (300, np.int64)):
        table = rng.integers(0, m + 1, (m, 27)).astype(dtype)
        table[rng.random((m, 27)) < 0.3] = m
        cases.append((table, rng.random((m, 8)) < 0.5, 5000))
    voxels = octree.voxelize(ground_rings, 10).voxels
    codes, bits = octree.build_levels(voxels, 10)
    tables = octree.LevelTables(1)
    for level in range(10):
        table = tables.table_of(codes[level], level, bits[level - 1] if level else None)
        cases.append((table, bits[level], voxels.shape[0]))
    for table, level_bits, points in cases:
        want = np.concatenate([mixing.pass_contexts(table, level_bits, k, points)
                               for k in range(8)])
        level = mixing.level_contexts(table, level_bits, points)
        # the encoder's form: a bit's fine context, its node's shape
        np.testing.assert_array_equal(level.fine, want & 0xFFFFFFFF)
        np.testing.assert_array_equal(level.shapes, mixing.neighbour_shapes(table))
        np.testing.assert_array_equal(level.packed(), want)
        # slices of nodes on two threads (the largest level is cut): the same values
        np.testing.assert_array_equal(mixing.level_contexts(table, level_bits, points,
                                                            2).packed(), want)
        for threads in (2, 3):  # the decoder's passes on threads too
            np.testing.assert_array_equal(np.concatenate(
                [mixing.pass_contexts(table, level_bits, k, points, threads=threads)
                 for k in range(8)]), want)
    assert len(row_slices(cases[-1][0].shape[0], 2)) > 1
    with pytest.raises(ValueError):
        mixing.level_contexts(cases[1][0], cases[1][1][:5], 5000)
    # the decoder keeps a level's shapes for its eight passes: the same contexts
    table, level_bits, points = cases[-1]
    shapes = mixing.neighbour_shapes(table)
    assert shapes.min() >= 0 and shapes.max() < 1 << 27
    for k in range(8):
        np.testing.assert_array_equal(
            mixing.pass_contexts(table, level_bits, k, points, shapes=shapes),
            mixing.pass_contexts(table, level_bits, k, points))
    for bad in (shapes[:-1], shapes.astype(np.int32)):
        with pytest.raises(ValueError):
            mixing.pass_contexts(table, level_bits, 0, points, shapes=bad)


def test_pass_k_reads_no_child_at_or_after_k():
    rng = np.random.default_rng(12)
    m, points = 400, 5000
    table = rng.integers(0, m + 1, (m, 27)).astype(np.int32)
    bits = rng.random((m, 8)) < 0.5
    for k in range(8):
        base = mixing.pass_contexts(table, bits, k, points)
        changed = bits.copy()
        changed[:, k:] = rng.random((m, 8 - k)) < 0.5
        changed[:, k:] ^= True  # every child >= k flipped
        np.testing.assert_array_equal(mixing.pass_contexts(table, changed, k, points), base)
        if k:  # and it does read the children before k (not a constant)
            earlier = bits.copy()
            earlier[:, :k] ^= True
            assert np.any(mixing.pass_contexts(table, earlier, k, points) != base)


def test_pass_contexts_of_a_real_level_follow_the_geometry(camel):
    """Against coordinates alone (no neighbour table): the encoder's and decoder's tables of
    a real octree give each child the states of its 26 child-level neighbour cells (the fine
    context) and which of its node's 27 parent-level neighbours exist (the coarse one)."""
    voxels = octree.voxelize(camel, 6).voxels
    codes, bits = octree.build_levels(voxels, 6)
    n = voxels.shape[0]
    tables = octree.LevelTables(1)
    for level in range(6):
        chained = tables.table_of(codes[level], level, bits[level - 1] if level else None)
        direct = octree.neighbour_table(codes[level], level)
        np.testing.assert_array_equal(chained, direct)
        if level < 4:
            continue
        coords = octree.morton_decode(codes[level]).tolist()
        where = {tuple(p): i for i, p in enumerate(coords)}
        for k in range(8):
            expected = []
            off = octree.CHILD_OFFSETS[k].tolist()
            for p in coords:
                ctx = k * 3 ** 26
                for c, d in enumerate(OFFSETS):
                    q = [2 * p[a] + off[a] + d[a] for a in range(3)]
                    node = where.get(tuple(v // 2 for v in q))  # floor: -1 is outside
                    child = _child_index(*(v & 1 for v in q))
                    state = 0 if node is None else (
                        int(bits[level][node, child]) if child < k else 2)
                    ctx += state * 3 ** c
                shape = sum(1 << s for s, d in enumerate(PARENT_SLOTS)
                            if tuple(p[a] + d[a] for a in range(3)) in where)
                expected.append(_hash(ctx, n) | _hash(shape * 8 + k, n, mixing.coarse_bits) << 32)
            np.testing.assert_array_equal(mixing.pass_contexts(chained, bits[level], k, n),
                                          expected)


def test_pass_contexts_refuse_bad_shapes_and_passes():
    m = 5
    table = np.full((m, 27), m, np.int32)
    bits = np.zeros((m, 8), bool)
    for bad_table, bad_bits in ((table[:, :26], bits), (table, bits[:, :7]),
                                (table, np.zeros((m + 1, 8), bool)), (table[0], bits),
                                (table[None], bits)):
        with pytest.raises(ValueError):
            mixing.pass_contexts(bad_table, bad_bits, 0, 100)
    for k in (-1, 8, 100):
        with pytest.raises(ValueError):
            mixing.pass_contexts(table, bits, k, 100)
    assert mixing.pass_contexts(table, bits, 7, 100).shape == (m,)  # the good shapes pass


# ------------------------------------------------------------------- coder and decoder


def _chunked_coding(seed: int, f0_table: np.ndarray, points: int,
                    sizes=(1, 7, 60, 400, 1500)):
    """Bits in pass-major chunks, as the codec codes learned levels: for each level of
    `sizes[l]` nodes, child k of every node, k = 0..7."""
    rng = np.random.default_rng(seed)
    size = 1 << mixing.context_bits(points)
    chunks = [(m, k) for m in sizes for k in range(8)]
    n = sum(m for m, _ in chunks)
    rows = rng.integers(0, 2 * GRID_K + 1, n)
    rows[:3] = (0, 2 * GRID_K, GRID_K)  # both ends of the table
    bits = (rng.random(n) * ONE >= f0_table[rows]).astype(np.uint8)
    contexts = rng.integers(0, size, n)
    contexts[:2] = (0, size - 1)
    passes = np.concatenate([np.full(m, k) for m, k in chunks])
    return bits, rows, contexts, passes, chunks


def _extras(n: int, seed: int = 0) -> np.ndarray:
    """Version 2's extras for n bits: node contexts and occupied counts over their whole
    ranges (both ends included)."""
    rng = np.random.default_rng(seed)
    node = rng.integers(0, nodecontext.NODE_CONTEXTS, n)
    node[:2] = (0, nodecontext.NODE_CONTEXTS - 1)
    occupied = rng.integers(0, 8, n)
    occupied[:2] = (7, 0)
    return (node | occupied << nodecontext.POP_SHIFT).astype(np.int32)


def _version_extras(version: int, n: int) -> np.ndarray | None:
    return _extras(n) if version >= 2 else None


def _version_features(version: int, n: int, seed: int = 0) -> np.ndarray | None:
    """Version 3's plane features for n bits, over their whole range (both ends included)."""
    if version < 3:
        return None
    rng = np.random.default_rng(seed)
    features = rng.integers(0, planes.FEATURES, n)
    features[:2] = (0, planes.FEATURES - 1)
    return features.astype(planes.FEATURE_DTYPE)


def _decode_chunks(decoder, rows, contexts, chunks, extras=None, features=None):
    out, start, failed_at = [], 0, None
    for i, (m, k) in enumerate(chunks):
        out.append(decoder.decode(rows[start:start + m], contexts[start:start + m], k,
                                  None if extras is None else extras[start:start + m],
                                  None if features is None else features[start:start + m]))
        if failed_at is None and getattr(decoder, "failed", False):
            failed_at = i
        start += m
    return out, failed_at


@pytest.mark.parametrize("version", mixing.VERSIONS)
def test_mixed_coding_round_trips_pass_by_pass(f0_table, version):
    points = 3000
    bits, rows, contexts, passes, chunks = _chunked_coding(1, f0_table, points)
    extras = _version_extras(version, bits.size)
    features = _version_features(version, bits.size)
    data = mixing.encode(bits, rows, contexts, passes, f0_table, points, extras, version,
                         features)
    assert len(data) % 4 == 0 and len(data) >= 8
    decoder = mixing.Decoder(data, f0_table, points, version=version)
    got, failed_at = _decode_chunks(decoder, rows, contexts, chunks, extras, features)
    decoder.finish()
    assert failed_at is None
    np.testing.assert_array_equal(np.concatenate(got), bits)
    # the narrow types the encoder keeps (int16 rows, int32 contexts, uint8 passes) and
    # int64 give the same probabilities and the same bytes
    narrow = (rows.astype(np.int16), contexts.astype(np.int32), passes.astype(np.uint8))
    np.testing.assert_array_equal(
        mixing.probabilities(bits, *narrow, f0_table, points, extras, version, features),
        mixing.probabilities(bits, rows, contexts, passes, f0_table, points, extras, version,
                             features))
    assert mixing.encode(bits.astype(bool), *narrow, f0_table, points, extras,
                         version, features) == data
    # another version's decoder does not return these bits
    other = {1: 2, 2: 1, 3: 2}[version]
    decoder = mixing.Decoder(data, f0_table, points, lenient=True, version=other)
    got, _ = _decode_chunks(decoder, rows, contexts, chunks, _version_extras(other, bits.size),
                            _version_features(other, bits.size))
    assert not np.array_equal(np.concatenate(got), bits)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", mixing.VERSIONS)
def test_truncated_overlong_and_garbage_streams_are_refused(f0_table, version):
    points = 3000
    bits, rows, contexts, passes, chunks = _chunked_coding(2, f0_table, points)
    extras = _version_extras(version, bits.size)
    features = _version_features(version, bits.size)
    data = mixing.encode(bits, rows, contexts, passes, f0_table, points, extras, version,
                         features)
    half = len(data) // 8 * 4
    rng = np.random.default_rng(3)
    variants = [b"", data[:4], data[:8], data[:-4], data[:half], data[:-1], data + data[-4:],
                data + b"\x00" * 4, b"\x00" * len(data), b"\xff" * len(data)]
    for size in (8, 12, 64, 1000, len(data), 4 * len(data), 13):
        for _ in range(3):
            variants.append(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    for bad in variants:
        with pytest.raises(ContainerError) as info:
            decoder = mixing.Decoder(bad, f0_table, points, version=version)
            _decode_chunks(decoder, rows, contexts, chunks, extras, features)
            decoder.finish()
        assert isinstance(info.value, AdaptiveStreamError), repr(info.value)
    # lenient (benchmarks): zeros from the break on, never a raise; the chunks decoded
    # before the break are the encoder's bits
    for bad in (b"", data[:8], data[:half], data[:-4]):
        decoder = mixing.Decoder(bad, f0_table, points, lenient=True, version=version)
        got, failed_at = _decode_chunks(decoder, rows, contexts, chunks, extras, features)
        decoder.finish()
        assert decoder.failed and failed_at is not None
        start = 0
        for i, (m, _) in enumerate(chunks):
            if i < failed_at:
                np.testing.assert_array_equal(got[i], bits[start:start + m])
            else:
                assert not got[i].any()
            start += m
    # a lenient decoder of a good stream is an ordinary one
    decoder = mixing.Decoder(data, f0_table, points, lenient=True, version=version)
    got, failed_at = _decode_chunks(decoder, rows, contexts, chunks, extras, features)
    decoder.finish()
    assert failed_at is None and not decoder.failed
    np.testing.assert_array_equal(np.concatenate(got), bits)


@pytest.mark.parametrize("version", mixing.VERSIONS)
def test_out_of_range_rows_contexts_passes_and_extras_are_refused(f0_table, version):
    points = 3000
    size = 1 << mixing.context_bits(points)
    n = 50
    rows, contexts = np.full(n, GRID_K), np.zeros(n, np.int64)
    passes, bits = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    extras = _version_extras(version, n)
    features = _version_features(version, n)
    coded = (f0_table, points, extras, version, features)
    mixing.probabilities(bits, rows, contexts, passes, *coded)  # in range: fine
    for name, value in (("rows", -1), ("rows", 2 * GRID_K + 1), ("contexts", -1),
                        ("contexts", size), ("passes", -1), ("passes", 8)):
        args = {"rows": rows.copy(), "contexts": contexts.copy(), "passes": passes.copy()}
        args[name][n // 2] = value
        with pytest.raises(ValueError):
            mixing.probabilities(bits, args["rows"], args["contexts"], args["passes"], *coded)
        with pytest.raises(ValueError):
            mixing.encode(bits, args["rows"], args["contexts"], args["passes"], *coded)
    for bad in ((bits[:-1], rows, contexts, passes), (bits, rows[:-1], contexts, passes),
                (bits, rows, contexts[:-1], passes), (bits, rows, contexts, passes[:-1]),
                (bits.reshape(5, 10), rows.reshape(5, 10), contexts.reshape(5, 10),
                 passes.reshape(5, 10))):
        with pytest.raises(ValueError):
            mixing.probabilities(*bad, *coded)
    # version 2's extras: one int32 per bit inside the node model's tables
    bad_extras = [None, _extras(n - 1), _extras(n).astype(np.int64),
                  np.full(n, -1, np.int32), np.full(n, nodecontext.NODE_CONTEXTS, np.int32),
                  np.full(n, 8 << nodecontext.POP_SHIFT, np.int32)]
    for bad in bad_extras if version >= 2 else []:
        with pytest.raises(ValueError):
            mixing.probabilities(bits, rows, contexts, passes, f0_table, points, bad, version,
                                 features)
    # version 3's plane features: one uint16 per bit below planes.FEATURES
    bad_features = [None, np.zeros(n - 1, planes.FEATURE_DTYPE), np.zeros(n, np.int32),
                    np.full(n, planes.FEATURES, planes.FEATURE_DTYPE)]
    for bad in bad_features if version == 3 else []:
        with pytest.raises(ValueError):
            mixing.probabilities(bits, rows, contexts, passes, f0_table, points, extras,
                                 version, bad)
    # the decoder refuses its caller's out-of-range rows, contexts, passes and extras the same
    # way
    data = mixing.encode(bits, rows, contexts, passes, *coded)
    for r, c, k, e, f in ((rows - GRID_K - 1, contexts, 0, extras, features),
                          (rows + GRID_K + 1, contexts, 0, extras, features),
                          (rows, contexts - 1, 0, extras, features),
                          (rows, contexts + size, 0, extras, features),
                          (rows, contexts, 8, extras, features),
                          (rows, contexts, -1, extras, features),
                          (rows, contexts[:-1], 0, extras, features),
                          *((rows, contexts, 0, bad, features) for bad in
                            (bad_extras if version >= 2 else [])),
                          *((rows, contexts, 0, extras, bad) for bad in
                            (bad_features if version == 3 else []))):
        decoder = mixing.Decoder(data, f0_table, points, version=version)
        with pytest.raises(ValueError):
            decoder.decode(r, c, k, e, f)
    with pytest.raises(ValueError):
        mixing.Model(f0_table, points, version=4)


# ------------------------------------------------------------ determinism and contexts


@pytest.mark.parametrize("version", mixing.VERSIONS)
def test_probabilities_are_deterministic_and_learn_the_contexts(f0_table, version):
    """Bits that are a function of their context (its parity), at the grid's centre row:
    refine sees a fair coin, the count model learns each context."""
    points = 3000
    size = 1 << mixing.context_bits(points)
    rng = np.random.default_rng(4)
    n = 24000
    pattern = rng.choice(size, 40, replace=False)
    contexts = pattern[rng.integers(0, pattern.size, n)]
    bits = (contexts & 1).astype(np.uint8)
    assert 0.3 < bits.mean() < 0.7  # both bits common: no single probability codes them
    rows = np.full(n, GRID_K)
    passes = np.repeat(np.arange(8), n // 8)
    extras = _version_extras(version, n)
    features = _version_features(version, n)
    coded = (f0_table, points, extras, version, features)
    first = mixing.probabilities(bits, rows, contexts, passes, *coded)
    assert first.dtype == np.uint16 and first.shape == (n,)
    assert first.min() >= 1
    np.testing.assert_array_equal(
        mixing.probabilities(bits, rows, contexts, passes, *coded), first)
    # the probabilities depend on the contexts: the same bits under other contexts differ
    shuffled = rng.permutation(contexts)
    assert np.any(mixing.probabilities(bits, rows, shuffled, passes, *coded) != first)
    # and the context's bit becomes likely: late in the stream P(bit) is high
    late = slice(n // 2, None)
    p_bit = np.where(bits[late] == 1, ONE - first[late].astype(np.int64), first[late])
    assert np.median(p_bit) > 0.9 * ONE
    mixed = mixing.encode(bits, rows, contexts, passes, *coded)
    refined = refine.encode(bits, rows, f0_table)
    assert len(mixed) * 4 < len(refined), (len(mixed), len(refined))
    assert mixing.encode(bits, rows, contexts, passes, *coded) == mixed
    decoder = mixing.Decoder(mixed, f0_table, points, version=version)
    step = n // 8
    got = np.concatenate([decoder.decode(rows[i:i + step], contexts[i:i + step], i // step,
                                         None if extras is None else extras[i:i + step],
                                         None if features is None else features[i:i + step])
                          for i in range(0, n, step)])
    decoder.finish()
    np.testing.assert_array_equal(got, bits)


def _reference_mixed_f0(bits, rows, contexts, passes, f0_table, points, extras=None,
                        version=1, features=None):
    """The module docstring's mixer in plain Python integers: refine's buckets, two count
    models (the fine context: the low 32 bits, the coarse one: the rest), each with a fast and
    a slow probability moving 1/(n + 1.5) of the way to each bit (n capped at COUNT_LIMITS),
    and per-pass weights on (stretch(refined P(0)), stretch of fine fast, fine slow, coarse
    fast, coarse slow P(0), one logit) learning from the error (1/2^16 of it). Version 2: a
    third count model of the extra's node context, the stretched shipped-table P(0) of the
    bit's row, weights learning at 1/2^17, and the coded P(0) the mean of the mixer's and an
    APM's (one per pass and occupied count: 33 knots over logits -8..8, the two around the
    mixer's logit interpolated, each moving 1/64 of the way to the bit times its weight).
    Version 3: version 2's coded P(0), then a second stage: per-pass weights on (its stretch,
    the stretched fast and slow P(0) of a count model of the pass and the bit's plane feature,
    one logit), starting at (1, 0, 0, 0) and learning 1/2^19 of the error, rounded."""
    v2 = version >= 2
    v3 = version == 3
    stage = [[ONE, 0, 0, 0] for _ in range(8)]
    limit = mixing.LOGIT_LIMIT
    squash, stretch = mixing.SQUASH.tolist(), mixing.STRETCH.tolist()
    buckets = [int(f0_table[j * refine.SPACING]) << refine.FRACTION
               for j in range(refine.BUCKETS)]
    probability, counts = {}, {}  # keyed by (model, context)
    inputs_n = 9 if v2 else 6
    weights = [[ONE] + [0] * (inputs_n - 1) for _ in range(8)]
    apm = [[squash[(j - 16) * 128 + limit] for j in range(33)] for _ in range(64)]
    extras = [0] * bits.size if extras is None else extras.tolist()
    features = [0] * bits.size if features is None else features.tolist()
    out = []
    for bit, g, ctx, k, e, f in zip(bits.tolist(), rows.tolist(), contexts.tolist(),
                                    passes.tolist(), extras, features, strict=True):
        lo = min(g // refine.SPACING, refine.BUCKETS - 2)
        w = g - lo * refine.SPACING
        f0 = ((refine.SPACING - w) * buckets[lo] + w * buckets[lo + 1]) // refine.SPACING
        f0 = min(max(f0 >> refine.FRACTION, 1), ONE - 1)
        keys = [("fine", ctx & 0xFFFFFFFF), ("coarse", ctx >> 32)]
        if v2:
            keys.append(("node", e & ((1 << 24) - 1)))
        qs = [probability.get(key, [ONE // 2, ONE // 2]) for key in keys]
        stretched = [stretch[min(max(v, 1), ONE - 1)] for q in qs for v in q]
        inputs = [stretch[f0], *stretched[:4], mixing.LOGIT_ONE]
        if v2:
            inputs += [*stretched[4:], stretch[min(max(int(f0_table[g]), 1), ONE - 1)]]
        logit = sum(a * b for a, b in zip(weights[k], inputs, strict=True)) >> 16
        p = min(max(squash[min(max(logit, -limit), limit) + limit], 1), ONE - 1)
        coded = p
        if v2:
            row = 8 * k + (e >> 24)
            at = min(max(logit, -2047), 2047) + 2048
            knot, aw = at // 128, at % 128
            mapped = (apm[row][knot] * (128 - aw) + apm[row][knot + 1] * aw) // 128
            coded = min(max((p + mapped) // 2, 1), ONE - 1)
        if v3:
            plane_key = ("plane", k * planes.FEATURES + f)
            q = probability.get(plane_key, [ONE // 2, ONE // 2])
            stage_inputs = [stretch[coded], *(stretch[min(max(v, 1), ONE - 1)] for v in q),
                            mixing.LOGIT_ONE]
            stage_logit = sum(a * b for a, b in zip(stage[k], stage_inputs, strict=True)) >> 16
            coded = min(max(squash[min(max(stage_logit, -limit), limit) + limit], 1), ONE - 1)
            keys.append(plane_key)
            qs.append(q)
        out.append(coded)
        target = 0 if bit else ONE
        j = lo if 2 * w < refine.SPACING else lo + 1
        buckets[j] += ((target << refine.FRACTION) - buckets[j]) >> refine.RATE
        for key, q in zip(keys, qs, strict=True):
            n = counts.get(key, 0)
            probability[key] = [v + (((target - v) * ((2 << 16) // (2 * min(n, cap) + 3))) >> 16)
                                for v, cap in zip(q, mixing.COUNT_LIMITS, strict=True)]
            counts[key] = min(n + 1, max(mixing.COUNT_LIMITS))
        if v2:
            apm[row][knot] += ((target - apm[row][knot]) * (128 - aw)) >> 13
            apm[row][knot + 1] += ((target - apm[row][knot + 1]) * aw) >> 13
        for i in range(inputs_n):
            step = (inputs[i] * (target - p)) >> (17 if v2 else 16)
            weights[k][i] = min(max(weights[k][i] + step, -mixing.WEIGHT_LIMIT),
                                mixing.WEIGHT_LIMIT)
        for i in range(4 if v3 else 0):
            step = (stage_inputs[i] * (target - coded) + (1 << 18)) >> 19
            stage[k][i] = min(max(stage[k][i] + step, -mixing.WEIGHT_LIMIT),
                              mixing.WEIGHT_LIMIT)
    return np.array(out, np.int64)


@pytest.mark.parametrize("version", mixing.VERSIONS)
def test_probabilities_follow_the_documented_mixer(f0_table, version):
    points = 700
    bits, rows, contexts, passes, _ = _chunked_coding(6, f0_table, points, sizes=(3, 50, 300))
    contexts = contexts % 64  # contexts recur: the count models move
    contexts |= (contexts % 5) << 32  # and a coarse half that groups them
    bits[contexts % 3 == 0] = 1  # and partly predicts the bits
    extras = features = None
    if version >= 2:  # node contexts that recur and predict a little, every occupied count
        extras = ((contexts % 7 + 1000 * (contexts % 3 == 0))
                  | (contexts % 8) << nodecontext.POP_SHIFT).astype(np.int32)
    if version == 3:  # plane features that recur and predict a little, both ends of the range
        features = (contexts % 11 + 13 * (contexts % 3 == 0)).astype(planes.FEATURE_DTYPE)
        features[contexts % 17 == 0] = planes.FEATURES - 1
    got = mixing.probabilities(bits, rows, contexts, passes, f0_table, points, extras, version,
                               features)
    np.testing.assert_array_equal(got, _reference_mixed_f0(bits, rows, contexts, passes,
                                                           f0_table, points, extras, version,
                                                           features))


# --------------------------------------------------------------------------- the codec


@pytest.fixture(scope="module")
def clouds(camel):
    return {"camel": (camel, 6), "box": (_box_surface(40), 6)}


@pytest.mark.parametrize("name", ["camel", "box"])
def test_smallest_at_format_4_writes_the_mixed_payload_when_smaller(codec, clouds, name):
    points, depth = clouds[name]
    expected = octree.voxelize(points, depth).voxels
    mixed = codec.encode(points, Mode.SYNDROME, depth=depth, coders="smallest",
                         bitstream_format=4)
    older = codec.encode(points, Mode.SYNDROME, depth=depth, coders="smallest",
                         bitstream_format=3)
    names = [p.name for p in mixed.payloads]
    assert names[0] == MIXED_PAYLOAD, names
    assert mixed.format_version == 4
    assert inspect_fields(mixed)["learned_probabilities"] == "mixed"
    assert [p.name for p in older.payloads][0] in (PAYLOAD, REFINED_PAYLOAD)
    assert MIXED_PAYLOAD not in [p.name for p in older.payloads]
    assert older.format_version <= 3
    packed = container.pack(mixed)
    assert len(packed) <= len(container.pack(older))
    assert container.unpack(packed).format_version == 4
    for msg in (mixed, older):
        out = codec.decode(container.unpack(container.pack(msg)))
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, expected)
    if inspect_fields(mixed)["level_coders"] == inspect_fields(older)["level_coders"]:
        # the same bits and protected indices: mixing is after the safeguard
        assert mixed.payloads[0].symbols_checksum == older.payloads[0].symbols_checksum
        assert mixed.protected[0].indices_checksum == older.protected[0].indices_checksum
    # deterministic: the same stream twice
    assert container.pack(codec.encode(points, Mode.SYNDROME, depth=depth,
                                       coders="smallest", bitstream_format=4)) == packed


def _sphere(seed: int = 0, n: int = 3000) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["camel", "box", "sphere"])
def test_mixing_never_costs_bytes(codec, clouds, name):
    """Kept only when smaller: format 4 is never larger than format 3, and where both chose
    the same levels the mixed payload is strictly smaller than the refined / static one it
    replaced, or absent and the streams' payloads are byte-identical (random points on a
    sphere: mixing about ties with refinement there)."""
    points, depth = clouds[name] if name in clouds else (_sphere(), 6)
    new = codec.encode(points, Mode.SYNDROME, depth=depth, coders="smallest")
    old = codec.encode(points, Mode.SYNDROME, depth=depth, coders="smallest",
                       bitstream_format=3)
    assert len(container.pack(new)) <= len(container.pack(old))
    if inspect_fields(new)["level_coders"] == inspect_fields(old)["level_coders"]:
        if new.payloads[0].name in MIXED_VERSIONS:
            assert len(new.payloads[0].data) < len(old.payloads[0].data)
        else:
            assert [(p.name, p.data) for p in new.payloads] == \
                [(p.name, p.data) for p in old.payloads]
            assert new.format_version == old.format_version
    out = codec.decode(container.unpack(container.pack(new)))
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)


def test_smallest_keeps_the_smaller_mixer_so_format_7_is_never_larger(codec, camel, elephant):
    """By bits alone the encoder codes the learned levels under both mixers and keeps the
    smaller payload, its name counted: on the camel sample at depth 6 both take the same rANS
    words and version 1's name is shorter, so the format-7 encoder writes format 6's stream;
    on the elephant sample at depth 7 version 2 wins, and version 3 codes the same words, so
    the format-8 encoder keeps version 2's (format 7). Either way the stream is no larger than
    format 6's, and it decodes."""
    for points, depth, expected in ((camel, 6, MIXED_PAYLOAD), (elephant, 7, MIXED_V2_PAYLOAD)):
        new = container.pack(codec.encode(points, Mode.SYNDROME, depth=depth,
                                          coders="smallest"))
        old = container.pack(codec.encode(points, Mode.SYNDROME, depth=depth,
                                          coders="smallest", bitstream_format=6))
        assert len(new) <= len(old)
        msg = container.unpack(new)
        assert msg.payloads[0].name == expected
        assert (new == old) == (expected == MIXED_PAYLOAD)
        out = codec.decode(msg)
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)


@pytest.mark.parametrize("mode", [Mode.NONE, Mode.FLAGS, Mode.SIMPLIFIED])
def test_mixed_streams_decode_in_other_safeguard_modes(codec, elephant, mode):
    # version 2 (the elephant sample by bits alone), version 3 (a box's faces by default)
    for points, depth, coders, name in ((elephant, 7, "smallest", MIXED_V2_PAYLOAD),
                                        (_box_surface(128), 7, "auto", MIXED_NOW)):
        msg = codec.encode(points, mode, depth=depth, coders=coders)
        assert msg.payloads[0].name == name
        out = codec.decode(container.unpack(container.pack(msg)))
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)


def test_whatever_smallest_picks_decodes_losslessly(codec):
    """Clouds whose choice can mix learned and adaptive levels (a box at depth 8, uniform
    noise, a sparse cloud beside a plane): every stream coders="smallest" writes decodes
    exactly, and at least one of them has mixed learned levels beside adaptive ones (the
    decoder's mixed contexts across adaptive levels; which cloud does depends on the
    encoder's choices, hence several). At format 4: from format 6 the neighbour coder codes
    all three clouds (test_pointcloud_neighbour decodes it beside mixed levels)."""
    rng = np.random.default_rng(8)
    plane = np.stack(np.meshgrid(np.arange(60), np.arange(60), [5], indexing="ij"),
                     -1).reshape(-1, 3)
    clouds = [(_box_surface(40), 8),
              (np.concatenate([rng.integers(0, 1024, (2000, 3)), plane]), 10),
              (np.random.default_rng(0).integers(0, 512, (4000, 3)), 9)]
    layouts = []
    for points, depth in clouds:
        points = points.astype(np.float64)
        msg = codec.encode(points, Mode.SYNDROME, depth=depth, coders="smallest",
                           bitstream_format=4)
        out = codec.decode(container.unpack(container.pack(msg)))
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)
        names = [p.name for p in msg.payloads]
        assert msg.format_version == max(container.PAYLOAD_VERSIONS.get(n, 3) for n in names)
        layouts.append((names, inspect_fields(msg)["level_coders"]))
    assert any(names[:2] == [MIXED_PAYLOAD, ADAPTIVE_PAYLOAD] for names, _ in layouts), layouts


def test_learned_alone_never_writes_the_mixed_payload(codec, clouds):
    for points, depth in clouds.values():
        msg = codec.encode(points, Mode.SYNDROME, depth=depth, coders="learned")
        assert not set(MIXED_VERSIONS) & {p.name for p in msg.payloads}
        assert container.unpack(container.pack(msg)).format_version <= 3


def _spy_mixing(monkeypatch, name: str = "encode") -> list[int]:
    """mixing.encode (the learned stream's mixed coding) or mixing.walk (any mixed walk, a
    Model's first), recording the bits of each call."""
    walked, function = [], getattr(mixing, name)
    if name == "walk":
        monkeypatch.setattr(mixing, name, lambda model, bits, *a: walked.append(bits.size)
                            or function(model, bits, *a))
    else:
        monkeypatch.setattr(mixing, name, lambda bits, *a: walked.append(bits.size)
                            or function(bits, *a))
    return walked


def test_auto_mixes_the_all_learned_stream_of_a_surface_for_a_clear_gain(codec, clouds,
                                                                         monkeypatch):
    """"auto" builds the all-learned stream with mixed probabilities beside its time-priced
    choice (a cloud of at most MIX_ROWS_PER_POINT bits a point) when mixing leads by 1 /
    MIX_LEAD on the levels before the last, and keeps it only when it is at least 1 /
    MIX_GAIN smaller: a box's flat faces are, at half the size (a lossless format 4 stream,
    the same twice; at this size the all-neighbour candidate is not tried);
    the camel gains less, so its stream is the choice without mixing, which a gain and a
    lead of any size would have replaced."""
    clouds = {"camel": clouds["camel"], "box": (_box_surface(128), 7)}  # 97 k points
    streams = []
    default = (codec_module.MIX_GAIN, codec_module.MIX_LEAD)
    for gain, lead in (default, (1, default[1]), (1 << 30, 1 << 30)):  # never, any gain
        monkeypatch.setattr(codec_module, "MIX_GAIN", gain)
        monkeypatch.setattr(codec_module, "MIX_LEAD", lead)
        streams.append({name: container.pack(codec.encode(points, Mode.SYNDROME, depth=depth))
                        for name, (points, depth) in clouds.items()})
    default_streams, never, any_gain = streams
    for name, (points, depth) in clouds.items():
        unmixed = container.unpack(never[name])
        assert not set(MIXED_VERSIONS) & {p.name for p in unmixed.payloads}
        mixed = container.unpack(any_gain[name])
        assert [p.name for p in mixed.payloads] == [MIXED_NOW], name
        assert inspect_fields(mixed)["level_coders"] == "L" * depth
        assert len(any_gain[name]) < len(never[name])
        out = codec.decode(mixed)
        assert out.bit_exact
        np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)
    gain = default[0]
    assert default_streams["box"] == any_gain["box"]
    assert container.unpack(default_streams["box"]).format_version == \
        container.PAYLOAD_VERSIONS[MIXED_NOW]
    assert len(default_streams["box"]) * gain <= (gain - 1) * len(never["box"])
    assert default_streams["camel"] == never["camel"]
    monkeypatch.setattr(codec_module, "MIX_GAIN", gain)
    monkeypatch.setattr(codec_module, "MIX_LEAD", default[1])
    points, depth = clouds["box"]
    assert container.pack(codec.encode(points, Mode.SYNDROME, depth=depth)) == \
        default_streams["box"]
    # the camel's lead is under MIX_LEAD: its whole learned stream is never walked mixed
    walked = _spy_mixing(monkeypatch)
    points, depth = clouds["camel"]
    codec.encode(points, Mode.SYNDROME, depth=depth)
    assert walked == []
    monkeypatch.setattr(codec_module, "MIX_LEAD", 1 << 30)
    codec.encode(points, Mode.SYNDROME, depth=depth)
    assert walked


def test_every_learned_payload_names_its_probabilities():
    """inspect's and the benchmark table's learned_probabilities know every learned payload
    (version 3's mixed one read "none" until 0.8.2)."""
    from reprocodec.pointcloud import LEARNED_PROBABILITIES

    assert set(LEARNED_PROBABILITIES) == set(codec_module.LEARNED_PAYLOADS)
    assert {LEARNED_PROBABILITIES[name] for name in MIXED_PAYLOADS.values()} == {"mixed"}


def _spy_candidates(monkeypatch) -> list[tuple[str, bool, int]]:
    """Each candidate stream the encoder builds: (levels, mixed only, bytes)."""
    built = []
    add_payloads = PointCloudCodec._add_payloads

    def spy(self, msg, *args, **kwargs):
        add_payloads(self, msg, *args, **kwargs)
        call = inspect.signature(add_payloads).bind(self, msg, *args, **kwargs)
        call.apply_defaults()
        built.append((call.arguments["levels"], call.arguments["mixed_only"], msg.ByteSize()))

    monkeypatch.setattr(PointCloudCodec, "_add_payloads", spy)
    return built


def _spy_floors(monkeypatch, stand_in: int | None = None) -> list[int]:
    """Each _learned_stream_floor the encoder computes (in bytes); with stand_in, the floor
    it is given instead (0: the refined all-learned stream is always built, as before)."""
    floors = []
    floor = codec_module._learned_stream_floor

    def spy(*args):
        floors.append(floor(*args) >> (3 + entropy.COST_FRACTION))
        return floor(*args) if stand_in is None else stand_in

    monkeypatch.setattr(codec_module, "_learned_stream_floor", spy)
    return floors


def test_a_clearly_smaller_mixed_stream_leaves_the_refined_one_unbuilt(codec, monkeypatch):
    """Where mixing leads, the mixed stream is built first, and where it is at least 1 /
    MIX_GAIN smaller than a lower bound of the refined all-learned stream's size, that
    stream is not built: the box's default encode (237,608 points) builds its time-priced
    choice (which may be smaller) and the mixed one, never the refined one, and writes the
    stream the encoder writes with the bound put at zero (every candidate built, as
    before), where the refined all-learned stream is no smaller than the bound."""
    points, depth = _box_surface(200), 8
    built, floors = _spy_candidates(monkeypatch), _spy_floors(monkeypatch)
    fast = container.pack(codec.encode(points, Mode.SYNDROME, depth=depth))
    kinds = [(levels, mixed_only) for levels, mixed_only, _ in built]
    assert ("L" * depth, True) in kinds and ("L" * depth, False) not in kinds
    assert ("ALLLAAAA", False) in kinds  # (the choice)
    assert inspect_fields(container.unpack(fast))["learned_probabilities"] == "mixed"
    assert len(fast) * MIX_GAIN <= (MIX_GAIN - 1) * floors[0]
    built.clear()
    _spy_floors(monkeypatch, stand_in=0)
    assert container.pack(codec.encode(points, Mode.SYNDROME, depth=depth)) == fast
    unmixed = [size for levels, mixed_only, size in built
               if levels == "L" * depth and not mixed_only]
    assert unmixed and floors[0] <= unmixed[0]


@pytest.mark.parametrize("mode", list(Mode))
def test_the_refined_streams_floor_is_below_its_size_in_every_mode(codec, camel, elephant,
                                                                  monkeypatch, mode):
    """_learned_stream_floor never exceeds the refined all-learned stream's bytes: the
    samples at any lead (MIX_LEAD raised), in each safeguard mode (side information packed
    its own way in each), the stream built whatever the bound."""
    monkeypatch.setattr(codec_module, "MIX_LEAD", 1 << 30)
    built, floors = _spy_candidates(monkeypatch), _spy_floors(monkeypatch, stand_in=0)
    for points, depth in ((camel, 6), (elephant, 7)):
        built.clear()
        floors.clear()
        codec.encode(points, mode, depth=depth)
        unmixed = [size for levels, mixed_only, size in built
                   if levels == "L" * depth and not mixed_only]
        assert len(floors) == 1 and len(unmixed) == 1, (built, floors)
        assert floors[0] <= unmixed[0]
        assert unmixed[0] - floors[0] < 128 + unmixed[0] // 50  # (its framing)


def test_auto_never_mixes_a_cloud_of_many_bits_a_point(codec, monkeypatch):
    """A sparse cloud (more than MIX_ROWS_PER_POINT occupancy bits a point) never pays for
    a mixed walk; with the bound raised it would, and at format 3 never."""
    points = np.random.default_rng(4).integers(0, 512, (3000, 3)).astype(np.float64)
    walked = _spy_mixing(monkeypatch, "walk")
    codec.encode(points, Mode.SYNDROME, depth=9)
    assert walked == []
    monkeypatch.setattr(codec_module, "MIX_ROWS_PER_POINT", 100)
    monkeypatch.setattr(codec_module, "MIX_BITS_PER_POINT", 100)  # the contexts' memory bound
    codec.encode(points, Mode.SYNDROME, depth=9, bitstream_format=3)
    assert walked == []
    codec.encode(points, Mode.SYNDROME, depth=9)
    assert walked


@pytest.mark.parametrize("bitstream_format", [4, 7, 8])
def test_mixed_streams_cannot_be_lowered_or_relabelled(codec, camel, elephant, bitstream_format):
    """A mixed stream of each mixer version is written at the format that brought its
    payload and refused below it; its bytes named as the other learned payloads (refined,
    the other mixers) are not decoded as such, nor theirs named as it. (Version 3: a box's
    flat faces, which the default encode mixes.)"""
    points, depth, coders = {4: (camel, 6, "smallest"), 7: (elephant, 7, "smallest"),
                             8: (_box_surface(128), 7, "auto")}[bitstream_format]
    msg = codec.encode(points, Mode.SYNDROME, depth=depth, coders=coders,
                       bitstream_format=bitstream_format)
    name = MIXED_PAYLOADS[mixing_version(bitstream_format)]
    assert msg.payloads[0].name == name
    assert msg.format_version == container.PAYLOAD_VERSIONS[name] == bitstream_format
    for version in range(2, bitstream_format):
        lowered = container.unpack(container.pack(msg))
        with pytest.raises(ValueError):
            container.at_version(lowered, version)
    kept = container.unpack(container.pack(msg))
    container.at_version(kept, bitstream_format)
    assert kept.format_version == bitstream_format
    relabelled = container.unpack(container.pack(msg))
    relabelled.format_version = bitstream_format - 1
    with pytest.raises(ContainerError):
        container.validate(relabelled)
    with pytest.raises(ContainerError):
        container.unpack(relabelled.SerializeToString(deterministic=True))
    # the same bytes named as another learned payload are not decoded as such
    for other in (REFINED_PAYLOAD, *(set(MIXED_VERSIONS) - {name})):
        renamed = container.unpack(container.pack(msg))
        renamed.payloads[0].name = other
        renamed.format_version = max(bitstream_format, container.PAYLOAD_VERSIONS.get(other, 3))
        with pytest.raises((ContainerError, VerificationError)):
            codec.decode(container.unpack(container.pack(renamed)))
    # nor a refined payload's bytes named as mixed
    refined = codec.encode(points, Mode.SYNDROME, depth=depth, coders="learned",
                           bitstream_format=3)
    assert refined.payloads[0].name == REFINED_PAYLOAD
    refined.payloads[0].name = name
    refined.format_version = bitstream_format
    with pytest.raises((ContainerError, VerificationError)):
        codec.decode(container.unpack(container.pack(refined)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [MIXED_V2_PAYLOAD, MIXED_NOW])
def test_bit_flips_in_the_mixed_payload_are_reported(codec, elephant, name):
    if name == MIXED_V2_PAYLOAD:  # (by bits alone the elephant sample's is version 2's)
        msg = codec.encode(elephant, Mode.SYNDROME, depth=7, coders="smallest")
    else:  # (a box's flat faces: version 3's, by default)
        msg = codec.encode(_box_surface(128), Mode.SYNDROME, depth=7)
    assert msg.payloads[0].name == name
    good = bytes(msg.payloads[0].data)
    rng = np.random.default_rng(9)
    positions = [0, 7, 8, len(good) - 1] + rng.integers(0, len(good), 12).tolist()
    for position in positions:
        edit = bytearray(good)
        edit[position] ^= 1 << int(rng.integers(8))
        bad = container.unpack(container.pack(msg))
        bad.payloads[0].data = bytes(edit)
        stream = container.pack(bad)  # CRCs recomputed, as an attacker would
        with pytest.raises((ContainerError, VerificationError)):
            codec.decode(container.unpack(stream))
    for data in (good[:-4], good + b"\x00" * 4, good[:8]):
        bad = container.unpack(container.pack(msg))
        bad.payloads[0].data = data
        with pytest.raises((ContainerError, VerificationError)):
            codec.decode(container.unpack(container.pack(bad)))


@pytest.mark.parametrize("version", [0, 1, 9, 99])
def test_unsupported_bitstream_formats_are_refused(codec, camel, version):
    with pytest.raises(InputError):
        codec.encode(camel, Mode.SYNDROME, depth=6, coders="smallest",
                     bitstream_format=version)


def test_the_encoder_service_mixes_a_default_request_on_a_machined_surface():
    """The service path of "auto" mixing: a default EncodePointCloud request (no `smallest`)
    of a box's flat faces gets the all-learned mixed stream (format 8) from an encoder that
    writes format 8; the same request with max_format_version 3 gets none, and both decode
    to the same voxels."""
    from reprocodec.v1 import service_pb2
    from server.backend import Codecs, encode_point_cloud

    box = _box_surface(128)
    streams = {}
    for limit in (0, 3):  # 0: the encoder's newest
        request = service_pb2.EncodePointCloudRequest(depth=7, max_format_version=limit)
        streams[limit] = encode_point_cloud(Codecs(None), request, box, "cpu").bitstream
    assert [p.name for p in streams[0].payloads] == [MIXED_NOW]
    assert streams[0].format_version == container.PAYLOAD_VERSIONS[MIXED_NOW]
    assert not set(MIXED_VERSIONS) & {p.name for p in streams[3].payloads}
    assert streams[3].format_version <= 3
    assert streams[0].ByteSize() < streams[3].ByteSize()
    codec = PointCloudCodec.load(threads=1)
    decoded = [codec.decode(container.unpack(container.pack(s))).voxels
               for s in streams.values()]
    np.testing.assert_array_equal(decoded[0], decoded[1])
    np.testing.assert_array_equal(decoded[0], octree.voxelize(box, 7).voxels)


def test_a_walk_in_pieces_gives_one_walks_probabilities(camel):
    """mixing.walk on a Model walked on, level by level, gives the P(0)s of one walk over all
    the levels (probabilities), as the encoder's mixing lead and the decoder rely on."""
    depth = 6
    codes, bits = octree.build_levels(octree.voxelize(camel, depth).voxels, depth)
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 2 * GRID_K + 1, b.size) for b in bits]
    contexts = [mixing.level_contexts(octree.neighbour_table(c, level), b,
                                      camel.shape[0]).packed()
                for level, (c, b) in enumerate(zip(codes, bits, strict=True))]
    occupancy = [b.T.reshape(-1) for b in bits]
    passes = [codec_module._bit_passes([b]) for b in bits]
    extras = [codec_module._node_extras(bits, [level], 2) for level in range(depth)]
    f0_table = PointCloudCodec.load().tables.cdfs[:, 1]
    whole = mixing.probabilities(*(np.concatenate(a) for a in (occupancy, rows, contexts,
                                                               passes)),
                                 f0_table, camel.shape[0], np.concatenate(extras))
    model = mixing.Model(f0_table, camel.shape[0])
    pieces = [mixing.walk(model, *a) for a in zip(occupancy, rows, contexts, passes, extras,
                                                    strict=True)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


@pytest.mark.parametrize("version", [2, 3])
def test_an_encode_going_on_from_a_walked_model_writes_one_walks_bytes(camel, version):
    """mixing.encode with `walked` (a Model walked over the first levels and their P(0)s,
    the encoder's mixing lead) and the rest's inputs only: the bytes of one encode over all
    the levels; a walk of another version or cloud is refused."""
    depth = 6
    codes, bits = octree.build_levels(octree.voxelize(camel, depth).voxels, depth)
    n = camel.shape[0]
    rng = np.random.default_rng(1)
    tables = [octree.neighbour_table(c, level) for level, c in enumerate(codes)]
    inputs = [(b.T.reshape(-1), rng.integers(0, 2 * GRID_K + 1, b.size),
               mixing.level_contexts(t, b, n).packed(), codec_module._bit_passes([b]),
               codec_module._node_extras(bits, [level], version),
               planes.level_features(t, mixing.neighbour_shapes(t)).T.reshape(-1)
               if version == 3 else None)
              for level, (t, b) in enumerate(zip(tables, bits, strict=True))]
    f0_table = PointCloudCodec.load().tables.cdfs[:, 1]

    def joined(parts):
        return tuple(None if p[0] is None else np.concatenate(p) for p in zip(*parts,
                                                                             strict=True))

    occupancy, rows, contexts, passes, extras, features = joined(inputs)
    whole = mixing.encode(occupancy, rows, contexts, passes, f0_table, n, extras, version,
                          features)
    split = depth - 2
    model = mixing.Model(f0_table, n, version)
    f0 = np.concatenate([mixing.walk(model, *level[:5], level[5]) for level in inputs[:split]])
    _, rest_rows, rest_contexts, rest_passes, rest_extras, rest_features = joined(
        inputs[split:])
    assert mixing.encode(occupancy, rest_rows, rest_contexts, rest_passes, f0_table, n,
                         rest_extras, version, rest_features,
                         mixing.Walked(model, f0)) == whole
    for other in (mixing.Walked(mixing.Model(f0_table, n, 1), f0),
                  mixing.Walked(mixing.Model(f0_table, 2 * n, version), f0)):
        with pytest.raises(ValueError):
            mixing.encode(occupancy, rest_rows, rest_contexts, rest_passes, f0_table, n,
                          rest_extras, version, rest_features, other)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_mixed_stream_goes_on_from_the_leads_walk(monkeypatch, threads):
    """Where mixing leads, the lead's mixer walks the last level too, pass by pass as the
    model codes it (on the pool with two threads), and the default encode's mixed stream
    walks no bit again: the same bytes as walking every level afresh."""
    box, depth = _box_surface(128), 7
    codec = PointCloudCodec.load(threads=threads)
    walk_passes, passes = codec_module._MixingLead.walk_passes, []

    def passes_spy(self, *args):
        on_pass = walk_passes(self, *args)

        def counted(k, indices):
            passes.append(k)
            on_pass(k, indices)

        return counted

    encode, starts = mixing.encode, []

    def encode_spy(*args, **kwargs):
        starts.append(args[9] if len(args) > 9 else kwargs.get("walked"))
        return encode(*args, **kwargs)

    monkeypatch.setattr(codec_module._MixingLead, "walk_passes", passes_spy)
    monkeypatch.setattr(mixing, "encode", encode_spy)
    reused = codec.encode(box, Mode.SYNDROME, depth=depth)
    assert [p.name for p in reused.payloads] == [MIXED_NOW]
    assert passes == list(range(N_PASSES))  # the last level, as the model coded each pass
    _, bits = octree.build_levels(octree.voxelize(box, depth).voxels, depth)
    # the mixed stream's encode went on from the lead's walk, which covered every bit
    assert len(starts) == 1 and starts[0] is not None
    assert starts[0].f0.size == sum(b.size for b in bits)
    starts.clear()
    monkeypatch.setattr(codec_module._MixingLead, "walked", lambda self: None)
    again = codec.encode(box, Mode.SYNDROME, depth=depth)
    assert starts == [None]
    assert container.pack(again) == container.pack(reused)


def test_a_failed_encode_drops_the_leads_walk_and_a_walk_is_read_once(monkeypatch):
    """The lead's walk of the last level runs on the pool after the model is through: an
    encode that fails before its mixed stream reads it cancels it (no work left on the pool),
    and a lead's walk is read once."""
    box = _box_surface(128)
    codec = PointCloudCodec.load(threads=2)
    cancelled, read = [], []
    cancel, walked = codec_module._LeadWalk.cancel, codec_module._LeadWalk.walked

    def cancel_spy(self):
        cancelled.append(self._passes)  # the pass walks it held, if still unread
        return cancel(self)

    def walked_spy(self):
        read.append(walked(self))
        with pytest.raises(ValueError, match="read once"):
            walked(self)
        return read[-1]

    add_payloads = codec_module.PointCloudCodec._add_payloads

    def failing(self, *args, **kwargs):
        if args[10] if len(args) > 10 else kwargs.get("mixed_only"):
            raise RuntimeError("the mixed stream failed")
        return add_payloads(self, *args, **kwargs)

    monkeypatch.setattr(codec_module._LeadWalk, "cancel", cancel_spy)
    monkeypatch.setattr(codec_module._LeadWalk, "walked", walked_spy)
    assert [p.name for p in codec.encode(box, Mode.SYNDROME, depth=7).payloads] == [MIXED_NOW]
    assert len(read) == 1 and len(cancelled) == 1  # read, then dropped (nothing left)
    assert cancelled[0] is None  # read: nothing of it was left to stop
    monkeypatch.setattr(codec_module.PointCloudCodec, "_add_payloads", failing)
    with pytest.raises(RuntimeError, match="mixed stream failed"):
        codec.encode(box, Mode.SYNDROME, depth=7)
    assert len(read) == 1 and len(cancelled) == 2  # never read: cancelled
    # its pass walks, never read, were stopped or waited for: nothing of them left running
    assert cancelled[-1] is not None and all(f.done() for f in cancelled[-1]._futures)


def test_mixed_encodes_at_once_share_the_pool_and_write_their_own_bytes():
    """Two encodes at once in one process (a service's threads), one codec on two threads:
    each lead's pass walks queue on the one shared pool beside the other's network rows, and
    each stream is the one an encode alone writes (no hang: a deadlock fails the wait)."""
    from concurrent.futures import ThreadPoolExecutor

    codec = PointCloudCodec.load(threads=2)
    clouds = [(_box_surface(128), 7), (_BENCH_CLOUDS.box_faces(96), 8)]  # (integers: kept)
    alone = [container.pack(codec.encode(c, Mode.SYNDROME, depth=d)) for c, d in clouds]
    assert all(container.unpack(a).payloads[0].name == MIXED_NOW for a in alone)
    with ThreadPoolExecutor(2) as callers:
        for _ in range(2):
            jobs = [callers.submit(lambda c=c, d=d: container.pack(
                codec.encode(c, Mode.SYNDROME, depth=d))) for c, d in clouds]
            assert [job.result(timeout=300) for job in jobs] == alone


@pytest.mark.parametrize("on_pool", [False, True])
def test_the_mixing_lead_walked_level_by_level_gives_the_whole_walks_lengths(camel, on_pool):
    """codec._MixingLead, its walks on the pool (a small cloud) or all at the last level: the
    mixed and refined code lengths of one walk over the levels' concatenation (the
    computation it replaced), and None unless every level before was added."""
    depth = 6
    codec = PointCloudCodec.load(threads=2)
    codes, bits = octree.build_levels(octree.voxelize(camel, depth).voxels, depth)
    n = camel.shape[0]
    f0_table = codec.tables.cdfs[:, 1]
    learned = []
    for level in range(depth - 1):
        neighbours = octree.neighbour_table(codes[level], level)
        lv = coder_module.learned_level(neighbours, bits[level], level, depth,
                                        codec._start_predict, codec.tables, Mode.SYNDROME,
                                        codec.decision)
        lv.contexts = mixing.level_contexts(neighbours, bits[level], n)
        learned.append(lv)
    lead = codec_module._MixingLead(f0_table, n, 2, 2, on_pool=on_pool)
    for level, lv in enumerate(learned):
        lead.add(bits[level - 1] if level else None, bits[level], lv)
    assert codec_module._MixingLead(f0_table, n, 2, 2, on_pool).code_lengths(depth - 1) is None
    occupancy = np.concatenate([b.T.reshape(-1) for b in bits[:-1]])
    index = np.concatenate([lv.indices for lv in learned])
    _, refined = refine.code_lengths(occupancy, index, refine.initial_buckets(f0_table),
                                     f0_table)
    mixed = adaptive.code_length(occupancy, mixing.probabilities(
        occupancy, index + GRID_K, np.concatenate([lv.contexts.packed() for lv in learned]),
        codec_module._bit_passes(bits[:-1]), f0_table, n,
        codec_module._node_extras(bits, range(depth - 1), 2)))
    assert lead.code_lengths(depth - 1) == (mixed, refined)


def test_a_small_clouds_mixing_lead_read_after_its_last_level_keeps_the_stream(monkeypatch):
    """A small cloud's mixing lead (its walks on the pool) is read after the model has run on
    the last level, where nothing before depends on it (codec._lead_can_wait); read before
    it, as on a larger cloud, the stream is the same. Here mixing leads (the camel, with any
    lead enough) and the neighbour coder is not tried on the last level, so that level's
    contexts come from the all-neighbour walk's: the same as made on the encoder's thread."""
    monkeypatch.setattr(codec_module, "MIX_LEAD", 1 << 30)
    points, depth = read_ply(SAMPLES / "camel_d6.ply"), 6
    codec = PointCloudCodec.load(threads=2)
    calls: list[tuple[str, object]] = []
    codings: list = []  # what each encode's walk over the levels found
    learned_level, leads = coder_module.learned_level, codec_module._MixingLead.leads
    walk_levels = PointCloudCodec._learned_levels

    def spy_learned(*args, **kwargs):
        calls.append(("learned", args[2]))
        return learned_level(*args, **kwargs)

    def spy_leads(self, levels):
        calls.append(("leads", leads(self, levels)))
        return calls[-1][1]

    monkeypatch.setattr(coder_module, "learned_level", spy_learned)
    monkeypatch.setattr(codec_module._MixingLead, "leads", spy_leads)
    monkeypatch.setattr(PointCloudCodec, "_learned_levels",
                        lambda *a, **k: codings.append(walk_levels(*a, **k)) or codings[-1])
    later = container.pack(codec.encode(points, Mode.SYNDROME, depth=depth))
    assert calls[-2:] == [("learned", depth - 1), ("leads", True)]
    calls.clear()
    monkeypatch.setattr(codec_module, "_lead_can_wait", lambda *_: False)
    first = container.pack(codec.encode(points, Mode.SYNDROME, depth=depth))
    assert calls[-2:] == [("leads", True), ("learned", depth - 1)]
    assert first == later
    assert all(c.mixing_leads for c in codings)
    for a, b in zip(*(c.learned for c in codings), strict=True):  # the mixed candidate's
        np.testing.assert_array_equal(a.contexts.packed(), b.contexts.packed())


def test_children_bytes_gather_each_nodes_bits():
    """Bit c of node j's byte is its child c, for any bits, contiguous or not."""
    rng = np.random.default_rng(5)
    bits = rng.random((1000, 8)) < 0.4
    want = (bits * (1 << np.arange(8))).sum(axis=1)
    np.testing.assert_array_equal(mixing.children_bytes(bits), want)
    np.testing.assert_array_equal(mixing.children_bytes(bits[::3]), want[::3])
    wide = rng.random((50, 16)) < 0.5
    np.testing.assert_array_equal(mixing.children_bytes(wide[:, 4:12]),
                                  (wide[:, 4:12] * (1 << np.arange(8))).sum(axis=1))
    assert mixing.children_bytes(np.zeros((0, 8), bool)).shape == (0,)
