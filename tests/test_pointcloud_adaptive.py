"""The per-level choice between the learned occupancy model and the adaptive context coder.

Round trips on dense, sparse, random and outlier clouds; the size guarantee against the
adaptive coder alone; which coder each level gets; the adaptive coder against an independent
numpy reference of its counts and against its own pure-Python kernels; hostile adaptive
payloads (CRCs recomputed, as an attacker would) refused with the documented errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprocodec import container, entropy, numerics
from reprocodec.errors import ContainerError, InputError, TooLargeError, VerificationError
from reprocodec.pointcloud import PointCloudCodec, adaptive, inspect_fields, octree
from reprocodec.pointcloud import codec as codec_module
from reprocodec.pointcloud.codec import ADAPTIVE_PAYLOAD, LEARNED_PAYLOADS, level_coders
from reprocodec.pointcloud.models import DEFAULT_MODEL
from reprocodec.pointcloud.ply import read_ply
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
# The per-level choice by bits alone: what most of this module tests (the price of network
# rows: test_row_price_* at the end).
BY_BITS = "smallest"
LEARNED_OR_ADAPTIVE = 4  # the newest format whose levels are learned or adaptive only


@pytest.fixture(scope="module",
                params=list(dict.fromkeys([DEFAULT_MODEL, "octree-ctx-v2", "octree-ctx-v1"])))
def codec(request):
    # The per-level coder choice is made under the model's own probabilities; refined ones
    # (test_pointcloud_refine.py) can make all-learned the smallest stream on these small
    # clouds and hide the mixing this module tests, so its learned payloads stay static.
    codec = PointCloudCodec.load(request.param)
    codec.refine = False
    return codec


def _surface(n: int, seed: int) -> np.ndarray:
    """A torus: a closed surface like the training data."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    return np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u),
                     0.35 * np.sin(v)], 1)


def _clouds() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(5)
    camel = read_ply(SAMPLES / "camel_d6.ply")
    sparse = _surface(60000, 1)[rng.random(60000) < 0.05]  # ~3k points, far apart at depth 10
    outliers = np.concatenate([camel.astype(np.float64), rng.uniform(-200, 260, (40, 3))])
    return {
        "dense": (camel, 6),
        "sparse": (sparse, 10),
        "random": (rng.integers(0, 1 << 10, (3000, 3)), 10),
        "outliers": (outliers, 9),
    }


CLOUDS = _clouds()


def _levels(msg, depth: int) -> str:
    """'L'/'A'/'N' per level, as the stream signals it."""
    assert msg.point_cloud.depth == depth
    return level_coders(msg)


def _roundtrip(codec, points, depth, mode=Mode.SYNDROME, coders=BY_BITS):
    msg = container.unpack(container.pack(codec.encode(points, mode, depth=depth,
                                                       coders=coders)))
    return msg, codec.decode(msg)


@pytest.fixture(scope="module")
def streams(codec):
    """The learned / adaptive choice, at format 4 (before the neighbour coder, whose levels
    test_pointcloud_neighbour.py covers)."""
    return {name: container.unpack(container.pack(codec.encode(
        pts, "syndrome", depth=d, coders=BY_BITS, bitstream_format=LEARNED_OR_ADAPTIVE)))
        for name, (pts, d) in CLOUDS.items()}


@pytest.fixture(scope="module")
def mixed(streams):
    """A cloud whose stream mixes both coders under this model: the outlier cloud (v1, v2);
    octree-ctx-v3 codes it learned on every level, and mixes on the sparse surface."""
    for name in ("outliers", "sparse"):
        levels = _levels(streams[name], CLOUDS[name][1])
        if "L" in levels and "A" in levels:
            return name
    raise AssertionError("no cloud mixes the coders")


@pytest.mark.parametrize("name", list(CLOUDS))
def test_lossless_and_never_larger_than_the_adaptive_coder(codec, streams, name):
    points, depth = CLOUDS[name]
    msg = streams[name]
    out = codec.decode(msg)
    voxels = octree.voxelize(points, depth).voxels
    np.testing.assert_array_equal(out.voxels, voxels)
    assert out.bit_exact
    # The adaptive coder alone, as a stream: the guarantee compares whole streams.
    alone = codec.encode(points, "syndrome", depth=depth, coders="adaptive")
    assert _levels(alone, depth) == "A" * depth and not alone.protected
    assert msg.ByteSize() <= alone.ByteSize()
    # ... and that stream is the adaptive rANS bytes plus the signalling: the level flags and
    # the payload's framing (name, shape, CRC, symbols checksum).
    payload = alone.payloads[0]
    assert len(payload.data) == adaptive.encoded_size(voxels, depth) + (depth + 7) // 8
    assert payload.ByteSize() - len(payload.data) + (depth + 7) // 8 <= 48


def test_dense_surface_is_coded_by_the_learned_model(streams, codec):
    msg = streams["dense"]
    assert _levels(msg, 6) == "LLLLLL" == inspect_fields(msg)["level_coders"]
    # Every level learned is the earlier layout: one payload (static or refined
    # probabilities), one protected tensor.
    assert len(msg.payloads) == 1 and len(msg.protected) == 1
    assert msg.payloads[0].name in LEARNED_PAYLOADS
    camel = CLOUDS["dense"][0]
    alone = codec.encode(camel, "syndrome", depth=6, coders="adaptive")
    assert msg.ByteSize() < 0.75 * alone.ByteSize()  # the learned model earns its place


