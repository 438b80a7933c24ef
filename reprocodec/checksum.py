"""Checksums that are identical on every platform.

`checksum` hashes an array's values (not its memory layout): the values are converted to a
fixed little-endian dtype and hashed in C order together with the shape, so a big-endian
machine, a Fortran-ordered array or an int32-vs-int64 index array all give the same number.
xxHash3-64 is used because its output is specified bit-for-bit and it runs at memory speed
(a 768x512 RGB reconstruction hashes in well under a millisecond).
"""

from __future__ import annotations

import zlib

import numpy as np
import xxhash

__all__ = ["checksum", "crc32"]


# Values converted to the canonical dtype at a time: hashing a narrow array (int16 indices,
# bools) never holds an 8-byte-per-value copy of it (the hash is the same: one xxh3 stream).
_CHUNK = 1 << 20


def _canonical_dtype(a: np.ndarray) -> np.dtype:
    if a.dtype == np.bool_:
        return np.dtype(np.uint8)
    if a.dtype.kind in "iu":
        return np.dtype("<i8")
    if a.dtype.kind == "f":
        return np.dtype("<f8")
    raise TypeError(f"checksum: unsupported dtype {a.dtype}")


def checksum(array: np.ndarray) -> int:
    """64-bit platform-independent checksum of an array's shape and values."""
    a = np.asarray(array)
    if a.ndim == 0:  # hashed as shape (1,), as np.ascontiguousarray has always made it
        a = a.reshape(1)
    dtype = _canonical_dtype(a)
    h = xxhash.xxh3_64()
    h.update(np.asarray(a.shape, dtype="<u8").tobytes())
    h.update(dtype.str.encode())
    flat = a.reshape(-1)  # C order (a copy only for a non-contiguous array)
    for start in range(0, flat.size, _CHUNK):
        part = np.ascontiguousarray(flat[start:start + _CHUNK], dtype=dtype)
        h.update(part.data.cast("B"))
    return h.intdigest()


def crc32(data: bytes) -> int:
    """CRC-32 (zlib polynomial) used for framing integrity of container byte fields."""
    return zlib.crc32(data) & 0xFFFFFFFF
