"""The learned point-cloud codec: lossless round trips, protection, verification, bad streams.

Uses the shipped weights, the default model (octree-ctx-v3: integer first layer),
octree-ctx-v2 and octree-ctx-v1 (old streams still decode), on small clouds (depth <= 8) so
the file runs in seconds. Numerics differences are injected through `numerics.perturb` (the
noise hook the codec calls on the decoder's logits), so no profile needs to be applied in this
process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reprocodec import container, numerics
from reprocodec.errors import ContainerError, ModelMismatchError, VerificationError
from reprocodec.pointcloud import PointCloudCodec, inspect_fields, list_models, octree
from reprocodec.pointcloud.models import DEFAULT_MODEL
from reprocodec.pointcloud.ply import read_ply
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


MODELS = tuple(dict.fromkeys((DEFAULT_MODEL, "octree-ctx-v2", "octree-ctx-v1")))


@pytest.fixture(scope="module", params=MODELS)
def codec(request):
    return PointCloudCodec.load(request.param)


@pytest.fixture(scope="module")
def camel():
    return octree.sort_voxels(read_ply(SAMPLES / "camel_d6.ply"))


def _roundtrip(codec, points, depth, mode=Mode.SYNDROME):
    msg = container.unpack(container.pack(codec.encode(points, depth=depth, mode=mode)))
    return msg, codec.decode(msg)


@pytest.mark.parametrize("name", MODELS)
def test_model_is_listed_with_a_calibrated_bound(name):
    info = {i.name: i for i in list_models()}[name]
    bound = info.bounds["occupancy_logit"]
    assert bound["kind"] == "absolute" and 0 < bound["value"] < 1.0 / 64
    assert bound["value"] >= bound["measured_max"]


@pytest.mark.parametrize("mode", list(Mode))
def test_lossless_round_trip_every_mode(codec, camel, mode):
    msg, out = _roundtrip(codec, camel, 6, mode)
    np.testing.assert_array_equal(out.voxels, camel)
    assert out.bit_exact
    # integer voxels: the identity placement is omitted (format 3), the points are the voxels
    assert msg.format_version == 3 and not msg.point_cloud.origin
    np.testing.assert_array_equal(out.points, camel.astype(np.float64))
    assert (len(msg.protected[0].side_info) == 0) == (mode is Mode.NONE)


@pytest.mark.parametrize("depth", [1, 2, 8])
def test_lossless_at_several_depths_and_float_input(codec, depth):
    rng = np.random.default_rng(depth)
    pts = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.2] + 10.0
    vox = octree.voxelize(pts, depth)
    msg, out = _roundtrip(codec, pts, depth)
    np.testing.assert_array_equal(out.voxels, vox.voxels)
    np.testing.assert_allclose(out.points, np.asarray(vox.origin) + vox.voxels * vox.scale)
    assert len(msg.point_cloud.origin) == 3  # placed: written out (format 2, or 6 with the
    # neighbour coder's levels)
    neighbour = "occupancy_neighbour_v2" in [p.name for p in msg.payloads]
    assert msg.format_version == (6 if neighbour else 2)


@pytest.mark.parametrize("points", [np.zeros((0, 3)), np.array([[5, 6, 7]]),
                                    np.array([[0.25, -3.0, 8.0]])])
def test_empty_and_single_point_clouds(codec, points):
    msg, out = _roundtrip(codec, points, 10)
    assert out.voxels.shape == (points.shape[0], 3)
    if points.shape[0]:
        np.testing.assert_allclose(out.points, points)
    assert inspect_fields(msg)["num_points"] == points.shape[0]


def test_compresses_a_surface_well(codec):
    vox = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    msg, out = _roundtrip(codec, vox, 7)
    np.testing.assert_array_equal(out.voxels, vox)
    fields = inspect_fields(msg)
    # A trained model codes a voxelized surface in well under 3 bits per point (raw: 21).
    assert fields["bits_per_point"] < 3.0, fields


def _noisy(monkeypatch, eps):
    rng = np.random.default_rng(7)

    def perturb(name, values, bound):
        assert name == "occupancy_logit"
        return values + rng.uniform(-eps, eps, size=values.shape)

    monkeypatch.setattr(numerics, "perturb", perturb)


@pytest.mark.parametrize("mode", [Mode.SYNDROME, Mode.FLAGS, Mode.SIMPLIFIED])
def test_protected_decode_under_noise_within_the_bound_is_exact(codec, camel, monkeypatch, mode):
    msg = container.unpack(container.pack(codec.encode(camel, depth=6, mode=mode)))
    _noisy(monkeypatch, 0.9 * codec.bound.value)
    out = codec.decode(msg)
    np.testing.assert_array_equal(out.voxels, camel)


def test_unprotected_stream_with_noise_fails_loudly(codec, camel, monkeypatch):
    msg = container.unpack(container.pack(codec.encode(camel, depth=6, mode=Mode.NONE)))
    _noisy(monkeypatch, 0.02)  # about a third of the logit grid step: many flips
    with pytest.raises(VerificationError):
        codec.decode(msg)


@pytest.mark.parametrize("mode", [Mode.SYNDROME, Mode.FLAGS])
def test_noise_beyond_the_bound_is_a_verification_error(codec, camel, monkeypatch, mode):
    msg = container.unpack(container.pack(codec.encode(camel, depth=6, mode=mode)))
    _noisy(monkeypatch, 0.02)
    with pytest.raises(VerificationError):
        codec.decode(msg)


def test_corrupted_streams_never_crash(codec, camel):
    """Any flipped byte: a clear error, or (header fields) the exact voxel set."""
    data = bytearray(container.pack(codec.encode(camel, depth=6)))
    for pos in range(0, len(data), max(1, len(data) // 16)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        try:
            out = codec.decode(container.unpack(bytes(bad)))
        except (ContainerError, VerificationError, ModelMismatchError):
            continue
        # Only fields outside the CRCs and checksums can change undetected (origin, scale,
        # names): the voxel set itself is verified.
        np.testing.assert_array_equal(out.voxels, camel)


def test_corrupted_payload_with_a_valid_crc_is_detected(codec, camel):
    msg = codec.encode(camel, depth=6)
    for i in range(8):
        bad = container.unpack(container.pack(msg))
        payload = bytearray(bad.payloads[0].data)
        payload[len(payload) * i // 8] ^= 0xFF
        bad.payloads[0].data = bytes(payload)
        bad = container.unpack(container.pack(bad))  # pack refreshes the CRC
        with pytest.raises(VerificationError):
            codec.decode(bad)


def test_header_lies_are_rejected(codec, camel):
    msg = codec.encode(camel, depth=6)
    fewer = container.unpack(container.pack(msg))
    fewer.point_cloud.num_points = 3  # fewer points than the coded bits allow
    with pytest.raises((ContainerError, VerificationError)):
        codec.decode(fewer)
    other = container.unpack(container.pack(msg))
    other.weights_sha256 = bytes(32)
    with pytest.raises(ModelMismatchError):
        codec.decode(other)
    deeper = container.unpack(container.pack(msg))
    deeper.point_cloud.depth = 9
    with pytest.raises((ContainerError, VerificationError)):
        codec.decode(deeper)


def test_unverified_decode_of_a_desynchronised_stream_returns_or_raises_cleanly(
        codec, camel, monkeypatch):
    """The benchmark's verify=False path: a wrong cloud (counted as a failure) or the
    node-count guard, never a crash or a hang."""
    msg = container.unpack(container.pack(codec.encode(camel, depth=6, mode=Mode.NONE)))
    _noisy(monkeypatch, 0.03)
    try:
        out = codec.decode(msg, verify=False)
    except VerificationError:
        return
    assert not out.bit_exact and not np.array_equal(out.voxels, camel)


def test_shipped_cdf_table_is_the_documented_integer_table(codec):
    from reprocodec.pointcloud.networks import build_cdf_table

    np.testing.assert_array_equal(codec.tables.cdfs, build_cdf_table())
    f0 = codec.tables.cdfs[:, 1]
    assert (np.diff(f0) <= 0).all() and f0.min() >= 1 and f0.max() <= (1 << 16) - 1
    assert (codec.tables.cdfs[:, 2:] == 1 << 16).all()


def test_packed_syndrome_side_information_is_checked_before_use(codec, camel):
    """The syndrome passes share one bit stream: any edit, truncation or extension of it (CRC
    recomputed) is refused or caught by the checksums, never a wrong cloud or a crash."""
    msg = codec.encode(camel, depth=8)
    side = bytes(msg.protected[0].side_info)
    assert side  # camel at depth 8 has risky passes
    rng = np.random.default_rng(11)
    variants = [side[:-1], side + b"\x00", side + b"\x01", b"\xff" * len(side), b"\x00",
                b"\xff" * 4096]
    for _ in range(40):
        edit = bytearray(side)
        edit[int(rng.integers(len(edit)))] ^= 1 << int(rng.integers(8))
        variants.append(bytes(edit))
    for bad_side in variants:
        bad = container.unpack(container.pack(msg))
        bad.protected[0].side_info = bad_side
        bad = container.unpack(container.pack(bad))
        try:
            out = codec.decode(bad)
        except (ContainerError, VerificationError):
            continue
        np.testing.assert_array_equal(out.voxels, octree.sort_voxels(octree.voxelize(
            camel, 8).voxels))  # an edit that changes nothing that matters


def test_packed_syndrome_fields_read_back_as_written():
    """_pack_syndromes writes each pass's syndrome fields, _SyndromeReader reads the same ones
    back (b"" for a pass without), then only padding is left; a count past the gamma limit,
    a truncated field and trailing bits are refused as malformed."""
    from reprocodec.pointcloud import coder
    from reprocodec.safeguard import SyndromeParts

    rng = np.random.default_rng(3)
    passes = []
    for _ in range(30):
        if rng.random() < 0.3:
            passes.append(None)
            continue
        rows = rng.integers(0, 200, int(rng.integers(1, 5)))
        passes.append(SyndromeParts(rows.astype(np.int64),
                                    [int(rng.integers(0, 1 << 62)) >> max(0, 62 - int(m))
                                     for m in rows]))
    stream = coder._pack_syndromes(passes)
    assert len(stream) * 8 - sum(coder._syndrome_bits(p) for p in passes) < 8  # as priced
    reader = coder._SyndromeReader(stream, Mode.SYNDROME, len(passes))
    for want in passes:
        got = reader.next(1000)
        if want is None:
            assert got == b""
        else:
            np.testing.assert_array_equal(got.rows, want.rows)
            assert got.sent == want.sent
    reader.finish()
    with pytest.raises(ContainerError, match="more occupancy passes"):
        reader.next(1000)
    for bad, message in [
        (b"\xff" * 8, "oversized count"),  # presence, then 63 ones: no gamma ends
        (stream[:len(stream) // 2], "truncated"),
        (stream + b"\x01", "trailing bits"),
    ]:
        reader = coder._SyndromeReader(bad, Mode.SYNDROME, len(passes))
        with pytest.raises(ContainerError, match=message):
            for _ in passes:
                reader.next(1000)
            reader.finish()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64])
def test_sort_voxels_are_numpys_unique_rows(dtype):
    """sort_voxels sorts and deduplicates a packed key in place: the same rows and order as
    np.unique over rows, as int64, whatever integer dtype comes in."""
    rng = np.random.default_rng(5)
    for high in (2, 1 << 10, 1 << 16):
        rows = rng.integers(0, high, (4000, 3)).astype(dtype)
        rows = np.concatenate([rows, rows[::3]])  # duplicates
        out = octree.sort_voxels(rows)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, np.unique(rows.astype(np.int64), axis=0))
    top = min((1 << 21) - 1, np.iinfo(dtype).max)  # the largest coordinate the dtype holds
    one = octree.sort_voxels(np.array([[top, 0, top], [top, 0, top]], dtype=dtype))
    np.testing.assert_array_equal(one, [[top, 0, top]])


def test_morton_decode_inverts_encode_at_21_bits():
    rng = np.random.default_rng(6)
    coords = np.concatenate([rng.integers(0, 1 << 21, (5000, 3)),
                             [[0, 0, 0], [(1 << 21) - 1] * 3]])
    out = octree.morton_decode(octree.morton_encode(coords))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, coords)