@pytest.mark.parametrize("name", ["sparse", "random"])
def test_sparse_clouds_use_the_adaptive_coder_where_it_is_cheaper(codec, streams, name):
    points, depth = CLOUDS[name]
    msg = streams[name]
    levels = _levels(msg, depth)
    assert levels.endswith("A"), levels  # the finest, sparsest level (v2: two, v1: three)
    fields = inspect_fields(msg)
    assert fields["level_coders"] == levels and fields["adaptive_occupancy_bits"] > 0
    learned = codec.encode(points, "syndrome", depth=depth, coders="learned")
    assert _levels(learned, depth) == "L" * depth
    assert msg.ByteSize() < learned.ByteSize()


def test_mixed_stream_is_protected_and_exact_under_noise_within_the_bound(codec, monkeypatch,
                                                                         mixed):
    points, depth = CLOUDS[mixed]
    msg = container.unpack(container.pack(codec.encode(points, "syndrome", depth=depth,
                                                       coders=BY_BITS,
                                                       bitstream_format=LEARNED_OR_ADAPTIVE)))
    levels = _levels(msg, depth)
    assert "L" in levels and "A" in levels, levels
    rng = np.random.default_rng(3)
    eps = 0.9 * codec.bound.value
    monkeypatch.setattr(numerics, "perturb",
                        lambda name, v, b: v + rng.uniform(-eps, eps, size=v.shape))
    out = codec.decode(msg)
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)
    # Unprotected, the same noise well past the bound is caught, never returned.
    unprotected = container.unpack(container.pack(codec.encode(points, "none", depth=depth,
                                                               coders=BY_BITS)))
    monkeypatch.setattr(numerics, "perturb",
                        lambda name, v, b: v + rng.uniform(-0.03, 0.03, size=v.shape))
    if "L" in _levels(unprotected, depth):
        with pytest.raises(VerificationError):
            codec.decode(unprotected)


@pytest.mark.parametrize("coders", ["adaptive", "learned"])
@pytest.mark.parametrize("mode", [Mode.NONE, Mode.FLAGS])
def test_forced_coders_round_trip(codec, coders, mode):
    points, depth = CLOUDS["sparse"]
    msg, out = _roundtrip(codec, points, depth, mode, coders=coders)
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)
    assert bool(msg.protected) == (coders == "learned")


def test_single_point_and_bad_coders_option(codec):
    msg, out = _roundtrip(codec, np.array([[5, 6, 7]]), 10)
    np.testing.assert_array_equal(out.voxels, [[5, 6, 7]])
    with pytest.raises(InputError):
        codec.encode(np.array([[1, 2, 3]]), depth=4, coders="gzip")


# ------------------------------------------------------------------ the adaptive coder itself

def _reference_f0(bits: list[np.ndarray]) -> np.ndarray:
    """Independent numpy reference: KT counts of each decision's context over all earlier
    decisions (no halving), vectorized by ranking within contexts."""
    ctx_all, bit_all = [], []
    parent = np.zeros(1, np.int64)
    position = np.zeros(1, np.int64)
    for occupancy in bits:
        occ = occupancy.astype(np.int64)
        prefix = np.zeros(occ.shape[0], np.int64)
        ctx = np.zeros(occ.shape, np.int64)
        for j in range(8):
            ctx[:, j] = ((parent * 8 + position) << 8) | prefix | (1 << j)
            prefix |= occ[:, j] << j
        ctx_all.append(ctx.reshape(-1))
        bit_all.append(occ.reshape(-1))
        parent = np.repeat(occ @ (1 << np.arange(7, -1, -1)), occ.sum(axis=1))
        position = np.nonzero(occ)[1]
    ctx, bit = np.concatenate(ctx_all), np.concatenate(bit_all)
    order = np.argsort(ctx, kind="stable")
    n0 = np.zeros(ctx.size, np.int64)
    n1 = np.zeros(ctx.size, np.int64)
    sorted_ctx, sorted_bit = ctx[order], bit[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ctx)) + 1]
    group = np.repeat(starts, np.diff(np.r_[starts, ctx.size]))
    ones = np.cumsum(sorted_bit) - sorted_bit  # ones before, within the whole sorted array
    ones_before = ones - ones[group]
    n1[order] = ones_before
    n0[order] = (np.arange(ctx.size) - group) - ones_before
    f0 = ((2 * n0 + 1) << 16) // (2 * (n0 + n1) + 2)
    return np.clip(f0, 1, (1 << 16) - 1), np.bincount(ctx).max()


