"""The container parser accepts well-formed streams and rejects everything else cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reprocodec import container
from reprocodec.checksum import checksum
from reprocodec.errors import ContainerError
from reprocodec.safeguard import DecisionQuantizer, ErrorBound, Mode, protect
from reprocodec.v1 import bitstream_pb2 as pb


def sample_message(mode: Mode = Mode.SYNDROME) -> pb.Bitstream:
    rng = np.random.default_rng(0)
    bound = ErrorBound.relative(1e-4)
    q = DecisionQuantizer.from_thresholds(np.exp(np.linspace(np.log(0.11), np.log(256), 64))[:-1])
    protected = protect(rng.uniform(0.11, 20, (8, 4, 6)), q, bound, mode)
    message = pb.Bitstream(
        codec=pb.CODEC_KIND_IMAGE,
        model="bmshj2018-hyperprior-q1",
        weights_sha256=bytes(range(32)),
        image=pb.ImageHeader(height=64, width=96, channels=3),
    )
    message.payloads.append(container.make_payload("y", rng.bytes(300), [1], np.arange(1)))
    message.payloads.append(container.make_payload("z", rng.bytes(40), [1], np.arange(1)))
    message.protected.append(container.make_protected("scale_index", "decoding", protected, bound))
    return message


def test_round_trip_preserves_every_field():
    message = sample_message()
    data = container.pack(message)
    assert data[1:5] == b"RPCD"  # field 1 (fixed32 magic) comes first
    parsed = container.unpack(data)
    assert parsed == message
    assert container.payload_bytes(parsed, "y") == message.payloads[0].data
    tensor = container.protected_tensor(parsed, "scale_index")
    assert container.bound_from_proto(tensor.bound) == ErrorBound.relative(1e-4)
    assert container.mode_from_proto(tensor.mode) is Mode.SYNDROME
    assert container.protection_bytes(parsed) == len(tensor.side_info) > 0


def point_cloud_message(origin, scale) -> pb.Bitstream:
    return pb.Bitstream(codec=pb.CODEC_KIND_POINT_CLOUD, model="octree-ctx-v3",
                        weights_sha256=bytes(32),
                        point_cloud=container.point_cloud_header(10, 7, origin, scale))


def test_identity_placement_is_omitted_in_format_3():
    identity = container.pack(point_cloud_message((0, 0, 0), 1.0))
    placed = container.pack(point_cloud_message((0.5, 0, 0), 1.0))
    assert len(placed) - len(identity) == 35  # 3 packed doubles and a double
    parsed = container.unpack(identity)
    assert parsed.format_version == 3 and not parsed.point_cloud.origin
    assert container.placement(parsed.point_cloud) == ((0.0, 0.0, 0.0), 1.0)
    # anything else is written out, at the version an earlier decoder reads
    for origin, scale in [((0.5, 0, 0), 1.0), ((0, 0, 0), 0.5), ((-0.0, 0, 0), 1.0)]:
        parsed = container.unpack(container.pack(point_cloud_message(origin, scale)))
        assert parsed.format_version == 2
        got_origin, got_scale = container.placement(parsed.point_cloud)
        assert got_scale == scale  # the origin to the bit (== does not tell -0.0 from +0.0)
        assert np.array(got_origin).tobytes() == np.array(origin, np.float64).tobytes()
    # image streams too
    assert container.unpack(container.pack(sample_message())).format_version == 2


def test_an_explicit_identity_placement_of_format_2_still_reads():
    """Streams of the previous release wrote the identity out: the checksum is over the same
    values, so they still validate and place points the same."""
    message = point_cloud_message((0.5, 0, 0), 1.0)
    header = message.point_cloud
    del header.origin[:]
    header.origin.extend([0.0, 0.0, 0.0])
    # format 2's definition: the checksum of the written values
    header.checksum = checksum(np.array([10, 7, 0.0, 0.0, 0.0, 1.0]))
    parsed = container.unpack(container.pack(message))
    assert parsed.format_version == 2 and list(parsed.point_cloud.origin) == [0.0, 0.0, 0.0]
    assert container.placement(parsed.point_cloud) == ((0.0, 0.0, 0.0), 1.0)
    compact = point_cloud_message((0, 0, 0), 1.0)
    assert parsed.point_cloud.checksum == compact.point_cloud.checksum


def test_at_version_2_writes_the_placement_out_for_earlier_decoders():
    message = point_cloud_message((0, 0, 0), 1.0)
    compact_checksum = message.point_cloud.checksum
    container.at_version(message, 3)  # the newest: as it is
    assert not message.point_cloud.origin
    container.at_version(message, 2)
    parsed = container.unpack(container.pack(message))
    assert parsed.format_version == 2 and list(parsed.point_cloud.origin) == [0.0, 0.0, 0.0]
    assert parsed.point_cloud.scale == 1.0 and parsed.point_cloud.checksum == compact_checksum
    image = sample_message()
    container.at_version(image, 2)
    assert image.format_version == 2 and container.unpack(container.pack(image)) == image
    for version in (1, 9):
        with pytest.raises(ValueError, match="not one this version writes"):
            container.at_version(message, version)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "format_version", 2), "3 values"),  # version 2 has no omitted form
    (lambda m: setattr(m.point_cloud, "scale", 2.0), "scale without an origin"),
    (lambda m: setattr(m.point_cloud, "scale", -0.0), "scale without an origin"),
    (lambda m: m.point_cloud.origin.extend([0.0, 0.0]), "3 values"),
    (lambda m: (m.point_cloud.origin.extend([0.0, 0.0, 1e308]),
                setattr(m.point_cloud, "scale", 1e306)), "infinite coordinates"),
])
def test_a_malformed_omitted_placement_is_refused(mutate, message):
    parsed = pb.Bitstream.FromString(container.pack(point_cloud_message((0, 0, 0), 1.0)))
    mutate(parsed)
    with pytest.raises(ContainerError, match=message):
        container.unpack(parsed.SerializeToString())


def test_pack_is_deterministic():
    assert container.pack(sample_message()) == container.pack(sample_message())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: setattr(m, "format_version", 9), "version 9 is not supported"),
        (lambda m: setattr(m, "format_version", 1), "re-encode"),
        (lambda m: m.payloads[0].__setattr__("data", b"x" + m.payloads[0].data[1:]), "CRC-32"),
        (lambda m: setattr(m.protected[0], "side_info", m.protected[0].side_info[:-1]), "CRC-32"),
        (lambda m: setattr(m, "weights_sha256", b"short"), "SHA-256"),
        (lambda m: m.point_cloud.SetInParent(), "header does not match"),
        (lambda m: m.payloads.append(m.payloads[0]), "duplicate payload"),
        (lambda m: m.protected[0].shape.append(0), "empty dimension"),
        (lambda m: setattr(m.protected[0].bound, "value", float("nan")), "finite"),
        (lambda m: setattr(m.image, "channels", 4), "channels"),
        (lambda m: setattr(m, "magic", 1), "magic"),
    ],
)
def test_each_kind_of_damage_is_named(mutate, message):
    data = container.pack(sample_message())
    parsed = pb.Bitstream.FromString(data)
    mutate(parsed)
    with pytest.raises(ContainerError, match=message):
        container.unpack(parsed.SerializeToString())


@pytest.mark.parametrize("data", [b"", b"\x00", b"RPCD", b"\xff" * 64, bytes(1000)])
def test_junk_is_rejected(data):
    with pytest.raises(ContainerError):
        container.unpack(data)


def test_non_bytes_are_rejected():
    with pytest.raises(ContainerError, match="bytes"):
        container.unpack("a string")  # type: ignore[arg-type]


VALID = container.pack(sample_message())


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    try:
        container.unpack(data)
    except ContainerError:
        pass


@settings(max_examples=1500, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "delete", "insert", "truncate"]),
                  st.integers(0, len(VALID) - 1), st.integers(0, 255)),
        min_size=1, max_size=4,
    )
)
def test_fuzz_mutated_streams(edits):
    data = bytearray(VALID)
    for action, pos, value in edits:
        pos %= max(len(data), 1)
        if action == "flip" and data:
            data[pos] ^= 1 << (value % 8)
        elif action == "delete" and data:
            del data[pos]
        elif action == "insert":
            data.insert(pos, value)
        else:
            data = data[:pos]
    try:
        parsed = container.unpack(bytes(data))
    except ContainerError:
        return
    # Whatever survives parsing is fully valid: payloads still match their CRCs.
    container.validate(parsed)


@pytest.mark.parametrize("label, build", [
    (3, lambda: sample_message()),  # an image: format 2 expresses it
    (4, lambda: sample_message()),
    (3, lambda: point_cloud_message((1.0, 2.0, 3.0), 0.5)),  # a placed cloud: format 2
    (4, lambda: point_cloud_message((0, 0, 0), 1.0)),  # omitted placement, no mixed payload: 3
])
def test_a_label_above_the_lowest_version_is_refused(label, build):
    """Streams carry the lowest version that expresses them (every writer does so), so the
    same content has one encoding and a higher label, which older decoders would refuse for
    nothing, is not a stream of ours."""
    message = pb.Bitstream.FromString(container.pack(build()))
    assert message.format_version < label
    container.unpack(message.SerializeToString())  # as written: fine
    message.format_version = label
    with pytest.raises(ContainerError, match=f"a format {label} label on a stream that format"):
        container.unpack(message.SerializeToString())
