"""The neighbour coder (pointcloud/neighbour.py) and the codec's format-5 "occupancy_neighbour"
payload: the encoder's walk against the pass-by-pass decoder on real octree levels, the
model's snapshot / restore, determinism, coders="neighbour", the per-level choice with it,
the format gate (formats 3 and 4 never carry it), hostile layouts (CRCs recomputed, as an
attacker would) and the rule that gives a level to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_pointcloud_mixing import _box_surface  # the six faces of an n^3 box

from reprocodec import container, entropy
from reprocodec.errors import ContainerError, InputError, VerificationError
from reprocodec.pointcloud import (
    PointCloudCodec,
    adaptive,
    inspect_fields,
    mixing,
    neighbour,
    nodecontext,
    octree,
)
from reprocodec.pointcloud import codec as codec_module
from reprocodec.pointcloud.adaptive import AdaptiveStreamError
from reprocodec.pointcloud.codec import (
    ADAPTIVE_PAYLOAD,
    LEARNED_PAYLOADS,
    MIXED_PAYLOADS,
    NEIGHBOUR_PAYLOAD,
    NEIGHBOUR_PAYLOADS,
    NEIGHBOUR_PRICE,
    NEIGHBOUR_V2_PAYLOAD,
    ROW_PRICE,
    _adaptive_costs,
    _neighbour_saving,
    _time_cost,
    level_coders,
    mixing_version,
    neighbour_version,
)
from reprocodec.pointcloud.ply import read_ply
from reprocodec.pointcloud.rowslices import row_slices
from reprocodec.safeguard import Mode

ONE = 1 << 16
# the neighbour payload of the newest format (what the encoder writes by default)
NEIGHBOUR_NOW = NEIGHBOUR_PAYLOADS[neighbour_version(container.FORMAT_VERSION)]
MIXED_NOW = MIXED_PAYLOADS[mixing_version(container.FORMAT_VERSION)]
UNIT = 1 << entropy.COST_FRACTION  # one bit in code-length units
RINGS_DEPTH = 10


@pytest.fixture(scope="module")
def codec():
    return PointCloudCodec.load()


def _rings(seed: int, beams: int, azimuths: int, noise: float = 0.02) -> np.ndarray:
    """Ground rings of a spinning sensor (conftest's ground_rings with other beam counts)."""
    rng = np.random.default_rng(seed)
    elevation, azimuth = np.meshgrid(np.deg2rad(np.linspace(-25, -2, beams)),
                                     np.linspace(0, 2 * np.pi, azimuths, endpoint=False),
                                     indexing="ij")
    r = 1.8 / np.tan(-elevation) + rng.normal(0, noise, elevation.shape)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth),
                     rng.normal(0, noise, r.shape)], -1).reshape(-1, 3)


def _sphere(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _packed(msg):
    """The message as a decoder gets it (packed, then unpacked and validated)."""
    return container.unpack(container.pack(msg))


@pytest.fixture(scope="module")
def rings_levels(ground_rings):
    voxels = octree.voxelize(ground_rings, RINGS_DEPTH).voxels
    codes, bits = octree.build_levels(voxels, RINGS_DEPTH)
    return codes, bits, voxels.shape[0]


@pytest.fixture(scope="module")
def rings_streams(codec, ground_rings):
    """The ring cloud at depth 10 under each coders option (and auto at formats 4 and 5);
    "by_level": auto without the all-neighbour candidate (a small cloud's), the level-by-level
    choice (learned and neighbour levels here); "all_three": the same with the adaptive
    payload's framing not weighed (codec._framed off, as before 0.6.3), which mixes all three
    coders."""
    out = {}
    newest = container.FORMAT_VERSION
    for key, coders, fmt in (("auto", "auto", newest), ("auto4", "auto", 4),
                             ("auto5", "auto", 5), ("smallest", "smallest", newest),
                             ("adaptive", "adaptive", newest),
                             ("neighbour", "neighbour", newest),
                             ("neighbour5", "neighbour", 5)):
        out[key] = _packed(codec.encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH,
                                        coders=coders, bitstream_format=fmt))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec_module, "EVERY_NEIGHBOUR_BITS", 0)
        out["by_level"] = _packed(codec.encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH))
        mp.setattr(codec_module, "_framed", lambda levels, *_: levels)
        out["all_three"] = _packed(codec.encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH))
    return out


# ------------------------------------------------------------- the coder and its decoder


def _extras(model, bits, level):
    """A level's extras as the encoder makes them (version 2; None for version 1)."""
    if model.version == 1:
        return None
    extras = nodecontext.LevelExtras.of(bits[level - 1] if level else None, bits[level])
    # the encoder's form makes each bit's extra where it is read: the decoder's, pass by pass
    slots = nodecontext.node_slots(bits[level - 1] if level else None)
    np.testing.assert_array_equal(extras.array(), np.concatenate(
        [nodecontext.pass_extras(slots, bits[level], k) for k in range(8)]))
    return extras


def _walk(model, codes, bits, levels):
    """The encoder's walk over `levels` of a real octree (tables chained over every level, as
    the codec makes them): {level: (contexts, f0, cost, extras)}; the model moves on."""
    tables, out = octree.LevelTables(1), {}
    for level in range(max(levels) + 1):
        table = tables.table_of(codes[level], level, bits[level - 1] if level else None)
        if level in levels:
            contexts = mixing.level_contexts(table, bits[level], model.points)
            extras = _extras(model, bits, level)
            out[level] = (contexts, *neighbour.walk_contexts(model, contexts, bits[level],
                                                             extras), extras)
    return out


def _decode_levels(decoder, codes, levels, points, bits):
    """The decoder's side: each level pass by pass, contexts from its own tables (binary
    searches here, not the encoder's chain) and the bits decoded so far (version 2's slots
    from the level above's true `bits`: what a decoder has decoded, when it decodes right).
    Returns the decoded (M, 8) bits of each level, the contexts it computed, and the (level,
    pass) at which a lenient decoder first reported a failure (None if never)."""
    decoded, contexts, failed_at = {}, {}, None
    for level in levels:
        table = octree.neighbour_table(codes[level], level)
        got = np.zeros((codes[level].size, 8), dtype=bool)
        slots = nodecontext.node_slots(bits[level - 1] if level else None)
        seen = []
        for k in range(8):
            ctx = mixing.pass_contexts(table, got, k, points)
            seen.append(ctx)
            extras = nodecontext.pass_extras(slots, got, k)
            got[:, k] = decoder.decode(ctx, k, extras) == 1
            if failed_at is None and getattr(decoder, "failed", False):
                failed_at = (level, k)
        decoded[level], contexts[level] = got, np.concatenate(seen)
    return decoded, contexts, failed_at


CODED_LEVELS = (2, 5, 6, 8, 9)  # not all of them: the state crosses skipped levels


@pytest.fixture(scope="module", params=neighbour.VERSIONS)
def mirror(rings_levels, request):
    """A stream of CODED_LEVELS under each model version, and what the walk found."""
    codes, bits, n = rings_levels
    version = request.param
    walked = _walk(neighbour.Model(n, version), codes, bits, CODED_LEVELS)
    coded = np.concatenate([bits[lv].T.reshape(-1) for lv in CODED_LEVELS]).astype(np.uint8)
    f0 = np.concatenate([walked[lv][1] for lv in CODED_LEVELS])
    return walked, coded, f0, adaptive.encode(coded, f0), version