def _model_f0(bits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    model = adaptive.Model()
    f0, decisions, occupancy = [], [], []
    for level in bits:
        occ = adaptive.occupancy_bytes(level)
        occupancy.append(occ)
        f0.append(model.observe(occ, want_f0=True))
        decisions.append(adaptive.decision_bits(occ))
    return np.concatenate(f0), np.concatenate(decisions), occupancy


def test_adaptive_probabilities_match_an_independent_reference():
    voxels = octree.sort_voxels(read_ply(SAMPLES / "camel_d6.ply"))
    _, bits = octree.build_levels(voxels, 6)
    f0, decisions, _ = _model_f0(bits)
    reference, busiest = _reference_f0(bits)
    assert busiest <= adaptive.MAX_TOTAL  # no halving here: the reference has none
    np.testing.assert_array_equal(f0, reference)
    np.testing.assert_array_equal(decisions, np.concatenate([b.reshape(-1) for b in bits]))


def test_adaptive_counts_halve_and_stay_exact():
    """A cloud whose busiest context passes MAX_TOTAL: halving kicks in, and the coder still
    round-trips (encoder and decoder halve at the same decision)."""
    rng = np.random.default_rng(2)
    # Deep and sparse: below level ~4 every node has one child, so a few contexts see most
    # decisions.
    voxels = octree.sort_voxels(rng.integers(0, 1 << 16, (3000, 3)))
    _, bits = octree.build_levels(voxels, 16)
    f0, decisions, occupancy = _model_f0(bits)
    _, busiest = _reference_f0(bits)
    assert busiest > adaptive.MAX_TOTAL
    data = adaptive.encode(decisions, f0)
    decoder, model = adaptive.Decoder(data), adaptive.Model()
    for occ in occupancy:
        np.testing.assert_array_equal(model.decode_level(decoder), occ)
    decoder.finish()


def test_compiled_kernels_match_their_python_reference():
    if not hasattr(adaptive._model_kernel, "py_func"):
        pytest.skip("numba is not installed: the Python functions are the kernels")
    voxels = octree.sort_voxels(read_ply(SAMPLES / "camel_d6.ply"))[::7]
    _, bits = octree.build_levels(voxels, 6)
    f0, decisions, occupancy = _model_f0(bits)
    model, f0_py, length = adaptive.Model(), [], entropy.code_length_table()
    for occ in occupancy:
        out = np.zeros(8 * occ.size, np.int64)
        cost = adaptive._model_kernel.py_func(occ, model.parent_byte, model.position,
                                              model.counts, out, length)
        assert cost == adaptive.code_length(adaptive.decision_bits(occ), out)
        model._advance(occ)
        f0_py.append(out)
    np.testing.assert_array_equal(np.concatenate(f0_py), f0)
    data = adaptive.encode(decisions, f0)
    out = np.zeros(decisions.size + 2, np.uint32)
    first = adaptive._encode_kernel.py_func(decisions.astype(np.uint8), f0, out)
    assert out[first:].astype("<u4").tobytes() == data
    decoder, model = adaptive.Decoder(data), adaptive.Model()
    for occ in occupancy:
        got = np.zeros(occ.size, np.uint8)
        code = adaptive._decode_kernel.py_func(decoder.words, decoder.state, model.parent_byte,
                                               model.position, model.counts, got)
        assert code == adaptive._OK
        model._advance(got)
        np.testing.assert_array_equal(got, occ)
    decoder.finish()


def test_level_layout_kernels_equal_numpy():
    """occupancy_bytes, child_places, octree.children and build_levels (one-pass kernels)
    equal their numpy definitions: packbits of the rows (child 0 the top bit), np.nonzero of
    the bits, the children's codes masked by occupancy, np.unique's grouping of the parents;
    on random levels with empty and full bytes."""
    rng = np.random.default_rng(3)
    for m in (0, 1, 7, 5000):
        occupancy = rng.integers(0, 256, m).astype(np.uint8)
        occupancy[: m // 10] = rng.choice([1, 128, 255], m // 10)
        bits = np.unpackbits(occupancy[:, None], axis=1).astype(bool)
        np.testing.assert_array_equal(adaptive.occupancy_bytes(bits), occupancy)
        np.testing.assert_array_equal(adaptive.occupancy_bytes(bits.astype(np.int64) * 3),
                                      occupancy)  # any nonzero is a child
        rows, cols = np.nonzero(bits)
        parent_byte, position = adaptive.child_places(occupancy)
        np.testing.assert_array_equal(parent_byte, occupancy[rows])
        np.testing.assert_array_equal(position, cols)
        assert parent_byte.dtype == position.dtype == np.uint8
        codes = np.sort(rng.choice(1 << 40, m, replace=False)).astype(np.int64)
        want = ((codes[:, None] << 3) | np.arange(8))[bits]
        np.testing.assert_array_equal(octree.children(codes, bits), want)
    # build_levels groups sorted children in one pass: np.unique's grouping, level by level
    voxels = rng.integers(0, 1 << 9, (20000, 3))  # duplicates too
    codes, bits = octree.build_levels(voxels, 9)
    child = np.unique(octree.morton_encode(voxels))
    for level in range(8, -1, -1):
        parents, first = np.unique(child >> 3, return_index=True)
        occupancy = np.zeros((parents.size, 8), dtype=bool)
        occupancy[np.repeat(np.arange(parents.size), np.diff(np.append(first, child.size))),
                  child & 7] = True
        np.testing.assert_array_equal(codes[level], parents)
        np.testing.assert_array_equal(bits[level], occupancy)
        child = parents
    with pytest.raises(ValueError):
        octree.children(np.zeros(3, np.int64), np.zeros((2, 8), bool))
    with pytest.raises(ValueError):
        adaptive.occupancy_bytes(np.zeros((2, 7), bool))


@pytest.mark.parametrize("threads", [1, 2])
def test_level_pricing_is_the_model_walk(threads):
    """LevelPricing (on the pool with two threads, the caller reading each level's cost as
    it goes) gives code_length's costs of Model.observe's probabilities level by level, with
    the decisions as views of the bits, and keeps those probabilities of any ascending set of
    levels it is given, concatenated. Levels whose node counts do not follow their
    parents' occupancy are refused before any kernel writes."""
    rng = np.random.default_rng(9)
    voxels = rng.integers(0, 1 << 9, (30000, 3))
    _, bits = octree.build_levels(voxels, 9)
    pricing = adaptive.LevelPricing(bits, threads)
    model = adaptive.Model()
    f0s = []
    for level, level_bits in enumerate(bits):
        occupancy = adaptive.occupancy_bytes(level_bits)
        f0s.append(model.observe(occupancy, want_f0=True))
        decisions = adaptive.decision_bits(occupancy)
        assert pricing[level] == adaptive.code_length(decisions, f0s[-1])
        np.testing.assert_array_equal(pricing.decisions[level], decisions)
        assert np.shares_memory(pricing.decisions[level], level_bits)
    decisions, costs = pricing.result()
    assert len(costs) == len(bits) and costs[-1] == pricing[len(bits) - 1]
    pricing.close()
    for chosen in ([0, 1, 5], [8], list(range(9)), [3, 4], []):
        kept = adaptive.LevelPricing(bits, threads, chosen)
        np.testing.assert_array_equal(
            kept.probabilities(), np.concatenate([f0s[lv] for lv in chosen] + [np.zeros(0)]))
        assert kept.result()[1] == costs
    for wrong in ([2, 1], [3, 3], [9], [-1, 2]):
        with pytest.raises(ValueError, match="ascending"):
            adaptive.LevelPricing(bits, threads, wrong)
    with pytest.raises(ValueError, match="nodes"):
        adaptive.LevelPricing([bits[0], bits[2]], threads)


def test_level_pricing_error_reaches_the_reader_and_no_level_waits_forever(monkeypatch):
    """A walk that fails on the pool (say, out of memory in a kernel) raises in the caller
    at the level it reads next, and every later level is released rather than awaited."""
    rng = np.random.default_rng(10)
    _, bits = octree.build_levels(rng.integers(0, 1 << 8, (5000, 3)), 8)
    calls = []
    kernel = adaptive._model_kernel

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("walk failed")
        return kernel(*args)

    monkeypatch.setattr(adaptive, "_model_kernel", failing)
    pricing = adaptive.LevelPricing(bits, 2)
    assert pricing[0] >= 0 and pricing[1] >= 0
    for level in (2, 5):
        with pytest.raises(MemoryError, match="walk failed"):
            pricing[level]
    pricing.close()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64])
