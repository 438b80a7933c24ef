"""Cutting serialized messages into `Chunk`s and joining them back (the ...Stream methods).

A chunked call carries exactly the bytes of the unary request/response message, so the server
runs one code path for both and a reader can check one against the other. Shared by client and
server; imports only protobuf-generated code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from reprocodec.v1 import service_pb2

# Below gRPC's 4 MiB default with room for framing: every chunk fits any peer's default limit.
CHUNK_BYTES = 1 << 20
# Unary messages larger than this go through the chunked twin instead.
UNARY_LIMIT_BYTES = 3 << 20


class ChunkLimitError(ValueError):
    """The chunks announce or carry more bytes than the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit} bytes "
            f"({limit / 2**20:.1f} MiB); send a smaller input or raise --max-message-mb"
        )
        self.size = size
        self.limit = limit


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[service_pb2.Chunk]:
    """Yield `data` as chunks; the first announces the total size (also for empty data)."""
    total = len(data)
    view = memoryview(data)
    yield service_pb2.Chunk(data=bytes(view[:chunk_bytes]), total_bytes=total)
    for start in range(chunk_bytes, total, chunk_bytes):
        yield service_pb2.Chunk(data=bytes(view[start : start + chunk_bytes]))


def join(chunks: Iterable[service_pb2.Chunk], limit: int | None = None) -> bytes:
    """Concatenate chunks, refusing as soon as the announced or received size passes `limit`."""
    parts: list[bytes] = []
    received = 0
    announced = None
    for chunk in chunks:
        if announced is None:
            announced = chunk.total_bytes
            if limit is not None and announced > limit:
                raise ChunkLimitError(announced, limit)
        received += len(chunk.data)
        if limit is not None and received > limit:
            raise ChunkLimitError(received, limit)
        parts.append(chunk.data)
    data = b"".join(parts)
    if announced is not None and announced != len(data):
        raise ValueError(
            f"chunked message is incomplete: {len(data)} of {announced} announced bytes arrived; "
            "resend the request"
        )
    return data