def test_walk_and_decoder_mirror_on_real_levels(rings_levels, mirror):
    codes, bits, n = rings_levels
    walked, coded, f0, data, version = mirror
    for level in CODED_LEVELS:
        contexts, level_f0, cost, _ = walked[level]
        level_bits = bits[level].T.reshape(-1).astype(np.uint8)  # pass-major
        assert contexts.fine.shape == level_f0.shape == level_bits.shape
        assert level_f0.dtype == np.uint16
        # the walk's code length is the code length of its own probabilities
        assert cost == adaptive.code_length(level_bits, level_f0)
    decoder = neighbour.Decoder(data, n, version)
    decoded, contexts, failed_at = _decode_levels(decoder, codes, CODED_LEVELS, n, bits)
    decoder.finish()
    assert failed_at is None and not decoder.failed
    for level in CODED_LEVELS:
        np.testing.assert_array_equal(decoded[level], bits[level])
        # the decoder's contexts from its decoded bits are the encoder's from the true ones
        np.testing.assert_array_equal(contexts[level], walked[level][0].packed())
    # consecutive coded levels: the next level's nodes follow from the decoded bits
    np.testing.assert_array_equal(octree.children(codes[5], decoded[5]), codes[6])
    # the state carried across levels matters: level 9 under a fresh model is coded otherwise
    fresh = _walk(neighbour.Model(n, version), codes, bits, (9,))[9][1]
    assert np.any(fresh != walked[9][1])
    # the other version's decoder does not decode this stream
    with pytest.raises(ContainerError):
        other = neighbour.Decoder(data, n, 3 - version)
        decoded, _, _ = _decode_levels(other, codes, CODED_LEVELS, n, bits)
        other.finish()
        assert all(np.array_equal(decoded[lv], bits[lv]) for lv in CODED_LEVELS)


def test_truncated_and_garbage_streams_are_refused_or_zeroed_when_lenient(rings_levels,
                                                                          mirror):
    codes, bits, n = rings_levels
    _, _, _, data, version = mirror
    half = len(data) // 8 * 4
    cuts = [b"", data[:4], data[:8], data[:half], data[:-4], data[:-1], b"\x00" * len(data)]
    for bad in cuts:
        with pytest.raises(ContainerError) as info:
            decoder = neighbour.Decoder(bad, n, version)
            _decode_levels(decoder, codes, CODED_LEVELS, n, bits)
            decoder.finish()
        assert isinstance(info.value, AdaptiveStreamError), repr(info.value)
    # words left over at the end: everything decodes, finish refuses
    decoder = neighbour.Decoder(data + b"\x00" * 4, n, version)
    with pytest.raises(AdaptiveStreamError):
        _decode_levels(decoder, codes, CODED_LEVELS, n, bits)
        decoder.finish()
    # lenient: never a raise; the passes before the break are the encoder's bits, zeros after
    order = [(lv, k) for lv in CODED_LEVELS for k in range(8)]
    for bad in (b"", data[:8], data[:half], data[:-4]):
        decoder = neighbour.Decoder(bad, n, version, lenient=True)
        decoded, _, failed_at = _decode_levels(decoder, codes, CODED_LEVELS, n, bits)
        decoder.finish()
        assert decoder.failed and failed_at is not None, len(bad)
        for lv, k in order:
            got = decoded[lv][:, k]
            if order.index((lv, k)) < order.index(failed_at):
                np.testing.assert_array_equal(got, bits[lv][:, k])
            else:
                assert not got.any(), (lv, k)
        if bad == data[:half]:  # half a stream breaks off before its last pass
            assert order.index(failed_at) < len(order) - 1
    # lenient on a good stream is an ordinary decoder
    decoder = neighbour.Decoder(data, n, version, lenient=True)
    decoded, _, failed_at = _decode_levels(decoder, codes, CODED_LEVELS, n, bits)
    decoder.finish()
    assert failed_at is None and not decoder.failed
    for lv in CODED_LEVELS:
        np.testing.assert_array_equal(decoded[lv], bits[lv])


def test_the_decoder_refuses_its_callers_bad_passes_and_contexts(rings_levels, mirror):
    _, _, n = rings_levels
    data, version = mirror[3], mirror[4]
    size = 1 << mixing.context_bits(n)
    coarse = 1 << mixing.coarse_bits(n)
    good = np.zeros(8, np.int64)
    for contexts, k in ((good, 8), (good, -1), (good - 1, 0), (good + size, 0),
                        (good + (coarse << 32), 0)):
        with pytest.raises(ValueError):
            neighbour.Decoder(data, n, version).decode(contexts, k, good.astype(np.int32))
    # in range: decoded
    assert neighbour.Decoder(data, n, version).decode(good, 0, good.astype(np.int32)).shape == (8,)
    # the encoder's walk and the snapshot's marks (which index the tables unchecked) check a
    # level's contexts: its fine contexts in range, 27-bit shapes, tables of its own size
    fine, shape = np.zeros(8, np.uint32), np.zeros(1, mixing.SHAPE_DTYPE)
    level = mixing.LevelContexts(fine, shape, n)
    slot = nodecontext.SLOT_DTYPE
    node_extras = nodecontext.LevelExtras(np.array([2047], slot), np.array([0xFF], np.uint8))
    for bad in (level._replace(fine=fine + size), level._replace(shapes=shape.astype(np.int64)),
                level._replace(shapes=shape + (1 << 27)), level._replace(points=n << 8),
                level._replace(fine=fine.astype(np.int64)), level._replace(fine=fine[:7])):
        with pytest.raises(ValueError):
            neighbour.walk_contexts(neighbour.Model(n, version), bad, np.zeros((1, 8), bool),
                                    node_extras)
        with pytest.raises(ValueError):
            neighbour.Model(n, version).snapshot(bad, node_extras)
    two = nodecontext.LevelExtras(np.zeros(2, slot), np.zeros(2, np.uint8))
    with pytest.raises(ValueError):  # one context per bit
        neighbour.walk_contexts(neighbour.Model(n, version), level, np.zeros((2, 8), bool), two)
    neighbour.walk_contexts(neighbour.Model(n, version), level, np.zeros((1, 8), bool),
                            node_extras)  # in range: walked
    if version == 1:  # version 1 reads no extras
        assert neighbour.Decoder(data, n, 1).decode(good, 0).shape == (8,)
        return
    node, zero = nodecontext.NODE_CONTEXTS, np.zeros(8, np.int32)
    for extras in (None, zero[:3], good, zero - 1, zero + node, zero + (8 << 24)):
        with pytest.raises(ValueError):  # version 2: one int32 in range per bit
            neighbour.Decoder(data, n, 2).decode(good, 0, extras)
    # the encoder's: a slot below 2048 and a byte, one each a node of the level
    one, byte = np.zeros(1, slot), np.zeros(1, np.uint8)
    for extras in (None, node_extras._replace(slots=one - 1), two,
                   node_extras._replace(slots=one + 2048), (one, byte.astype(np.int64)),
                   nodecontext.LevelExtras(one.astype(np.int32), byte),
                   nodecontext.LevelExtras(one.astype(np.int64), byte)):
        if not isinstance(extras, nodecontext.LevelExtras | None):
            extras = nodecontext.LevelExtras(*extras)
        with pytest.raises(ValueError):
            neighbour.walk_contexts(neighbour.Model(n, 2), level, np.zeros((1, 8), bool), extras)
        with pytest.raises(ValueError):
            neighbour.Model(n, 2).snapshot(level, extras)
    assert neighbour.Decoder(data, n, 2).decode(good, 0, zero + node - 1 + (7 << 24)).size == 8
    with pytest.raises(ValueError):
        neighbour.Model(n, 3)
    with pytest.raises(ValueError):  # a slot is a parent byte x 8 + a child index
        nodecontext.pass_extras(np.array([2048]), np.zeros((1, 8), bool), 0)
    with pytest.raises(ValueError):
        nodecontext.level_extras(np.array([0, 1]), np.zeros((1, 8), bool))