def test_morton_kernels_equal_the_bit_interleaving(dtype):
    """morton_encode / morton_decode (compiled) against their definition: bit b of x, y, z at
    bits 3b + 2, 3b + 1, 3b of the code, for the largest coordinates of 21 bits too."""
    rng = np.random.default_rng(7)
    top = min((1 << 21) - 1, np.iinfo(dtype).max)
    coords = rng.integers(0, top + 1, (3000, 3)).astype(dtype)
    coords[:3] = [[top, 0, top], [0, top, 0], [top, top, top]]
    want = np.zeros(coords.shape[0], dtype=np.int64)
    for b in range(21):
        for axis in range(3):
            want |= ((coords[:, axis].astype(np.int64) >> b) & 1) << (3 * b + 2 - axis)
    np.testing.assert_array_equal(octree.morton_encode(coords), want)
    np.testing.assert_array_equal(octree.morton_decode(want), coords.astype(np.int64))


# ------------------------------------------------------------------------- hostile streams

def _reframed(msg, edit) -> bytes:
    """The stream after `edit`, with every CRC recomputed (as an attacker would)."""
    out = container.unpack(container.pack(msg))
    edit(out)
    for p in out.payloads:
        p.crc32 = container.crc32(p.data)
    return out.SerializeToString(deterministic=True)


def _refused_or_exact(codec, data: bytes, expected: np.ndarray) -> str:
    try:
        out = codec.decode(container.unpack(data))
    except (ContainerError, VerificationError, TooLargeError) as exc:
        return type(exc).__name__
    np.testing.assert_array_equal(out.voxels, expected)
    return "exact"


def _set_data(data: bytes):
    def edit(m):
        m.payloads[-1].data = data
    return edit


