"""protect (encoder) and resolve (decoder), one mirrored pair per mode.

Element order is C order of the input array (numpy's ravel()), identical on every platform.
Each side-information stream starts with a one-byte mode tag and the element count as a
LEB128 varint, so a stream can never be resolved under the wrong mode or tensor size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from . import syndrome as gf2
from .bitio import BitReader, BitWriter, decode_varint, encode_varint
from .bounds import ErrorBound
from .quantizer import DecisionQuantizer, Nearest, SafeguardError
from .riskymap import read_positions, write_positions


class Mode(StrEnum):
    NONE = "none"
    FLAGS = "flags"
    SIMPLIFIED = "simplified"
    SYNDROME = "syndrome"


_TAG = {Mode.FLAGS: 1, Mode.SIMPLIFIED: 2, Mode.SYNDROME: 3}


@dataclass(frozen=True)
class Protected:
    indices: np.ndarray  # what the encoder must code with (same shape as v_enc)
    stream: bytes  # side information for the decoder
    mode: Mode
    risky_count: int  # encoder elements within e of a threshold
    candidate_count: int  # syndrome: encoder's 2e-zone C_2; otherwise = risky_count


def _flat_values(v: np.ndarray, what: str) -> np.ndarray:
    flat = np.asarray(v, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise SafeguardError(f"{what} contains NaN or infinity; it cannot be protected")
    return flat


def _prepare(v: np.ndarray, quantizer: DecisionQuantizer, bound: ErrorBound, what: str):
    quantizer.check_bound(bound)
    flat = _flat_values(v, what)
    return flat, quantizer.index(flat), quantizer.nearest(flat)


def _risky(near: Nearest, bound: ErrorBound) -> np.ndarray:
    return near.distance <= bound.risky_radius(near.t)


def _header(mode: Mode, n: int) -> bytes:
    return bytes([_TAG[mode]]) + encode_varint(n)


def _read_header(stream: bytes, mode: Mode, n: int) -> int:
    if not stream or stream[0] != _TAG[mode]:
        raise SafeguardError(f"side information is not a {mode.value!r} stream")
    n_stream, pos = decode_varint(stream, 1)
    if n_stream != n:
        raise SafeguardError(f"side information is for {n_stream} elements, tensor has {n}")
    return pos


def protect(
    v_enc: np.ndarray, quantizer: DecisionQuantizer, bound: ErrorBound, mode: Mode | str
) -> Protected:
    """Encoder side: the indices to code with and the side information that lets any decoder
    whose values are within `bound` of `v_enc` reproduce them exactly."""
    mode = Mode(mode)
    flat, k, near = _prepare(v_enc, quantizer, bound, "encoder tensor")
    shape = np.shape(v_enc)
    if mode is Mode.NONE:
        return Protected(k.reshape(shape), b"", mode, 0, 0)
    n = flat.size
    risky = np.flatnonzero(_risky(near, bound))
    writer = BitWriter()
    if mode is Mode.FLAGS:
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        writer.write_bits(k[risky] - near.j[risky], 1)  # 1 = above the threshold
        candidates = risky.size
    elif mode is Mode.SIMPLIFIED:
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        k = k.copy()
        k[risky] = near.j[risky]  # canonical: the bin at/below the threshold, on both sides
        candidates = risky.size
    else:
        zone = np.flatnonzero(near.distance <= bound.encoder_radius(near.t))
        n_blocks = gf2.choose_block_count(n, zone.size)
        varints = encode_varint(n_blocks)
        if n_blocks:
            rows = [gf2.rows_for_full_rank(zone[zone % n_blocks == b]) for b in range(n_blocks)]
            writer.write_rice(np.array(rows))
            for s, m in zip(gf2.block_syndromes(k & 1, n_blocks, rows), rows, strict=True):
                writer.write_int(s, m)
        candidates = zone.size
    stream = _header(mode, n) + varints + writer.getvalue()
    return Protected(k.reshape(shape), stream, mode, int(risky.size), int(candidates))


def resolve(
    v_dec: np.ndarray,
    quantizer: DecisionQuantizer,
    bound: ErrorBound,
    stream: bytes,
    mode: Mode | str,
) -> np.ndarray:
    """Decoder side: the encoder's indices, from the decoder's own values and the stream.

    Exact whenever |v_enc - v_dec| is within `bound`. Outside it, raises SafeguardError where
    the stream shows the disagreement, and may otherwise return wrong indices: callers verify
    the index checksum the container carries (reprocodec.checksum).
    """
    mode = Mode(mode)
    flat, k, near = _prepare(v_dec, quantizer, bound, "decoder tensor")
    shape = np.shape(v_dec)
    if mode is Mode.NONE:
        if stream:
            raise SafeguardError("mode 'none' carries no side information, got some")
        return k.reshape(shape)
    n = flat.size
    pos = _read_header(stream, mode, n)
    count, pos = decode_varint(stream, pos)
    reader = BitReader(stream[pos:])
    if mode is Mode.FLAGS:
        risky = read_positions(reader, count, n)
        above = reader.read_bits(risky.size, 1).astype(np.int64)
        k[risky] = near.j[risky] + above
    elif mode is Mode.SIMPLIFIED:
        risky = read_positions(reader, count, n)
        k[risky] = near.j[risky]
    else:
        n_blocks = count
        if n_blocks > n:
            raise SafeguardError("side information has more syndrome blocks than elements")
        zone = np.flatnonzero(_risky(near, bound))  # C_d: only here can k differ
        if n_blocks:
            rows = reader.read_rice(n_blocks).tolist()
            if max(rows) > -(-n // n_blocks) + 64:
                raise SafeguardError("side information has an impossible syndrome size")
            sent = [reader.read_int(m) for m in rows]
            known = gf2.block_syndromes(k & 1, n_blocks, rows)
            for b in range(n_blocks):
                members = zone[zone % n_blocks == b]
                residual = sent[b] ^ known[b]
                if residual == 0 and members.size == 0:
                    continue
                x = gf2.solve(gf2.column_ints(members, rows[b]), residual)
                flip = members[[j for j in range(members.size) if x >> j & 1]]
                k[flip] = 2 * near.j[flip] + 1 - k[flip]  # the other of j, j + 1
    return k.reshape(shape)
