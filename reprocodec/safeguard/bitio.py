"""Vectorized bit packing: LEB128 varints, fixed-width fields and Golomb-Rice sequences.

Bits are packed LSB-first within each byte (numpy `bitorder="little"`). Every reader
function raises MalformedSideInfo on truncated, overlong or non-canonical input, after work
and memory proportional to the bytes it was given: a declared count is checked against the
bits left before anything of that size is allocated or scanned, and a varint is at most 9
bytes. None can read out of bounds.
"""

from __future__ import annotations

import numpy as np

from .errors import MalformedSideInfo

_MAX_RICE_K = 62
# Varints carry counts and lengths, which are int64 everywhere else: 63 bits, 9 bytes.
_VARINT_BITS = 63


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it). Only the minimal encoding that encode_varint writes is
    accepted, below 2**63 (at most 9 bytes are looked at, whatever follows)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise MalformedSideInfo("side information truncated inside a varint")
        if shift >= _VARINT_BITS:
            raise MalformedSideInfo("side information has an overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and shift > 7:
                raise MalformedSideInfo("side information has a non-minimal varint")
            return value, pos


class BitWriter:
    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def write_bits(self, values: np.ndarray, width: int) -> None:
        """Each value as `width` bits, LSB first."""
        if width == 0 or np.size(values) == 0:
            return
        v = np.asarray(values, dtype=np.uint64).ravel()
        bits = (v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
        self._parts.append(bits.astype(np.uint8).ravel())

    def write_unary(self, values: np.ndarray) -> None:
        """Each value q as q one-bits followed by a zero-bit."""
        q = np.asarray(values, dtype=np.int64).ravel()
        if q.size == 0:
            return
        ends = np.cumsum(q + 1) - 1
        bits = np.ones(int(ends[-1]) + 1, dtype=np.uint8)
        bits[ends] = 0
        self._parts.append(bits)

    def write_rice(self, values: np.ndarray) -> None:
        """Golomb-Rice code with the cost-minimizing parameter k (stored in 6 bits).

        For the geometric gap lengths of a sparse random set this is within a few percent
        of the entropy. Quotients and remainders go in separate runs so that decoding is a
        vectorized search for zero bits rather than a sequential parse.
        """
        v = np.asarray(values, dtype=np.int64).ravel()
        k = best_rice_parameter(v)
        self.write_bits(np.array([k]), 6)
        self.write_unary(v >> k)
        self.write_bits(v & ((1 << k) - 1), k)

    def write_raw(self, bits: np.ndarray) -> None:
        """A ready-made run of 0/1 bits."""
        if np.size(bits):
            self._parts.append(np.asarray(bits, dtype=np.uint8).ravel())

    def write_int(self, value: int, width: int) -> None:
        """An arbitrary-size non-negative Python int as `width` bits, LSB first."""
        if width:
            raw = np.frombuffer(value.to_bytes((width + 7) // 8, "little"), dtype=np.uint8)
            self._parts.append(np.unpackbits(raw, bitorder="little")[:width])

    def getvalue(self) -> bytes:
        if not self._parts:
            return b""
        return np.packbits(np.concatenate(self._parts), bitorder="little").tobytes()


def best_rice_parameter(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    ks = np.arange(_MAX_RICE_K + 1)
    top = int(values.max()).bit_length()
    ks = ks[: top + 1]
    costs = [int((values >> k).sum()) + values.size * (1 + k) for k in ks]
    return int(np.argmin(costs))


class BitReader:
    def __init__(self, data: bytes) -> None:
        self._bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        self._pos = 0

    @property
    def remaining(self) -> int:
        return self._bits.size - self._pos

    def read_bits(self, count: int, width: int) -> np.ndarray:
        if count == 0 or width == 0:
            return np.zeros(count, dtype=np.uint64)
        need = count * width
        if need > self.remaining:
            raise MalformedSideInfo("side information truncated (fixed-width field)")
        bits = self._bits[self._pos : self._pos + need].reshape(count, width).astype(np.uint64)
        self._pos += need
        return (bits << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)

    def read_unary(self, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        if count > self.remaining:  # each value ends with a zero bit
            raise MalformedSideInfo("side information truncated (unary run)")
        # Scan a window that grows until it holds `count` zero bits: the positions found stay
        # O(count) however long the stream is, and every bit is scanned at most twice.
        rest = self._bits[self._pos :]
        window = min(rest.size, 2 * count + 64)
        while True:
            zeros = np.flatnonzero(rest[:window] == 0)
            if zeros.size >= count or window == rest.size:
                break
            window = min(rest.size, 2 * window)
        if zeros.size < count:
            raise MalformedSideInfo("side information truncated (unary run)")
        ends = zeros[:count]
        q = np.diff(np.concatenate(([-1], ends))) - 1
        self._pos += int(ends[-1]) + 1
        return q.astype(np.int64)

    def read_int(self, width: int) -> int:
        if width > self.remaining:
            raise MalformedSideInfo("side information truncated (bit field)")
        bits = self._bits[self._pos : self._pos + width]
        self._pos += width
        return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")

    def read_rice(self, count: int) -> np.ndarray:
        if count + 6 > self.remaining:  # the parameter, then at least one bit per value
            raise MalformedSideInfo("side information truncated (Rice sequence)")
        k = int(self.read_bits(1, 6)[0])
        if k > _MAX_RICE_K:
            raise MalformedSideInfo("side information has an invalid Rice parameter")
        q = self.read_unary(count)
        r = self.read_bits(count, k).astype(np.int64)
        if count and int(q.max()) >= (1 << (62 - k)):
            raise MalformedSideInfo("side information has an out-of-range Rice value")
        return (q << k) | r

    def finish(self) -> None:
        """The writer pads the last byte with zero bits and writes nothing after its fields:
        anything else left is trailing garbage."""
        if self.remaining >= 8 or self._bits[self._pos:].any():
            raise MalformedSideInfo("side information has trailing bits after its fields")