def test_hostile_adaptive_payloads_are_refused(codec):
    points, depth = CLOUDS["random"]
    # All levels adaptive (v1 chooses that for this cloud by itself; v2, trained on sparse
    # clouds too, takes two of its levels)
    msg = container.unpack(container.pack(codec.encode(points, "syndrome", depth=depth,
                                                       coders="adaptive")))
    assert _levels(msg, depth) == "A" * depth and [p.name for p in msg.payloads] == [
        ADAPTIVE_PAYLOAD]
    expected = octree.voxelize(points, depth).voxels
    good = bytes(msg.payloads[-1].data)
    flags, rans = good[:2], good[2:]
    rng = np.random.default_rng(9)
    variants = [b"", good[:1], flags, flags + rans[:4], flags + rans[:8], good[:-4], good[:-1],
                good + b"\x00" * 4, good + b"\x01", b"\x00\x00" + rans, b"\xff\xff" + rans,
                b"\x00\x04" + rans, flags + b"\x00" * len(rans), flags + b"\xff" * len(rans),
                flags + b"\xff" * (1 << 16)]
    for _ in range(30):
        edit = bytearray(good)
        edit[int(rng.integers(2, len(edit)))] ^= 1 << int(rng.integers(8))
        variants.append(bytes(edit))
    outcomes = [_refused_or_exact(codec, _reframed(msg, _set_data(v)), expected)
                for v in variants]
    # Before any learned level, nothing but this payload's bytes decides: all are malformed.
    assert "VerificationError" not in outcomes[:15], outcomes
    assert outcomes.count("exact") <= 2, outcomes  # an edit of padding-like bits at most


@pytest.mark.parametrize("start", [0, (1 << 31) - 1, 1 << 63, (1 << 64) - 1])
def test_binary_streams_refuse_a_start_state_no_encoder_reaches(start):
    """The adaptive, refined, mixed and neighbour streams' decoder (adaptive.Decoder): a
    start outside [2^31, 2^63), where every encoder's state stays, is refused at once."""
    words = start.to_bytes(8, "little") + bytes(8)
    with pytest.raises(adaptive.AdaptiveStreamError, match="initial state"):
        adaptive.Decoder(words)
    assert adaptive.LenientDecoder(words, lenient=True).failed
    adaptive.Decoder((1 << 31).to_bytes(8, "little") + bytes(8))  # the lowest start is valid

def test_hostile_adaptive_shapes_and_layouts_are_refused(codec, streams, mixed):
    points, depth = CLOUDS[mixed]
    msg = streams[mixed]
    assert [p.name for p in msg.payloads][1:] == [ADAPTIVE_PAYLOAD]
    assert msg.payloads[0].name in LEARNED_PAYLOADS
    expected = octree.voxelize(points, depth).voxels
    n = int(msg.point_cloud.num_points)
    total = int(msg.payloads[-1].shape[0])

    def shape(value):
        def edit(m):
            m.payloads[-1].shape[:] = [value]
        return edit

    def drop(index):
        def edit(m):
            del m.payloads[index]
        return edit

    def swap(m):
        a, b = m.payloads[0], m.payloads[1]
        a_copy = type(a)()
        a_copy.CopyFrom(a)
        a.CopyFrom(b)
        b.CopyFrom(a_copy)

    def all_adaptive_flags(m):
        m.payloads[-1].data = b"\xff\x01" + bytes(m.payloads[-1].data)[2:]

    def no_protected(m):
        del m.protected[0]

    def rename(m):
        m.payloads[-1].name = "occupancy_other"

    edits = [shape(total + 8), shape(total - 8), shape(total + 3), shape(8 * n * depth + 8),
             shape((1 << 31) - 8), drop(0), drop(1), swap, all_adaptive_flags, no_protected,
             rename]
    for edit in edits:
        outcome = _refused_or_exact(codec, _reframed(msg, edit), expected)
        assert outcome != "exact", edit


def test_more_nodes_than_points_is_refused_before_decoding_them(codec, streams):
    """A level never has more nodes than the cloud has points: a header that claims fewer
    points than the stream's levels hold stops the decoder at that level."""
    msg = streams["random"]

    def fewer(m):
        m.point_cloud.num_points = 5
        m.point_cloud.checksum = container.point_cloud_header_checksum(m.point_cloud)

    with pytest.raises(ContainerError, match="nodes|impossible"):
        codec.decode(container.unpack(_reframed(msg, fewer)))


# -------------------------------------------------------------- compiled feature computation

def test_compiled_features_equal_the_numpy_reference(monkeypatch):
    """The codec's compiled feature kernel returns the numpy code's exact uint8 features, for
    whole levels and for the encoder's sampled rows."""
    from reprocodec.pointcloud import context

    if context.numba is None:
        pytest.skip("numba is not installed: the numpy code is the only path")
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    codes, bits = octree.build_levels(voxels, 7)
    cases = []
    for level in (2, 5, 6):
        table = octree.neighbour_table(codes[level], level)
        rows = np.arange(0, codes[level].size, 3)
        sampled = octree.neighbour_table(codes[level], level, rows)
        np.testing.assert_array_equal(sampled, table[rows])
        cases += [(table, level), (sampled, level)]
    compiled = [[context.pass_features(t, bits[lv], k, lv, 7, compact=True)
                 for k in range(8)] for t, lv in cases]
    monkeypatch.setattr(context, "numba", None)
    for (t, lv), got in zip(cases, compiled, strict=True):
        for k in range(8):
            want = context.pass_features(t, bits[lv], k, lv, 7, compact=True)
            assert got[k].dtype == want.dtype == np.uint8
            np.testing.assert_array_equal(got[k], want)


