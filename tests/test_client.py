"""The light client on its own: imports without torch, chunking, retries (no server needed)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from reprocodec import chunking
from reprocodec.client import EncoderClient, ServiceError, clients
from reprocodec.errors import InputError, TooLargeError
from reprocodec.image.io import decode_image_bytes, encode_png, psnr, raw_to_pixels
from reprocodec.streamstats import stream_stats
from reprocodec.v1 import bitstream_pb2

_BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "compressai"):
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_client_and_cli_remote_verbs_import_without_torch():
    code = _BLOCK_TORCH + """
import reprocodec.client, reprocodec.client.commands, reprocodec.image.io
from reprocodec.client import DecoderClient, EncoderClient
EncoderClient("127.0.0.1:1").close()
DecoderClient("127.0.0.1:1").close()
from reprocodec.cli import main
# Through the CLI's parser and delegation into client.commands: unreachable -> exit 1.
assert main(["health", "127.0.0.1:1", "--timeout", "0.5"]) == 1
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "compressai"))
assert not loaded, loaded
print("light")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light"
    assert "UNAVAILABLE" in result.stderr


@pytest.mark.parametrize("size", [0, 1, chunking.CHUNK_BYTES, 2 * chunking.CHUNK_BYTES + 7])
def test_chunks_rejoin_to_the_same_bytes(size):
    data = np.random.default_rng(size).bytes(size)
    chunks = list(chunking.split(data))
    assert chunks[0].total_bytes == size
    assert all(len(c.data) <= chunking.CHUNK_BYTES for c in chunks)
    assert chunking.join(iter(chunks)) == data


def test_join_refuses_early_and_detects_missing_chunks():
    data = bytes(3 * chunking.CHUNK_BYTES)
    with pytest.raises(chunking.ChunkLimitError, match="--max-message-mb"):
        chunking.join(chunking.split(data), limit=chunking.CHUNK_BYTES)
    lying = list(chunking.split(data))
    lying[0].total_bytes = 10  # announces less than it sends: caught on the received count
    with pytest.raises(chunking.ChunkLimitError):
        chunking.join(iter(lying), limit=chunking.CHUNK_BYTES + 5)
    with pytest.raises(ValueError, match="incomplete"):
        chunking.join(iter(list(chunking.split(data))[:-1]))


class _Status(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "test"


def test_retries_with_exponential_backoff_on_unavailable_only(monkeypatch):
    pauses = []
    monkeypatch.setattr(clients.time, "sleep", pauses.append)
    client = EncoderClient("127.0.0.1:1", retries=3, backoff=0.1, timeout=60)
    calls = []

    def flaky(request, timeout, metadata):
        calls.append(timeout)
        if len(calls) < 3:
            raise _Status(grpc.StatusCode.UNAVAILABLE)
        return "answer"

    assert client._call(flaky, None, None) == "answer"
    assert len(calls) == 3 and len(pauses) == 2
    for attempt, pause in enumerate(pauses):
        assert 0.5 * 0.1 * 2**attempt <= pause <= 0.1 * 2**attempt
    assert calls[1] < calls[0]  # one deadline shared by all attempts

    calls.clear()

    def invalid(request, timeout, metadata):
        calls.append(timeout)
        raise _Status(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(ServiceError) as info:
        client._call(invalid, None, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(calls) == 1
    client.close()


def test_unreachable_server_gives_up_after_the_retries():
    client = EncoderClient("127.0.0.1:1", retries=2, backoff=0.01, timeout=5)
    with pytest.raises(ServiceError) as info:
        client.health()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_image_io_checks():
    pixels = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    png = encode_png(pixels)
    assert png == encode_png(pixels.copy())  # deterministic bytes
    assert np.array_equal(decode_image_bytes(png), pixels)
    assert decode_image_bytes(encode_png(pixels[:, :, :1])).shape == (6, 5, 1)
    assert psnr(pixels, pixels) == float("inf")
    with pytest.raises(InputError):
        decode_image_bytes(b"")
    with pytest.raises(InputError):
        decode_image_bytes(b"not an image at all")
    with pytest.raises(TooLargeError):
        decode_image_bytes(png, max_pixels=29)
    with pytest.raises(InputError):
        raw_to_pixels(6, 5, 3, pixels.tobytes()[:-1])
    with pytest.raises(InputError):
        raw_to_pixels(6, 5, 2, bytes(60))


def test_stream_stats_from_fields():
    msg = bitstream_pb2.Bitstream(codec=bitstream_pb2.CODEC_KIND_IMAGE, model="m",
                                  image=bitstream_pb2.ImageHeader(height=10, width=20, channels=3))
    msg.payloads.add(name="y", data=bytes(100))
    msg.protected.add(name="scale_index", shape=[2, 3], side_info=bytes(7), risky_count=4,
                      mode=bitstream_pb2.SAFEGUARD_MODE_FLAGS)
    msg.protected.add(name="pixels", shape=[1], mode=bitstream_pb2.SAFEGUARD_MODE_NONE)
    stats = stream_stats(msg, "cpu", 0.5)
    assert (stats.payload_bytes, stats.protection_bytes) == (100, 7)
    assert stats.overhead_ratio == pytest.approx(0.07)
    assert stats.num_elements == 200
    assert stats.bits_per_element == pytest.approx(8 * msg.ByteSize() / 200)
    assert stats.mode == bitstream_pb2.SAFEGUARD_MODE_FLAGS  # NONE tensors do not count
    assert [t.elements for t in stats.tensors] == [6, 1]


def test_encode_point_cloud_sends_smallest_and_the_cli_passes_it(monkeypatch):
    """The client's smallest=True (and `reprocodec encode --smallest --encoder ...`) set the
    request's smallest field; absent, it is false (the service prices network rows)."""
    import argparse

    from reprocodec.client import commands

    sent = []
    client = EncoderClient("127.0.0.1:1")
    monkeypatch.setattr(client, "_unary_or_chunked",
                        lambda unary, stream, request, response, timeout: sent.append(request))
    points = np.zeros((4, 3), np.float32)
    client.encode_point_cloud(points, smallest=True)
    client.encode_point_cloud(points)
    for smallest in (True, False):
        args = argparse.Namespace(model=None, depth=None, safeguard=None, smallest=smallest)
        commands._encode_cloud(client, b"ply", args)
    client.close()
    assert [r.smallest for r in sent] == [True, False, True, False]
