"""Cutting serialized messages into `Chunk`s and joining them back (the ...Stream methods).

A chunked call carries exactly the bytes of the unary request/response message, so the server
runs one code path for both and a reader can check one against the other. Shared by client and
server; imports only protobuf-generated code and reprocodec.errors (no third-party package).

Errors carry their gRPC status and failure reason (reprocodec.errors): the total over the
receiver's limit is RESOURCE_EXHAUSTED (too_large), one chunk over MAX_CHUNK_BYTES is
RESOURCE_EXHAUSTED (chunk_too_large), chunks that do not add up to the announced total are
INVALID_ARGUMENT (bad_chunks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from reprocodec.errors import InputError, TooLargeError
from reprocodec.v1 import service_pb2

# Below gRPC's 4 MiB default with room for framing: every chunk fits any peer's default limit.
CHUNK_BYTES = 1 << 20
# The most one chunk may carry: gRPC's default message limit, which every peer accepts.
MAX_CHUNK_BYTES = 4 << 20
# Unary messages larger than this go through the chunked twin instead.
UNARY_LIMIT_BYTES = 3 << 20


class ChunkLimitError(TooLargeError, ValueError):
    """The chunks announce or carry more bytes than the receiver accepts (RESOURCE_EXHAUSTED,
    reason too_large)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit} bytes "
            f"({limit / 2**20:.1f} MiB); send a smaller input or raise --max-message-mb"
        )
        self.size = size
        self.limit = limit


class ChunkTooLargeError(TooLargeError):
    """One chunk carries more than MAX_CHUNK_BYTES (RESOURCE_EXHAUSTED, reason
    chunk_too_large)."""

    reason = "chunk_too_large"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"a chunk of {size} bytes is larger than the {MAX_CHUNK_BYTES >> 20} MiB one chunk "
            f"may carry; cut the message into chunks of {CHUNK_BYTES >> 20} MiB "
            "(reprocodec.chunking.split)"
        )
        self.size = size


class ChunkSequenceError(InputError):
    """The chunks do not form the announced message: no total_bytes on the first chunk, or
    fewer or more bytes than announced (a chunk lost or sent twice). INVALID_ARGUMENT, reason
    bad_chunks."""

    reason = "bad_chunks"


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[service_pb2.Chunk]:
    """Yield `data` as chunks; the first announces the total size (also for empty data)."""
    total = len(data)
    view = memoryview(data)
    yield service_pb2.Chunk(data=bytes(view[:chunk_bytes]), total_bytes=total)
    for start in range(chunk_bytes, total, chunk_bytes):
        yield service_pb2.Chunk(data=bytes(view[start : start + chunk_bytes]))


def join(chunks: Iterable[service_pb2.Chunk], limit: int | None = None) -> bytes:
    """Concatenate chunks, refusing as soon as the announced or received size passes `limit`
    (ChunkLimitError) or one chunk is over MAX_CHUNK_BYTES (ChunkTooLargeError); at the end,
    ChunkSequenceError unless exactly the announced number of bytes arrived.

    Chunks carry no sequence number: a chunk lost or sent twice shows as a byte count that
    differs from `total_bytes`. One lost and another sent twice, of equal sizes, is not seen
    here; the message then fails to parse or its CRCs fail (INVALID_ARGUMENT either way).
    """
    parts: list[bytes] = []
    received = 0
    announced = None
    for chunk in chunks:
        if announced is None:
            announced = chunk.total_bytes
            if announced == 0 and chunk.data:
                raise ChunkSequenceError(
                    "the first chunk does not announce total_bytes; set it to the size of the "
                    "whole serialized message (reprocodec.chunking.split does)"
                )
            if limit is not None and announced > limit:
                raise ChunkLimitError(announced, limit)
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise ChunkTooLargeError(len(chunk.data))
        received += len(chunk.data)
        if limit is not None and received > limit:
            raise ChunkLimitError(received, limit)
        parts.append(chunk.data)
    if announced is None:
        raise ChunkSequenceError(
            "the chunked call carried no chunks; send the serialized message cut into chunks, "
            "the first announcing total_bytes"
        )
    if received < announced:
        raise ChunkSequenceError(
            f"chunked message is incomplete: {received} of {announced} announced bytes arrived "
            "(a chunk is missing); resend the request"
        )
    if received > announced:
        raise ChunkSequenceError(
            f"chunked message is longer than announced: {received} bytes arrived, "
            f"{announced} announced (a chunk sent twice?); resend the request"
        )
    return b"".join(parts)