@pytest.mark.parametrize("compiled", [True, False])
def test_chunked_float_features_give_the_same_logits(codec, monkeypatch, compiled):
    """The codec makes features chunk by chunk in float32: bit-identical logits to the whole
    uint8 feature array converted per chunk (the earlier path), so streams do not change."""
    from reprocodec.pointcloud import context, networks

    if not compiled:
        monkeypatch.setattr(context, "numba", None)
    monkeypatch.setattr(networks, "CHUNK_ROWS", 1000)  # several chunks per pass
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    codes, bits = octree.build_levels(voxels, 7)
    for level in (4, 6):
        table = octree.neighbour_table(codes[level], level)
        for k in (0, 3, 7):
            want = codec.networks.logits(context.pass_features(
                table, bits[level], k, level, 7, compact=True), k, 6 - level)
            np.testing.assert_array_equal(codec._predict(table, bits[level], k, level, 7), want)


@pytest.mark.parametrize("name", ["dense", "outliers"])
def test_sampled_level_estimates_keep_the_guarantee(codec, monkeypatch, name):
    """With levels priced from a sample of their nodes (as large clouds are), the encoder
    still round-trips, stays within the adaptive coder's size and keeps the learned model
    where it wins by far (the dense surface)."""
    points, depth = CLOUDS[name]
    exact = codec.encode(points, "syndrome", depth=depth, coders=BY_BITS)
    monkeypatch.setattr(codec_module, "ESTIMATE_NODES", 64)  # levels of >= 256 nodes
    msg, out = _roundtrip(codec, points, depth)
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)
    alone = codec.encode(points, "syndrome", depth=depth, coders="adaptive")
    assert msg.ByteSize() <= alone.ByteSize()
    if name == "dense":
        assert _levels(msg, depth) == _levels(exact, depth) == "L" * depth


def test_no_estimate_after_a_level_the_model_wins_by_far(monkeypatch):
    """After a level where the model saved over CONFIDENT_SAVING x ROW_PRICE bits a row, the
    next level is computed without a sampled estimate first; the choice stays exact, so the
    stream is the one estimating every level gives (a quarter-sampled surface: its last
    level is still estimated, and goes adaptive)."""
    from reprocodec.pointcloud import coder as coder_module

    codec = PointCloudCodec.load()  # as shipped: refined probabilities, the row price
    points = _surface(60000, 1)[np.random.default_rng(5).random(60000) < 0.25]
    monkeypatch.setattr(codec_module, "ESTIMATE_NODES", 64)  # levels of >= 256 nodes
    monkeypatch.setattr(codec_module, "SPARSE_CHILDREN", (0, 1))  # every level may be learned
    estimated, real = [], coder_module.estimate_level_cost
    monkeypatch.setattr(coder_module, "estimate_level_cost",
                        lambda *a: estimated.append(a[2]) or real(*a))
    confident = container.pack(codec.encode(points, depth=9))
    confident_levels = list(estimated)
    monkeypatch.setattr(codec_module, "CONFIDENT_SAVING", 1 << 40)  # never confident
    estimated.clear()
    assert container.pack(codec.encode(points, depth=9)) == confident
    assert set(confident_levels) < set(estimated)  # estimates skipped, none added
    assert max(estimated) in confident_levels  # the finest level is still estimated
    assert _levels(container.unpack(confident), 9)[-1] == "A"


def test_no_model_nor_table_on_a_level_of_about_one_child_a_node(monkeypatch):
    """auto: on a level whose nodes average under SPARSE_CHILDREN occupied children the model
    is neither estimated nor run, and the level's neighbour table is made only if another
    coder reads it (at format 4 none does); the stream is the one trying the model there
    gives (it saved too little a row: the quarter-sampled surface's finest level, 1.05
    children a node). By bits alone the model is still run there."""
    from reprocodec.pointcloud import coder as coder_module

    codec = PointCloudCodec.load()
    points = _surface(60000, 1)[np.random.default_rng(5).random(60000) < 0.25]
    depth = 9
    codes, bits = octree.build_levels(octree.voxelize(points, depth).voxels, depth)
    children = [np.count_nonzero(b) / c.size for b, c in zip(bits, codes, strict=True)]
    shipped = codec_module.SPARSE_CHILDREN
    sparse = [lv for lv in range(depth) if children[lv] < shipped[0] / shipped[1]]
    assert sparse == [depth - 1], children  # the finest level only (the one before: 1.18)
    runs: list[int] = []
    for name in ("estimate_level_cost", "learned_level"):
        real = getattr(coder_module, name)
        monkeypatch.setattr(coder_module, name,
                            lambda *a, real=real: runs.append(a[2]) or real(*a))
    tabled, table_of = [], octree.LevelTables.table_of
    monkeypatch.setattr(octree.LevelTables, "table_of",
                        lambda self, c, lv, b: tabled.append(lv) or table_of(self, c, lv, b))
    streams = {}
    for sparse_children in (shipped, (0, 1)):  # as shipped, then never sparse
        monkeypatch.setattr(codec_module, "SPARSE_CHILDREN", sparse_children)
        for fmt in (container.FORMAT_VERSION, 4):
            runs.clear()
            tabled.clear()
            streams[sparse_children, fmt] = container.pack(
                codec.encode(points, depth=depth, bitstream_format=fmt))
            skipped = sparse_children == shipped
            assert (depth - 1 in runs) != skipped
            assert set(range(depth - 1)) <= set(runs)
            if fmt == 4:
                assert (depth - 1 in tabled) != skipped
        for fmt in (container.FORMAT_VERSION, 4):
            assert streams[sparse_children, fmt] == streams[shipped, fmt]
    monkeypatch.setattr(codec_module, "SPARSE_CHILDREN", shipped)
    runs.clear()
    codec.encode(points, depth=depth, coders="smallest")
    assert depth - 1 in runs
    out = codec.decode(container.unpack(streams[shipped, container.FORMAT_VERSION]))
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)


