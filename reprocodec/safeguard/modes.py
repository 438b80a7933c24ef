"""protect (encoder) and resolve (decoder), one mirrored pair per mode.

Element order is C order of the input array (numpy's ravel()), identical on every platform.
Each side-information stream starts with a one-byte mode tag and the element count as a
LEB128 varint, so a stream can never be resolved under the wrong mode or tensor size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from . import elimination
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


# Tag 3 was the syndrome layout of reprocodec 0.1 (H keyed by element number); streams with it
# are refused with a clear message rather than mis-solved.
_TAG = {Mode.FLAGS: 1, Mode.SIMPLIFIED: 2, Mode.SYNDROME: 4}
_RETIRED_TAGS = {3: "a syndrome stream of reprocodec 0.1, whose layout this version no longer "
                    "reads; re-encode the input"}


@dataclass(frozen=True)
class Protected:
    indices: np.ndarray  # what the encoder must code with (same shape as v_enc)
    stream: bytes  # side information for the decoder
    mode: Mode
    risky_count: int  # encoder elements within e of a threshold
    candidate_count: int  # syndrome: encoder's 2e-zone C_2; otherwise = risky_count


def _nearest_of(v: np.ndarray, positions: np.ndarray, quantizer: DecisionQuantizer) -> Nearest:
    """Nearest thresholds of the elements the stream names (flags, simplified)."""
    return quantizer.nearest(np.asarray(v).ravel()[positions].astype(np.float64))


def _header(mode: Mode, n: int) -> bytes:
    return bytes([_TAG[mode]]) + encode_varint(n)


def _read_header(stream: bytes, mode: Mode, n: int) -> int:
    if stream and stream[0] in _RETIRED_TAGS:
        raise SafeguardError(f"side information is {_RETIRED_TAGS[stream[0]]}")
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
    quantizer.check_bound(bound)
    shape = np.shape(v_enc)
    if mode is Mode.NONE:
        return Protected(quantizer.index(v_enc, "encoder tensor"), b"", mode, 0, 0)
    n = int(np.prod(shape))
    writer = BitWriter()
    if mode is Mode.FLAGS:
        k, risky, near = quantizer.index_and_near(v_enc, bound.risky_radius, "encoder tensor")
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        writer.write_bits(k[risky] - near.j, 1)  # 1 = above the threshold
        candidates = risky_count = risky.size
    elif mode is Mode.SIMPLIFIED:
        k, risky, near = quantizer.index_and_near(v_enc, bound.risky_radius, "encoder tensor")
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        k[risky] = near.j  # canonical: the bin at/below the threshold, on both sides
        candidates = risky_count = risky.size
    else:
        k, zone, near = quantizer.index_and_near(v_enc, bound.encoder_radius, "encoder tensor")
        risky_count = int(np.count_nonzero(near.distance <= bound.risky_radius(near.t)))
        n_blocks = gf2.choose_block_count(n, zone)
        varints = encode_varint(n_blocks)
        if n_blocks:
            _, keys, starts = gf2.split_blocks(zone, n_blocks)
            rows = elimination.block_rows(keys, starts)
            writer.write_rice(rows)
            for words, m in zip(gf2.block_syndromes(k, n_blocks, rows), rows.tolist(),
                                strict=True):
                writer.write_int(gf2.to_int(words), m)
        candidates = zone.size
    stream = _header(mode, n) + varints + writer.getvalue()
    return Protected(k.reshape(shape), stream, mode, int(risky_count), int(candidates))


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
    quantizer.check_bound(bound)
    shape = np.shape(v_dec)
    if mode is Mode.NONE:
        if stream:
            raise SafeguardError("mode 'none' carries no side information, got some")
        return quantizer.index(v_dec, "decoder tensor")
    n = int(np.prod(shape))
    pos = _read_header(stream, mode, n)
    count, pos = decode_varint(stream, pos)
    reader = BitReader(stream[pos:])
    if mode is not Mode.SYNDROME:
        k = quantizer.index(v_dec, "decoder tensor").ravel()
    if mode is Mode.FLAGS:
        risky = read_positions(reader, count, n)
        above = reader.read_bits(risky.size, 1).astype(np.int64)
        k[risky] = _nearest_of(v_dec, risky, quantizer).j + above
    elif mode is Mode.SIMPLIFIED:
        risky = read_positions(reader, count, n)
        k[risky] = _nearest_of(v_dec, risky, quantizer).j
    else:
        n_blocks = count
        if n_blocks > n:
            raise SafeguardError("side information has more syndrome blocks than elements")
        # C_d: the decoder's own risky zone, the only place where k can differ.
        k, zone, near = quantizer.index_and_near(v_dec, bound.risky_radius, "decoder tensor")
        if n_blocks:
            rows = reader.read_rice(n_blocks)
            gf2.check_rows(rows, n, n_blocks)
            sent = [reader.read_int(m) for m in rows.tolist()]
            known = gf2.block_syndromes(k, n_blocks, rows)
            residual = np.stack([gf2.to_words(s, known.shape[1]) for s in sent]) ^ known
            order, keys, starts = gf2.split_blocks(zone, n_blocks)
            flip = order[elimination.block_solve(keys, starts, rows, residual)]
            k[zone[flip]] = 2 * near.j[flip] + 1 - k[zone[flip]]  # the other of j, j + 1
    return k.reshape(shape)


def warm_up() -> None:
    """Run every syndrome path once on a small tensor, so that the numba kernels are compiled (or
    loaded from their cache) now rather than inside the first request's deadline."""
    q, bound = DecisionQuantizer.uniform(1.0), ErrorBound.absolute(1e-3)
    v = np.arange(512, dtype=np.float64) * 0.499  # some elements within e of a threshold
    p = protect(v, q, bound, Mode.SYNDROME)
    if not np.array_equal(resolve(v + 5e-4, q, bound, p.stream, Mode.SYNDROME), p.indices):
        raise SafeguardError("syndrome self-check failed")