# ---------------------------------------------------------------------- snapshot / restore


def _arrays(model):
    return [a.copy() for a in model.arrays()]


# a mid level, and the largest one under tables sized for 1,000 points (more bits than half
# the tables' entries, once a whole copy): each keeps its touched entries, each once
# (listed in one pass, or in two: room for 1/16 of the bits, or only the least, 1,024)
@pytest.mark.parametrize("version", neighbour.VERSIONS)
@pytest.mark.parametrize("level, points", [(7, None), (9, 1000)])
@pytest.mark.parametrize("listed_per_bit", [neighbour.LISTED_PER_BIT, 1 << 40])
def test_snapshot_restore_undoes_a_walk_exactly(rings_levels, level, points, version,
                                                listed_per_bit, monkeypatch):
    monkeypatch.setattr(neighbour, "LISTED_PER_BIT", listed_per_bit)
    codes, bits, n = rings_levels
    n = points or n
    model = neighbour.Model(n, version)
    _walk(model, codes, bits, (3, 4))  # a state that is not the initial one
    tables = octree.LevelTables(1)
    for lv in range(level + 1):
        table = tables.table_of(codes[lv], lv, bits[lv - 1] if lv else None)
    contexts = mixing.level_contexts(table, bits[level], n)
    packed = contexts.packed()
    fine, coarse = packed & 0xFFFFFFFF, packed >> 32
    # a real level repeats contexts (both halves): the restore must put back the first value
    assert np.unique(fine).size < fine.size and np.unique(coarse).size < coarse.size
    if level == 9 and listed_per_bit > neighbour.LISTED_PER_BIT:
        assert np.unique(fine).size > 1 << 10  # more than the first pass has room for
    extras = _extras(model, bits, level)
    before = _arrays(model)
    saved = model.snapshot(contexts, extras)
    assert saved[0] == "entries"
    node = np.unique(extras.array() & nodecontext.NODE_MASK) if version == 2 else \
        np.zeros(0, np.int64)
    for (touched, _, _), distinct in zip(saved[1], (np.unique(fine), np.unique(coarse), node),
                                         strict=True):
        np.testing.assert_array_equal(np.sort(touched), distinct)  # each touched entry, once
    assert not any(mark.any() for mark in model._marks)  # clear for the next snapshot
    f0, cost = neighbour.walk_contexts(model, contexts, bits[level], extras)
    after = _arrays(model)
    # all moved (version 1 has no node model and no APM)
    moved = [np.any(a != b) for a, b in zip(after, before, strict=True)]
    assert moved == [True] * 4 + [version == 2] * 2 + [True, version == 2], moved
    model.restore(saved)
    for a, b in zip(model.arrays(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # a true undo: the same walk again gives the same probabilities and the same state
    again, cost_again = neighbour.walk_contexts(model, contexts, bits[level], extras)
    np.testing.assert_array_equal(again, f0)
    assert cost_again == cost
    for a, b in zip(model.arrays(), after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_snapshot_of_whole_tables_restores():
    """A level touching every entry of the fine and coarse tables: the entries would take
    more bytes than the tables, so the snapshot copies the whole tables, and restore puts
    them back. (Version 1: version 2's node table, 4.7 MB, is outgrown only by a level of
    half a million nodes.)"""
    points, m = 1000, 1 << 13
    rng = np.random.default_rng(5)
    size = 1 << mixing.context_bits(points)
    contexts = mixing.LevelContexts(rng.permutation(np.arange(8 * m) % size).astype(np.uint32),
                                    rng.integers(0, 1 << 27, m, mixing.SHAPE_DTYPE), points)
    extras = None
    bits = rng.random((m, 8)) < 0.4
    model = neighbour.Model(points, 1)
    before = _arrays(model)
    saved = model.snapshot(contexts, extras)
    assert saved[0] == "tables"
    assert not any(mark.any() for mark in model._marks)
    f0, cost = neighbour.walk_contexts(model, contexts, bits, extras)
    moved = [bool(np.any(a != b)) for a, b in zip(model.arrays(), before, strict=True)]
    assert moved == [True] * 4 + [False] * 2 + [True, False]  # (no node model, no APM)
    model.restore(saved)
    for a, b in zip(model.arrays(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    again, cost_again = neighbour.walk_contexts(model, contexts, bits, extras)
    np.testing.assert_array_equal(again, f0)
    assert cost_again == cost


@pytest.mark.parametrize("version", neighbour.VERSIONS)
def test_snapshot_restore_with_only_a_few_repeated_contexts(version):
    """Every bit of the level in one of three fine contexts and each node in one of three
    shapes (version 2's, in one of three slots and bytes): repeated entries still
    restore."""
    points = 3000
    size = 1 << mixing.context_bits(points)
    m = 60
    rng = np.random.default_rng(4)
    contexts = mixing.LevelContexts(
        np.array([0, size - 1, 17], np.uint32)[rng.integers(0, 3, 8 * m)],
        np.array([0, (1 << 27) - 1, 12345], mixing.SHAPE_DTYPE)[rng.integers(0, 3, m)], points)
    extras = nodecontext.LevelExtras(np.array([0, 5, 2047], nodecontext.SLOT_DTYPE)[
                                         rng.integers(0, 3, m)],
                                     np.array([0, 0xA5, 0xFF], np.uint8)[rng.integers(0, 3, m)])
    bits = rng.random((m, 8)) < 0.3
    model = neighbour.Model(points, version)
    neighbour.walk_contexts(
        model, mixing.LevelContexts(rng.integers(0, size, 8 * m).astype(np.uint32),
                                    rng.integers(0, 1 << 27, m, mixing.SHAPE_DTYPE), points),
        rng.random((m, 8)) < 0.5,
        nodecontext.LevelExtras(rng.integers(0, 2048, m, nodecontext.SLOT_DTYPE),
                                rng.integers(0, 256, m).astype(np.uint8)))
    before = _arrays(model)
    saved = model.snapshot(contexts, extras)
    neighbour.walk_contexts(model, contexts, bits, extras)
    assert any(np.any(a != b) for a, b in zip(model.arrays(), before, strict=True))
    model.restore(saved)
    for a, b in zip(model.arrays(), before, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- determinism


def test_probabilities_are_deterministic_integers(rings_levels):
    codes, bits, n = rings_levels
    levels = tuple(range(RINGS_DEPTH))
    first = _walk(neighbour.Model(n), codes, bits, levels)
    second = _walk(neighbour.Model(n), codes, bits, levels)
    for level in levels:
        _, f0, cost, _ = first[level]
        assert f0.dtype == np.uint16
        assert f0.min() >= 1 and int(f0.max()) <= ONE - 1
        np.testing.assert_array_equal(second[level][1], f0)
        assert second[level][2] == cost
    late = first[RINGS_DEPTH - 1][1]
    assert np.unique(late).size > 100  # the model predicts: not a constant
    # on a LiDAR sweep it codes the levels in fewer bits than the adaptive coder (the
    # module docstring's claim; the same integer units), and version 2 than version 1
    adaptive_cost = _adaptive_costs(bits)
    assert sum(first[lv][2] for lv in levels) < sum(adaptive_cost)
    version_1 = _walk(neighbour.Model(n, 1), codes, bits, levels)
    assert sum(first[lv][2] for lv in levels) < sum(version_1[lv][2] for lv in levels)


def test_streams_do_not_depend_on_threads(codec, ground_rings, rings_levels, rings_streams):
    codes, _, _ = rings_levels
    # the largest level's table is made in several slices on two threads
    assert max(len(row_slices(c.size, 2)) for c in codes[:-1]) > 1
    by_threads = {t: PointCloudCodec.load(threads=t) for t in (1, 2)}
    for coders in ("neighbour", "auto"):
        streams = {t: container.pack(c.encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH,
                                              coders=coders))
                   for t, c in by_threads.items()}
        assert streams[1] == streams[2], coders
        assert streams[1] == container.pack(rings_streams[coders])  # the default's too
    expected = octree.voxelize(ground_rings, RINGS_DEPTH).voxels
    for c in by_threads.values():
        np.testing.assert_array_equal(c.decode(rings_streams["auto"]).voxels, expected)


# ------------------------------------------------------------------- coders="neighbour"


def _neighbour_clouds(ground_rings):
    return {"box": (_box_surface(40), 7),
            "random": (np.random.default_rng(0).integers(0, 512, (3000, 3)), 9),
            "rings": (ground_rings, RINGS_DEPTH)}


@pytest.mark.parametrize("fmt", [5, 6])
@pytest.mark.parametrize("name", ["box", "random", "rings"])
def test_neighbour_on_every_level_round_trips(codec, ground_rings, name, fmt):
    points, depth = _neighbour_clouds(ground_rings)[name]
    voxels = octree.voxelize(points, depth).voxels
    _, bits = octree.build_levels(voxels, depth)
    msg = _packed(codec.encode(points, Mode.SYNDROME, depth=depth, coders="neighbour",
                               bitstream_format=fmt))
    assert msg.format_version == fmt
    assert level_coders(msg) == "N" * depth
    name = NEIGHBOUR_PAYLOADS[neighbour_version(fmt)]
    assert [p.name for p in msg.payloads] == [name] and not msg.protected
    payload = msg.payloads[0]
    coded = sum(b.size for b in bits)  # 8 bits a node of every level
    assert list(payload.shape) == [coded]
    assert bytes(payload.data[:(depth + 7) // 8]) == adaptive.level_flags((True,) * depth)
    fields = inspect_fields(msg)
    assert fields["level_coders"] == "N" * depth
    assert fields["neighbour_occupancy_bits"] == coded
    assert fields["adaptive_occupancy_bits"] == fields["coded_occupancy_bits"] == 0
    assert fields["learned_probabilities"] == "none"
    out = codec.decode(msg)
    assert out.bit_exact
    np.testing.assert_array_equal(out.voxels, voxels)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_neighbour_needs_format_5(codec, version):
    with pytest.raises(InputError):
        codec.encode(_box_surface(10), Mode.SYNDROME, depth=6, coders="neighbour",
                     bitstream_format=version)


# ------------------------------------------------------------------ the per-level choice


def test_auto_gives_a_lidar_sweep_to_the_neighbour_coder(codec, ground_rings, rings_streams):
    msg = rings_streams["auto"]
    levels = level_coders(msg)
    assert levels.count("N") >= RINGS_DEPTH // 2, levels  # the fine levels, mostly
    assert msg.format_version == container.PAYLOAD_VERSIONS[NEIGHBOUR_NOW] == 6
    assert NEIGHBOUR_V2_PAYLOAD in [p.name for p in msg.payloads]
    assert inspect_fields(msg)["level_coders"] == levels
    out = codec.decode(msg)
    assert out.bit_exact
    np.testing.assert_array_equal(out.voxels,
                                  octree.voxelize(ground_rings, RINGS_DEPTH).voxels)
    older = rings_streams["auto4"]
    assert "N" not in level_coders(older)
    assert msg.ByteSize() < older.ByteSize()  # the neighbour coder's point on LiDAR
    # never larger than the adaptive coder alone (the all-adaptive candidate)
    assert msg.ByteSize() <= rings_streams["adaptive"].ByteSize()
    assert rings_streams["smallest"].ByteSize() <= rings_streams["adaptive"].ByteSize()
    # the neighbour coder on every level is smaller than the adaptive coder here too
    assert rings_streams["neighbour"].ByteSize() < rings_streams["adaptive"].ByteSize()
    # and its version 2 model (format 6) than version 1 (format 5)
    assert rings_streams["neighbour"].ByteSize() < rings_streams["neighbour5"].ByteSize()
    assert msg.ByteSize() < rings_streams["auto5"].ByteSize()
    assert NEIGHBOUR_PAYLOAD in [p.name for p in rings_streams["auto5"].payloads]


def test_adaptive_levels_saving_less_than_their_framing_go_learned(rings_streams):
    """The level-by-level choice's adaptive levels (here a few small ones) save less than the
    adaptive payload's framing: they go learned, and the stream is smaller for it."""
    framed, unframed = rings_streams["by_level"], rings_streams["all_three"]
    assert "A" in level_coders(unframed)
    assert level_coders(framed) == level_coders(unframed).replace("A", "L")
    assert framed.ByteSize() < unframed.ByteSize()


def test_framing_rule_moves_adaptive_levels_only_below_the_framing_cost():
    """codec._framed on both sides of FRAMING_COST, and never where a level has no learned
    alternative (the model was not run there)."""
    from types import SimpleNamespace

    framing, price = codec_module.FRAMING_COST, (0, 1)  # rows free: costs alone
    learned = [SimpleNamespace(cost=1000), SimpleNamespace(cost=5000), None]
    rows = [8, 64, 512]
    below = [1000 - framing // 2, 5000, 9000]  # level 0 saves framing / 2 adaptively
    at = [1000 - framing, 5000, 9000]
    assert codec_module._framed("ALN", below, learned, rows, price) == "LLN"
    assert codec_module._framed("ALN", at, learned, rows, price) == "ALN"
    assert codec_module._framed("ALA", below, learned, rows, price) == "ALA"  # no model on 2
    assert codec_module._framed("LLN", below, learned, rows, price) == "LLN"


def test_a_small_cloud_also_tries_the_neighbour_coder_on_every_level(codec, rings_streams):
    """The level-by-level choice does not see the framing of the payloads it adds (a learned
    payload and its protected record; an adaptive one only where its levels save more than
    its framing): on a cloud this small the all-neighbour stream can be smaller, and auto
    tries it (it has fewer coded bits than EVERY_NEIGHBOUR_BITS)."""
    auto, by_level = rings_streams["auto"], rings_streams["by_level"]
    assert sum(int(p.shape[0]) for p in auto.payloads) <= codec_module.EVERY_NEIGHBOUR_BITS
    assert set(level_coders(by_level)) == set("LN")
    assert auto.ByteSize() <= min(by_level.ByteSize(), rings_streams["neighbour"].ByteSize())
    assert auto.ByteSize() < by_level.ByteSize()  # here the all-neighbour stream won


def test_the_all_neighbour_walks_run_on_the_pool_with_the_same_stream(ground_rings,
                                                                       rings_streams,
                                                                       monkeypatch):
    """The all-neighbour candidate's model walks the levels on the pool while the encoder's
    thread runs the learned model: on one thread and on two the same stream (here the
    candidate wins); a walk's error on the pool reaches the caller."""
    streams = {threads: _packed(PointCloudCodec.load(threads=threads).encode(
        ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH)) for threads in (1, 2)}
    assert streams[1] == streams[2] == rings_streams["auto"]
    assert set(level_coders(rings_streams["auto"])) == {"N"}
    walk = neighbour.walk_contexts

    def failing_on_the_pool(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("walk on the pool")
        return walk(*args, **kwargs)

    monkeypatch.setattr(neighbour, "walk_contexts", failing_on_the_pool)
    with pytest.raises(RuntimeError, match="walk on the pool"):
        PointCloudCodec.load(threads=2).encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH)



def test_a_model_far_behind_the_neighbour_coder_is_estimated_from_a_smaller_sample(
        codec, ground_rings, monkeypatch):
    """auto: after a level the neighbour coder took where the model cost over MODEL_BEHIND
    times its bits, a large level's sampled estimate uses BEHIND_ESTIMATE_NODES nodes. It
    saves the encoder time; here (the level-by-level choice: the all-neighbour candidate
    off) the stream is the same byte for byte as with the rule off. smallest (bits alone)
    never uses the smaller sample."""
    from reprocodec.pointcloud import coder as coder_module

    monkeypatch.setattr(codec_module, "EVERY_NEIGHBOUR_BITS", 0)
    runs: list[tuple[int, int]] = []  # (level, nodes the model ran on: 0 for all of them)
    whole, sampled = coder_module.learned_level, coder_module.estimate_level_cost
    monkeypatch.setattr(coder_module, "learned_level",
                        lambda *a, **k: runs.append((a[2], 0)) or whole(*a, **k))
    monkeypatch.setattr(coder_module, "estimate_level_cost",
                        lambda *a, **k: runs.append((a[2], a[7].size)) or sampled(*a, **k))
    depth = 12
    small = codec_module.BEHIND_ESTIMATE_NODES
    assert small < codec_module.ESTIMATE_NODES
    with_rule = container.pack(codec.encode(ground_rings, depth=depth))
    levels, with_runs = level_coders(container.unpack(with_rule)), list(runs)
    behind = [lv for lv, nodes in with_runs if nodes == small]
    assert behind, with_runs  # the rule fired
    for lv in behind:  # on a level after one the neighbour coder took, as this one
        assert levels[lv - 1] == levels[lv] == "N", (levels, behind)
    shipped = codec_module.MODEL_BEHIND
    monkeypatch.setattr(codec_module, "MODEL_BEHIND", (1 << 40, 1))  # never behind
    runs.clear()
    assert container.pack(codec.encode(ground_rings, depth=depth)) == with_rule
    assert small not in [nodes for _, nodes in runs]
    assert [lv for lv, _ in runs] == [lv for lv, _ in with_runs]
    monkeypatch.setattr(codec_module, "MODEL_BEHIND", shipped)
    runs.clear()
    codec.encode(ground_rings, depth=depth, coders="smallest")
    assert small not in [nodes for _, nodes in runs]


def test_after_a_confident_level_the_neighbour_coder_probes_a_surface_and_goes_on_while_close(
        codec, monkeypatch):
    """auto on an organic mesh, where the model wins its levels by far (confident): on such a
    level the neighbour coder is walked only where the nodes average SURFACE_CHILDREN occupied
    children or more: on the last small level before the large ones (under 4 x ESTIMATE_NODES
    nodes: the probe, a model of its own) and on a large level after one where it came within
    NEIGHBOUR_CLOSE of the model. It is over 5/4 of the model's cost on the probe here, so it
    goes no further, and whatever the margins the stream is the model's, byte for byte."""
    depth = 7
    points = read_ply(Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
                      / "elephant_d7.ply")
    codes, bits = octree.build_levels(octree.voxelize(points, depth).voxels, depth)
    level_of = {c.size: level for level, c in enumerate(codes)}
    assert len(level_of) == depth  # each level's node count names it
    monkeypatch.setattr(codec_module, "ESTIMATE_NODES", 64)  # large: 256 nodes and more
    monkeypatch.setattr(codec_module, "EVERY_NEIGHBOUR_BITS", 0)  # the level-by-level walk only
    large = [lv for lv, c in enumerate(codes) if c.size >= 4 * 64]
    probe = large[0] - 1
    surface = [lv for lv in large if 2 * np.count_nonzero(bits[lv]) >= 7 * codes[lv].size]
    assert 0 < len(surface) < len(large)  # the finest level averages under 3.5 children
    tried: list[int] = []
    walk = neighbour.walk_contexts
    monkeypatch.setattr(neighbour, "walk_contexts", lambda model, contexts, level_bits,
                        extras=None: tried.append(level_of[level_bits.shape[0]])
                        or walk(model, contexts, level_bits, extras))
    streams = []
    for margin, children in ((codec_module.NEIGHBOUR_CLOSE, codec_module.SURFACE_CHILDREN),
                             ((1 << 40, 1), codec_module.SURFACE_CHILDREN),  # always close
                             ((1 << 40, 1), (1 << 40, 1))):  # never a surface
        monkeypatch.setattr(codec_module, "NEIGHBOUR_CLOSE", margin)
        monkeypatch.setattr(codec_module, "SURFACE_CHILDREN", children)
        tried.clear()
        streams.append(container.pack(codec.encode(points, depth=depth)))
        on_large = [lv for lv in tried if lv in large]
        if len(streams) == 1:
            assert probe in tried and on_large == [], tried
        elif len(streams) == 2:
            assert probe in tried and on_large == surface, tried
        else:
            assert probe not in tried and on_large == [], tried
    assert len(set(streams)) == 1
    assert level_coders(container.unpack(streams[0])) == "L" * depth


SPARSE = {
    "rings_8_beams": (_rings(1, 8, 256), 9),
    "sphere_samples": (_sphere(0, 3000), 10),
    "rings_depth_8": (_rings(0, 16, 512), 8),
}


@pytest.mark.parametrize("name", list(SPARSE))
def test_auto_on_sparse_clouds_keeps_the_guarantee(codec, name):
    points, depth = SPARSE[name]
    voxels = octree.voxelize(points, depth).voxels
    new = _packed(codec.encode(points, Mode.SYNDROME, depth=depth))
    old = codec.encode(points, Mode.SYNDROME, depth=depth, bitstream_format=4)
    alone = codec.encode(points, Mode.SYNDROME, depth=depth, coders="adaptive")
    assert new.ByteSize() <= alone.ByteSize()
    assert new.ByteSize() <= old.ByteSize()
    levels = level_coders(new)
    assert ("N" in levels) == (new.format_version >= 5)
    if name.startswith("rings"):
        assert "N" in levels, levels
    out = codec.decode(new)
    assert out.bit_exact
    np.testing.assert_array_equal(out.voxels, voxels)


@pytest.mark.parametrize("mixers", ["both", "version 2"])
def test_choices_that_mix_all_three_coders_decode_exactly(codec, ground_rings, monkeypatch,
                                                          mixers):
    """Whatever auto and smallest pick decodes exactly; among these clouds some choice has
    all three coders, one an adaptive level after a neighbour-coded one (the adaptive counts
    walk the neighbour-coded bits), one a learned level after one (the table chain), and one
    mixed learned levels beside neighbour-coded ones. Which cloud does depends on the
    encoder's choices, hence several. These clouds are small enough for the all-neighbour
    candidate, which often wins: it is off here, to decode the level-by-level choices; and a
    quarter of the neighbour coder's time price makes it win a level between adaptive ones of
    the uniform cloud (an encoder-side rule: any choice must decode). On these small clouds
    smallest keeps the mixer's version 1 (the same rANS words, a shorter name): with version 2
    alone, its node contexts are made across neighbour-coded and adaptive levels too."""
    if mixers == "version 2":
        monkeypatch.setattr(codec_module, "_mixers", lambda coders, version: (version,))
    monkeypatch.setattr(codec_module, "EVERY_NEIGHBOUR_BITS", 0)
    monkeypatch.setattr(codec_module, "NEIGHBOUR_PRICE", (1, 256))
    rng = np.random.default_rng(8)
    plane = np.stack(np.meshgrid(np.arange(60), np.arange(60), [5], indexing="ij"),
                     -1).reshape(-1, 3)
    clouds = [(ground_rings, RINGS_DEPTH), (_box_surface(40), 7),
              (np.random.default_rng(0).integers(0, 512, (3000, 3)), 9),
              (np.concatenate([rng.integers(0, 1024, (2000, 3)), plane]), 10)]
    layouts, payloads = [], []
    for points, depth in clouds:
        points = np.asarray(points, np.float64)
        voxels = octree.voxelize(points, depth).voxels
        for coders in ("auto", "smallest"):
            msg = _packed(codec.encode(points, Mode.SYNDROME, depth=depth, coders=coders))
            levels = level_coders(msg)
            out = codec.decode(msg)
            assert out.bit_exact
            np.testing.assert_array_equal(out.voxels, voxels)
            layouts.append(levels)
            payloads.append([p.name for p in msg.payloads])
    assert any(set(levels) == set("LAN") for levels in layouts), layouts
    assert any(re.search("N.*A", levels) for levels in layouts), layouts
    assert any(re.search("N.*L", levels) for levels in layouts), layouts
    # smallest's mixed learned levels around neighbour-coded ones (two count models side by
    # side in the decoder)
    mixed = MIXED_NOW if mixers == "version 2" else MIXED_PAYLOADS[1]
    assert [mixed, ADAPTIVE_PAYLOAD, NEIGHBOUR_NOW] in payloads, payloads


# ------------------------------------------------------------------------ the format gate


@pytest.mark.parametrize("version", [3, 4])
def test_older_formats_never_carry_the_neighbour_payload(codec, ground_rings, version):
    for coders in ("auto", "smallest", "adaptive", "learned"):
        msg = codec.encode(ground_rings, Mode.SYNDROME, depth=RINGS_DEPTH, coders=coders,
                           bitstream_format=version)
        assert not set(NEIGHBOUR_PAYLOADS.values()) & {p.name for p in msg.payloads}
        assert "N" not in level_coders(msg)
        assert msg.format_version <= version
        assert _packed(msg).format_version <= version


@pytest.mark.parametrize("key", ["auto", "neighbour", "auto5", "neighbour5"])
def test_neighbour_streams_cannot_be_lowered_or_relabelled(codec, rings_streams, key):
    msg = rings_streams[key]
    written = msg.format_version  # 5 for version 1's payload, 6 for version 2's
    assert written == (5 if key.endswith("5") else 6)
    for version in range(2, written):
        lowered = _packed(msg)
        with pytest.raises(ValueError):
            container.at_version(lowered, version)
    kept = _packed(msg)
    container.at_version(kept, written)
    assert kept.format_version == written
    for label in range(2, written):
        relabelled = _packed(msg)
        relabelled.format_version = label
        for payload in relabelled.payloads:  # CRCs as the container needs them
            payload.crc32 = container.crc32(payload.data)
        with pytest.raises(ContainerError):
            container.validate(relabelled)
        with pytest.raises(ContainerError):
            container.unpack(relabelled.SerializeToString(deterministic=True))
        with pytest.raises(ContainerError):
            codec.decode(relabelled)


# ------------------------------------------------------------------------ hostile streams


def _reframed(msg, edit) -> bytes:
    """The stream after `edit`, every CRC and the format label recomputed (as an attacker
    would: what pack does, without its validation)."""
    out = _packed(msg)
    edit(out)
    for p in out.payloads:
        p.crc32 = container.crc32(p.data)
    out.format_version = container.required_version(out)
    return out.SerializeToString(deterministic=True)


def _refused_or_exact(codec, data: bytes, expected: np.ndarray) -> str:
    """The decoder's outcome: a refusal (ContainerError or VerificationError, by name), or
    "exact" (and then the encoder's cloud); anything else fails the test."""
    try:
        out = codec.decode(container.unpack(data))
    except ContainerError:  # AdaptiveStreamError included
        return "ContainerError"
    except VerificationError:
        return "VerificationError"
    np.testing.assert_array_equal(out.voxels, expected)
    return "exact"


def _index(msg, name: str) -> int:
    return [p.name for p in msg.payloads].index(name)


def _set_neighbour(edit_data):
    def edit(m):
        p = m.payloads[_index(m, NEIGHBOUR_NOW)]
        p.data = edit_data(bytes(p.data))
    return edit


def _set_flags(value: int, size: int = 2):
    return _set_neighbour(lambda d: value.to_bytes(size, "little") + d[2:])


def _shape(value: int):
    def edit(m):
        m.payloads[_index(m, NEIGHBOUR_NOW)].shape[:] = [value]
    return edit


def _drop(name: str, protected: bool = False):
    def edit(m):
        del m.payloads[_index(m, name)]
        if protected:
            del m.protected[:]
    return edit


def _move_to(name: str, position: int):
    def edit(m):
        payloads = [type(p)() for p in m.payloads]
        for copy, p in zip(payloads, m.payloads, strict=True):
            copy.CopyFrom(p)
        moved = payloads.pop(_index(m, name))
        payloads.insert(position, moved)
        del m.payloads[:]
        m.payloads.extend(payloads)
    return edit


def _rename(old: str, new: str):
    def edit(m):
        m.payloads[_index(m, old)].name = new
    return edit


def _both_neighbour_payloads(m):
    """A copy of the neighbour payload under the other version's name, after it."""
    copy = type(m.payloads[0])()
    copy.CopyFrom(m.payloads[_index(m, NEIGHBOUR_NOW)])
    copy.name = NEIGHBOUR_PAYLOAD
    m.payloads.append(copy)


def test_hostile_layouts_around_neighbour_levels_are_refused(codec, ground_rings,
                                                             rings_streams):
    msg = rings_streams["all_three"]
    levels = level_coders(msg)
    names = [p.name for p in msg.payloads]
    assert names[0] in LEARNED_PAYLOADS and names[1:] == [ADAPTIVE_PAYLOAD, NEIGHBOUR_NOW]
    assert set(levels) == set("LAN"), levels
    expected = octree.voxelize(ground_rings, RINGS_DEPTH).voxels
    n, depth = int(msg.point_cloud.num_points), RINGS_DEPTH
    flags = sum(1 << lv for lv, c in enumerate(levels) if c == "N")
    first = {c: levels.index(c) for c in "LAN"}
    total = int(msg.payloads[-1].shape[0])
    edits = {
        "N flag on an adaptive level": _set_flags(flags | 1 << first["A"]),
        "N flag on a learned level": _set_flags(flags | 1 << first["L"]),
        "an N level's flag cleared": _set_flags(flags & ~(1 << first["N"])),
        "a flag past the depth": _set_flags(flags | 1 << depth),
        "no flag": _set_flags(0),
        "flags too short": _set_neighbour(lambda d: d[:1]),
        "three flag bytes": _set_flags(flags, 3),
        "neighbour payload first": _move_to(NEIGHBOUR_NOW, 0),
        "neighbour before adaptive": _move_to(NEIGHBOUR_NOW, 1),
        "learned payload last": _move_to(names[0], 2),
        "shape + 8": _shape(total + 8),
        "shape - 8": _shape(total - 8),
        "shape + 3": _shape(total + 3),
        "shape 8 n depth + 8": _shape(8 * n * depth + 8),
        "shape huge": _shape((1 << 31) - 8),
        "learned payload dropped": _drop(names[0], protected=True),
        "learned payload dropped, record kept": _drop(names[0]),
        "neighbour payload dropped": _drop(NEIGHBOUR_NOW),
        "adaptive payload dropped": _drop(ADAPTIVE_PAYLOAD),
        "neighbour payload renamed": _rename(NEIGHBOUR_NOW, "occupancy_other"),
        # version 2's bits under version 1's model (a format 5 label), and both names
        "neighbour payload under version 1's name": _rename(NEIGHBOUR_NOW, NEIGHBOUR_PAYLOAD),
        "both neighbour payloads": _both_neighbour_payloads,
        "rANS words dropped": _set_neighbour(lambda d: d[:-4]),
        "a byte dropped": _set_neighbour(lambda d: d[:-1]),
        "flags only": _set_neighbour(lambda d: d[:2]),
        "a word appended": _set_neighbour(lambda d: d + b"\x00" * 4),
        "rANS zeroed": _set_neighbour(lambda d: d[:2] + b"\x00" * (len(d) - 2)),
    }
    outcomes = {what: _refused_or_exact(codec, _reframed(msg, edit), expected)
                for what, edit in edits.items()}
    assert "exact" not in outcomes.values(), outcomes


def test_hostile_neighbour_data_is_refused(codec, rings_streams, ground_rings):
    """An all-neighbour stream: nothing learned is decoded, so a stream that breaks is
    malformed (ContainerError) or fails its checksums (VerificationError), never another
    error or a wrong cloud."""
    msg = rings_streams["neighbour"]
    expected = octree.voxelize(ground_rings, RINGS_DEPTH).voxels
    good = bytes(msg.payloads[0].data)
    flags, rans = good[:2], good[2:]
    variants = [b"", good[:1], flags, flags + rans[:4], flags + rans[:8], good[:-4],
                good[:-1], good[:len(good) // 2], flags + rans[:len(rans) // 2 // 4 * 4],
                good + b"\x00" * 4, good + b"\x01", flags + b"\xff" * len(rans),
                flags + b"\xff" * (1 << 16)]
    truncated = [_refused_or_exact(codec, _reframed(msg, _set_neighbour(lambda _, v=v: v)),
                                   expected) for v in variants]
    assert set(truncated) == {"ContainerError"}, truncated
    rng = np.random.default_rng(9)
    positions = [2, 3, 9, len(good) - 1] + rng.integers(2, len(good), 16).tolist()
    flipped = []
    for position in positions:
        edit = bytearray(good)
        edit[position] ^= 1 << int(rng.integers(8))
        flipped.append(_refused_or_exact(
            codec, _reframed(msg, _set_neighbour(lambda _, e=bytes(edit): e)), expected))
    assert flipped.count("exact") <= 1, flipped
    # the neighbour bytes under the adaptive coder's name (a format 2/3 stream) or the other
    # model version's are refused
    for other in (ADAPTIVE_PAYLOAD, NEIGHBOUR_PAYLOAD):
        renamed = _refused_or_exact(codec, _reframed(msg, _rename(NEIGHBOUR_NOW, other)),
                                    expected)
        assert renamed != "exact", other

    def fewer_points(m):
        m.point_cloud.num_points = 5
        m.point_cloud.checksum = container.point_cloud_header_checksum(m.point_cloud)

    with pytest.raises(ContainerError, match="nodes|impossible"):
        codec.decode(container.unpack(_reframed(msg, fewer_points)))


# ------------------------------------------------------------------------ the choice rule


def _learned(cost: int) -> SimpleNamespace:
    return SimpleNamespace(cost=cost)  # a stand-in for coder.LearnedLevel


# rows: 64 bits a level, so that a row costs 1/16 bit learned (4 bits for the level) and 1/64
# bit neighbour-coded (1 bit for the level) at these prices (the rule's shape; the shipped
# neighbour price is a module constant the tests set)
ROWS = 64
NEIGHBOUR_RULE = [
    # (neighbour cost, adaptive cost, learned cost or None, price, expected), in bits
    # no learned coding: N needs cost + 1 bit < adaptive
    (10, 12, None, ROW_PRICE, True),
    (10, 11, None, ROW_PRICE, False),  # a tie with its time priced stays adaptive
    (10, 10, None, ROW_PRICE, False),
    (11, 10, None, ROW_PRICE, False),
    # learned wins against adaptive (learned + 4 < adaptive): N only for strictly fewer bits
    (9, 20, 10, ROW_PRICE, True),
    (10, 20, 10, ROW_PRICE, False),  # a tie stays learned
    (11, 20, 10, ROW_PRICE, False),  # though 11 + 1 < 20 would beat the adaptive coder
    (0, 20, 10, ROW_PRICE, True),
    # learned loses or ties against adaptive (learned + 4 >= adaptive): N against adaptive
    (8, 14, 10, ROW_PRICE, True),  # learned + 4 == adaptive: a tie goes to adaptive
    (13, 14, 10, ROW_PRICE, False),  # 13 + 1 == 14
    (12, 14, 10, ROW_PRICE, True),  # more bits than the learned coding, but it lost
    (9, 13, 10, ROW_PRICE, True),
    # by bits alone (smallest): no time priced
    (10, 11, None, (0, 1), True),
    (10, 10, None, (0, 1), False),
    (9, 11, 10, (0, 1), True),  # learned wins (10 < 11): N for fewer bits
    (10, 11, 10, (0, 1), False),
    (10, 10, 10, (0, 1), False),  # learned ties adaptive: N against adaptive, a tie
    (9, 10, 10, (0, 1), True),
]


@pytest.mark.parametrize("cost, adaptive_cost, learned, price, expected", NEIGHBOUR_RULE)
def test_the_rule_that_gives_a_level_to_the_neighbour_coder(cost, adaptive_cost, learned,
                                                            price, expected, monkeypatch):
    monkeypatch.setattr(codec_module, "NEIGHBOUR_PRICE", (1, 64))
    assert ROW_PRICE == (1, 16)  # the prices the table assumes
    lv = None if learned is None else _learned(learned * UNIT)
    assert (_neighbour_saving(cost * UNIT, adaptive_cost * UNIT, lv, ROWS, price) > 0) is expected


def test_time_cost_prices_learned_rows_and_neighbour_bits(monkeypatch):
    monkeypatch.setattr(codec_module, "NEIGHBOUR_PRICE", (1, 64))
    assert NEIGHBOUR_PRICE[0] == 1  # the shipped one: a fraction of a bit a bit
    rows = [64, 128, 640, 32]
    assert _time_cost("AAAA", rows, ROW_PRICE) == 0
    assert _time_cost("LAAA", rows, ROW_PRICE) == 4 * UNIT  # 64 / 16
    assert _time_cost("ANAA", rows, ROW_PRICE) == 2 * UNIT  # 128 / 64
    assert _time_cost("LNNL", rows, ROW_PRICE) == 6 * UNIT + 12 * UNIT  # 96 / 16, 768 / 64
    assert _time_cost("LNNL", rows, (0, 1)) == 0  # by bits alone


def test_each_versions_kernels_load_from_numba_cache_in_a_new_process(tmp_path):
    """The version kernels are closures: numba's cache keys on their closure values, so those
    must be plain constants (a closure over another compiled function was compiled anew in
    every process: ~1.4 s and ~30 MB more per process). A second process loads all four."""
    script = (
        "import numpy as np\n"
        "from reprocodec.pointcloud import mixing, neighbour, nodecontext\n"
        "bits = np.zeros((1, 8), bool)\n"
        "for v in neighbour.VERSIONS:\n"
        "    m = neighbour.Model(1000, v)\n"
        "    e = np.zeros(8, np.int32) if v == 2 else None\n"
        "    level = mixing.LevelContexts(np.zeros(8, np.uint32), np.zeros(1, np.uint32), 1000)\n"
        "    node = nodecontext.LevelExtras(np.zeros(1, np.uint16), np.zeros(1, np.uint8))\n"
        "    neighbour.walk_contexts(m, level, bits, node)\n"
        "    d = neighbour.Decoder((1 << 31).to_bytes(8, 'little'), 1000, v, lenient=True)\n"
        "    d.decode(np.zeros(8, np.int64), 0, e)\n"
        "print(sum(sum(k.stats.cache_hits.values()) for ks in neighbour._KERNELS.values()\n"
        "          for k in ks))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert [int(r.stdout.split()[-1]) for r in runs] == [0, 4]


def test_a_level_made_ahead_is_the_level_the_loop_makes(rings_levels):
    """_LevelAhead (the encoder's next level, made in slices on the pool during the walk
    before it): the same table and contexts as the loop makes, and the table chain goes on
    from it; made only from the level before's table, and only for its own level. The last
    level's table is not kept (its contexts are made from scratch rows, slice by slice): the
    chain stays at the level before, from which the loop remakes the table if it needs it."""
    codes, bits, n = rings_levels
    last = RINGS_DEPTH - 1
    chain = octree.LevelTables(2)
    for lv in range(last - 1):
        chain.table_of(codes[lv], lv, bits[lv - 1] if lv else None)
    assert codec_module._LevelAhead.start(chain, codes, bits, last, n, 2) is None
    ahead = codec_module._LevelAhead.start(chain, codes, bits, last - 1, n, threads=2)
    assert ahead.result(last - 1) is ahead
    table = octree.neighbour_table(codes[last - 1], last - 1)
    np.testing.assert_array_equal(ahead.table, table)
    assert chain.level == last - 1 and chain.table is ahead.table  # the chain goes on from it
    np.testing.assert_array_equal(ahead.contexts.packed(),
                                  mixing.level_contexts(table, bits[last - 1], n).packed())
    final = codec_module._LevelAhead.start(chain, codes, bits, last, n, threads=2)
    assert final.result(last) is final and final.table is None
    assert chain.level == last - 1  # the loop's table_of makes the last level's from here
    table = octree.neighbour_table(codes[last], last)
    np.testing.assert_array_equal(chain.table_of(codes[last], last, bits[last - 1]), table)
    np.testing.assert_array_equal(final.contexts.packed(),
                                  mixing.level_contexts(table, bits[last], n).packed())
    chain = octree.LevelTables(2)
    chain.table_of(codes[last - 1], last - 1, None)
    other = codec_module._LevelAhead.start(chain, codes, bits, last, n, threads=2)
    assert other.result(last - 1) is None  # made for another level: the loop makes its own
    assert chain.level == last - 1


def test_tables_and_contexts_made_in_slices_in_any_order_are_the_whole_ones(rings_levels):
    """ChildTableRows and LevelContextRows: any slicing, in any order, fills the same rows as
    child_neighbour_table and level_contexts (the encoder's level made ahead slices both)."""
    codes, bits, n = rings_levels
    level = RINGS_DEPTH - 1
    parent = octree.neighbour_table(codes[level - 1], level - 1)
    whole = octree.child_neighbour_table(parent, bits[level - 1], codes[level], level)
    rows = octree.ChildTableRows.of(parent, bits[level - 1], codes[level])
    for start in reversed(range(0, rows.parents, 97)):
        rows.of_parents(start, min(start + 97, rows.parents))
    np.testing.assert_array_equal(rows.table, whole)
    contexts = mixing.LevelContextRows(whole, bits[level], n)
    for start in reversed(range(0, whole.shape[0], 211)):
        contexts.of_nodes(start, min(start + 211, whole.shape[0]))
    np.testing.assert_array_equal(contexts.contexts.packed(),
                                  mixing.level_contexts(whole, bits[level], n).packed())
    # without the whole table (whole=False): each slice's rows into a scratch array, then its
    # contexts from them; the same rows and contexts
    rows = octree.ChildTableRows.of(parent, bits[level - 1], codes[level], whole=False)
    contexts = mixing.LevelContextRows(None, bits[level], n)
    assert rows.table is None and contexts.table is None
    scratch = np.full((8 * 97, 27), -1, np.int32)
    for start in reversed(range(0, rows.parents, 97)):
        stop = min(start + 97, rows.parents)
        a, b = int(rows.first[start]), int(rows.first[stop])
        rows.of_parents(start, stop, scratch)
        np.testing.assert_array_equal(scratch[:b - a], whole[a:b])
        contexts.of_nodes(a, b, scratch[:b - a])
    np.testing.assert_array_equal(contexts.contexts.packed(),
                                  mixing.level_contexts(whole, bits[level], n).packed())
    with pytest.raises(ValueError, match="no rows"):  # a scratch too small: refused, unwritten
        rows.of_parents(0, rows.parents, scratch)
    with pytest.raises(ValueError, match="no table rows"):
        contexts.of_nodes(0, 8 * 97 + 1, scratch)
    with pytest.raises(ValueError, match="no rows"):  # no table and no scratch
        rows.of_parents(0, 1)
    # not two consecutive levels: no slices (child_neighbour_table falls back to the search)
    assert octree.ChildTableRows.of(parent, bits[level - 1], codes[level][:-1]) is None


def test_levels_made_ahead_on_the_pool_change_no_byte(ground_rings, monkeypatch):
    """With two threads the encoder makes a scan's next level's inputs on the pool while it
    walks the level before; one thread makes them in the loop: the same streams."""
    started = []  # the levels the loop took made ahead
    result = codec_module._LevelAhead.result

    def spy(self, level):
        made = result(self, level)
        started.append(made.level)
        return made

    monkeypatch.setattr(codec_module._LevelAhead, "result", spy)
    monkeypatch.setattr(codec_module, "AHEAD_NODES", 256)  # the ring cloud's levels are small
    one, two = PointCloudCodec.load(threads=1), PointCloudCodec.load(threads=2)
    for coders in ("auto", "neighbour"):
        alone = container.pack(one.encode(ground_rings, depth=RINGS_DEPTH, coders=coders))
        assert not started  # one thread: no pool
        pooled = container.pack(two.encode(ground_rings, depth=RINGS_DEPTH, coders=coders))
        assert started, coders  # the fine levels were made ahead
        assert pooled == alone, coders
        started.clear()
    out = two.decode(container.unpack(pooled))
    np.testing.assert_array_equal(out.voxels, octree.voxelize(ground_rings, RINGS_DEPTH).voxels)


def test_child_table_rows_refuse_a_parent_table_that_does_not_match(rings_levels):
    """The kernel reads the parents' rows and writes without bounds checks: the pieces are
    made only from a parent table and occupancy of the same nodes."""
    codes, bits, _ = rings_levels
    parent = octree.neighbour_table(codes[5], 5)
    with pytest.raises(ValueError, match="child table rows"):
        octree.ChildTableRows(parent[:-1], bits[5])
    with pytest.raises(ValueError, match="child table rows"):
        octree.ChildTableRows(parent, bits[5][:, :7])
    assert octree.ChildTableRows(parent, bits[5]).table.shape == (codes[6].size, 27)


def test_a_level_that_fails_stops_the_level_being_made_ahead(ground_rings, monkeypatch):
    """An error in the loop (a cancelled request, say) while the pool makes the next level
    stops that work: cancel() runs before the error leaves encode."""
    monkeypatch.setattr(codec_module, "AHEAD_NODES", 256)
    cancelled, walks = [], []
    cancel = codec_module._LevelAhead.cancel

    def spy_cancel(self):
        cancelled.append(self.level)
        cancel(self)

    walk = neighbour.walk_contexts

    def failing_walk(*args, **kwargs):
        walks.append(1)
        if len(walks) == RINGS_DEPTH - 2:  # a fine level: its next one is being made
            raise RuntimeError("request cancelled")
        return walk(*args, **kwargs)

    monkeypatch.setattr(codec_module._LevelAhead, "cancel", spy_cancel)
    monkeypatch.setattr(neighbour, "walk_contexts", failing_walk)
    with pytest.raises(RuntimeError, match="request cancelled"):
        PointCloudCodec.load(threads=2).encode(ground_rings, depth=RINGS_DEPTH,
                                               coders="neighbour")
    assert cancelled == [RINGS_DEPTH - 2]