# ---------------------------------------------------------------- the price of network rows


def _learned_rows(msg, points, depth: int) -> int:
    """Network rows a decoder of `msg` runs: 8 per node of each learned level."""
    codes, _ = octree.build_levels(octree.voxelize(points, depth).voxels, depth)
    return sum(8 * codes[lv].size for lv, c in enumerate(_levels(msg, depth)) if c == "L")


def test_row_price_moves_low_value_levels_to_the_adaptive_coder():
    """As shipped (refined probabilities, ROW_PRICE): a quarter-sampled surface's finest
    level saves too little per network row and goes adaptive; the stream is a little larger
    than the smallest one, bits plus priced rows are lower, and it is still lossless and never
    larger than the adaptive coder's."""
    codec = PointCloudCodec.load()
    points = _surface(60000, 1)[np.random.default_rng(5).random(60000) < 0.25]
    depth = 9
    priced = container.unpack(container.pack(codec.encode(points, depth=depth)))
    by_bits = codec.encode(points, depth=depth, coders="smallest")
    alone = codec.encode(points, depth=depth, coders="adaptive")
    levels = _levels(priced, depth)
    assert levels[-1] == "A" and _levels(by_bits, depth)[-1] == "L", levels
    rows = [_learned_rows(m, points, depth) for m in (priced, by_bits)]
    assert rows[0] < 0.7 * rows[1]
    assert by_bits.ByteSize() < priced.ByteSize() <= alone.ByteSize()
    price, per = codec_module.ROW_PRICE
    cost = [8 * m.ByteSize() * per + r * price
            for m, r in zip((priced, by_bits), rows, strict=True)]
    assert cost[0] < cost[1]
    out = PointCloudCodec.load().decode(priced)
    np.testing.assert_array_equal(out.voxels, octree.voxelize(points, depth).voxels)


@pytest.mark.parametrize("name", list(CLOUDS))
def test_the_adaptive_stream_floor_is_below_the_stream(codec, name, monkeypatch):
    """The encoder skips building the all-adaptive stream when this floor is above its best
    candidate: the floor must never exceed the real stream, and the encoder computes it from
    the stream's own header, code length and decisions."""
    points, depth = CLOUDS[name]
    floors = []
    real_floor = codec_module.adaptive_stream_floor

    def spy(*args):
        floors.append(real_floor(*args))
        return floors[-1]

    monkeypatch.setattr(codec_module, "adaptive_stream_floor", spy)
    codec.encode(points, "syndrome", depth=depth)
    alone = codec.encode(points, "syndrome", depth=depth, coders="adaptive")
    header = container.unpack(container.pack(alone))
    del header.payloads[:]
    _, bits = octree.build_levels(octree.voxelize(points, depth).voxels, depth)
    model, cost, rows = adaptive.Model(), 0, 0
    for level_bits in bits:
        occupancy = adaptive.occupancy_bytes(level_bits)
        f0 = model.observe(occupancy, want_f0=True)
        cost += adaptive.code_length(adaptive.decision_bits(occupancy), f0)
        rows += level_bits.size
    floor = real_floor(header.ByteSize(), cost, rows)
    stream = alone.ByteSize() << (3 + entropy.COST_FRACTION)
    assert 0.9 * stream < floor <= stream
    assert floors[-1] == floor  # what encode compared its candidates with


def test_smallest_reaches_the_codec_from_the_service_and_the_cli(tmp_path):
    """The encoder service's `smallest` request field and `reprocodec encode --smallest` ask
    for the choice by bits alone; without them the row price applies."""
    from reprocodec import cli
    from reprocodec.pointcloud.ply import write_ply
    from reprocodec.v1 import service_pb2
    from server.backend import Codecs, encode_point_cloud

    points = _surface(60000, 1)[np.random.default_rng(5).random(60000) < 0.25]
    depth = 9
    codecs = Codecs(None)  # the shipped models
    served = {smallest: encode_point_cloud(
        codecs, service_pb2.EncodePointCloudRequest(depth=depth, smallest=smallest), points,
        "cpu").bitstream for smallest in (False, True)}
    ply = tmp_path / "cloud.ply"
    write_ply(ply, points)
    written = {}
    for smallest in (False, True):
        out = tmp_path / f"{smallest}.rpc"
        argv = ["encode", str(ply), "-o", str(out), "--local", "--depth", str(depth)]
        assert cli.main(argv + (["--smallest"] if smallest else [])) == 0
        written[smallest] = container.unpack(out.read_bytes())
    for streams in (served, written):
        assert _levels(streams[False], depth)[-1] == "A"
        assert _levels(streams[True], depth)[-1] == "L"
        assert streams[True].ByteSize() < streams[False].ByteSize()


def test_adaptive_levels_before_a_learned_one_keep_the_table_chain(monkeypatch, ground_rings):
    """Ground rings at depth 10 code levels 5-8 adaptive and 9 learned: the decoder makes
    every neighbour table after the root's from the one before (the chain through the adaptive
    levels), never by the binary searches, and decodes exactly."""
    rings = ground_rings
    codec = PointCloudCodec.load()
    msg = container.unpack(container.pack(codec.encode(
        rings, depth=10, bitstream_format=LEARNED_OR_ADAPTIVE)))
    levels = _levels(msg, 10)
    assert "AL" in levels[1:], levels  # a learned level after an adaptive one, past the root
    searched = []
    binary_searches = octree.neighbour_table

    def spy(codes, level, rows=None):
        searched.append(level)
        return binary_searches(codes, level, rows)

    monkeypatch.setattr(octree, "neighbour_table", spy)
    out = codec.decode(msg)
    np.testing.assert_array_equal(out.voxels, octree.voxelize(rings, 10).voxels)
    assert searched == [0]


def test_code_length_refuses_probabilities_outside_its_table():
    """adaptive.code_length's compiled sum reads the length table unchecked: out-of-range
    probabilities (or a shape mismatch) are refused before it runs."""
    bits = np.array([0, 1], np.uint8)
    assert adaptive.code_length(bits, np.array([1 << 15, 1 << 15], np.uint16)) == 2 << 16
    for f0 in (np.array([1 << 20, 5]), np.array([-5, 5]), np.array([0, 5]), np.array([5])):
        with pytest.raises(ValueError):
            adaptive.code_length(bits, f0)


def test_an_encode_started_on_the_pool_gives_the_same_bytes():
    """start_encode: the kernel on the pool (the encoder codes the adaptive and neighbour
    payloads while it makes the learned one), the same bytes as encode(), with the
    probabilities given or made by a function on the pool."""
    rng = np.random.default_rng(3)
    bits = rng.random(50_000) < 0.3
    f0 = rng.integers(1, adaptive._ONE, bits.size).astype(adaptive.F0_DTYPE)
    data = adaptive.encode(bits, f0)
    for threads in (1, 2):
        assert adaptive.start_encode(bits, f0, threads)() == data
        # probabilities made meanwhile: a function called (and its result checked) on the pool
        assert adaptive.start_encode(bits, lambda: f0, threads)() == data
        with pytest.raises(ValueError, match="disagree"):
            adaptive.start_encode(bits, lambda: f0[:-1], threads)()
    with pytest.raises(ValueError, match="disagree"):  # an array: on the caller's thread
        adaptive.start_encode(bits, f0[:-1], 2)


def test_flagged_payloads_coded_on_the_pool_change_no_byte():
    """With two threads the adaptive payload is coded on the pool while the learned one is
    made: the same stream as one thread."""
    points, depth = CLOUDS["sparse"]
    one, two = PointCloudCodec.load(threads=1), PointCloudCodec.load(threads=2)
    streams = [container.pack(c.encode(points, depth=depth, bitstream_format=LEARNED_OR_ADAPTIVE))
               for c in (one, two)]
    assert streams[0] == streams[1]
    assert {"L", "A"} <= set(_levels(container.unpack(streams[1]), depth))  # both payloads


@pytest.mark.parametrize("threads", [1, 2])
def test_adaptive_levels_walked_again_change_no_byte(monkeypatch, threads):
    """A cloud of more than KEEP_ADAPTIVE_BITS decisions: the pricing keeps no probabilities
    and the adaptive payload's levels are walked again (on the pool with two threads), the
    same stream as kept ones give, every candidate's (`smallest` too)."""
    points, depth = CLOUDS["sparse"]
    codec = PointCloudCodec.load(threads=threads)
    kept = [container.pack(codec.encode(points, depth=depth, coders=coders))
            for coders in ("auto", "smallest")]
    walks = []
    pricing = adaptive.LevelPricing

    def counted(bits, threads=1, keep=()):
        walks.append(list(keep))
        return pricing(bits, threads, keep)

    monkeypatch.setattr(codec_module, "KEEP_ADAPTIVE_BITS", 0)
    monkeypatch.setattr(adaptive, "LevelPricing", counted)
    again = [container.pack(codec.encode(points, depth=depth, coders=coders))
             for coders in ("auto", "smallest")]
    assert again == kept
    assert "A" in _levels(container.unpack(again[0]), depth)
    assert walks[0] == [] and len(walks) > 2  # priced keeping none, then walked again
