"""protect (encoder) and resolve / resolve_body (decoder), one mirrored pair per mode.

Element order is C order of the input array (numpy's ravel()), identical on every platform.
A side-information stream is a header, a one-byte mode tag and the element count as a LEB128
varint, so that a stream can never be resolved under the wrong mode or tensor size, then the
body. Callers that record the mode and size themselves (the point-cloud coder packs one body
per pass) store `Protected.body` and call `resolve_body`; `resolve` checks the header and calls
`resolve_body`, so there is one reader. A caller that frames a syndrome body's fields its own
way (the point-cloud coder, in one bit stream for all passes) keeps `Protected.syndromes` and
passes what it reads back to `resolve_syndromes`: the same checks and solve, without a body to
rebuild and parse again.

Bodies (bits LSB first, zero-padded to a byte, nothing after):
  flags       varint count, Rice-coded position gaps (riskymap), count direction bits
  simplified  varint count, Rice-coded position gaps
  syndrome    varint n_blocks; if n_blocks: Rice-coded rows per block, then rows[b] syndrome
              bits of each block b
When nothing is risky, the stream's body is what these layouts give for a zero count: 0x00 0x00
for flags and simplified (count 0, then the empty Rice sequence's 6-bit parameter 0, padded) and
0x00 for syndrome (no blocks; nothing is risky for syndrome when the encoder's 2e-zone is
empty). `Protected.body` is then b"" in every mode, and resolve_body reads b"" as "nothing
risky" in every mode (as well as the longer forms above).

Errors: MalformedSideInfo for side information that no honest encoder writes (checked before
any expensive work), SafeguardError for a decoder whose values do not reproduce the encoder's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from . import elimination
from . import syndrome as gf2
from .bitio import BitReader, BitWriter, decode_varint, encode_varint
from .bounds import ErrorBound
from .errors import MalformedSideInfo, SafeguardError
from .quantizer import DecisionQuantizer
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
# The body protect writes when nothing is risky (see the module docstring).
_NOTHING_RISKY = {Mode.FLAGS: b"\x00\x00", Mode.SIMPLIFIED: b"\x00\x00", Mode.SYNDROME: b"\x00"}


@dataclass(frozen=True)
class SyndromeParts:
    """A syndrome body's fields, for a caller that frames them its own way (the point-cloud
    coder packs every pass's into one bit stream): each block's row count and its syndrome,
    an int below 2 ** rows[b]. resolve_syndromes is resolve_body for these."""

    rows: np.ndarray  # int64, one per block
    sent: list[int]


@dataclass(frozen=True)
class Protected:
    indices: np.ndarray  # what the encoder must code with (same shape as v_enc)
    # The side information as written (header + body), or None for syndrome mode's, which
    # `stream` writes from `syndromes` when first read: a caller that frames the fields its
    # own way (the point-cloud coder) never pays for it, about 30 % of the camel's and the
    # 1/20 sampling's protect time (the Rice and integer fields, bit by bit)
    written: bytes | None
    mode: Mode
    risky_count: int  # encoder elements within e of a threshold
    candidate_count: int  # syndrome: encoder's 2e-zone C_2; otherwise = risky_count
    syndromes: SyndromeParts | None = None  # syndrome mode with blocks: the body's fields

    @functools.cached_property
    def stream(self) -> bytes:
        """Side information for the decoder: header + body."""
        if self.written is not None:
            return self.written
        writer, parts = BitWriter(), self.syndromes
        if parts is not None:  # (protect keeps no fields for zero blocks)
            writer.write_rice(parts.rows)
            for sent, m in zip(parts.sent, parts.rows.tolist(), strict=True):
                writer.write_int(sent, m)
        n_blocks = 0 if parts is None else len(parts.sent)
        return _header(self.mode, int(self.indices.size)) + encode_varint(n_blocks) + \
            writer.getvalue()

    @property
    def body(self) -> bytes:
        """The stream without its header (mode tag, element count), for resolve_body; b""
        when nothing is risky (and for mode none). Defined for streams protect wrote."""
        if self.mode is Mode.NONE:
            return b""
        body = self.stream[_read_header(self.stream, self.mode, int(self.indices.size)):]
        return b"" if body == _NOTHING_RISKY[self.mode] else body


def _header(mode: Mode, n: int) -> bytes:
    return bytes([_TAG[mode]]) + encode_varint(n)


def _read_header(stream: bytes, mode: Mode, n: int) -> int:
    if stream and stream[0] in _RETIRED_TAGS:
        raise MalformedSideInfo(f"side information is {_RETIRED_TAGS[stream[0]]}")
    if not stream or stream[0] != _TAG[mode]:
        raise MalformedSideInfo(f"side information is not a {mode.value!r} stream")
    n_stream, pos = decode_varint(stream, 1)
    if n_stream != n:
        raise MalformedSideInfo(f"side information is for {n_stream} elements, tensor has {n}")
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
    n = math.prod(shape)
    if mode is Mode.SYNDROME:  # its stream is written from the fields when first read
        k, zone, near = quantizer.index_and_near(v_enc, bound.encoder_radius, "encoder tensor")
        risky_count = int(np.count_nonzero(near.distance <= bound.risky_radius(near.t)))
        n_blocks, rows = elimination.plan_blocks(n, zone)
        parts = SyndromeParts(rows, [gf2.to_int(words) for words in
                                     gf2.block_syndromes(k, n_blocks, rows)]) \
            if n_blocks else None
        return Protected(k.reshape(shape), None, mode, risky_count, int(zone.size), parts)
    writer = BitWriter()
    if mode is Mode.FLAGS:
        k, risky, near = quantizer.index_and_near(v_enc, bound.risky_radius, "encoder tensor")
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        writer.write_bits(k[risky] - near.j, 1)  # 1 = above the threshold it is risky for
        candidates = risky_count = risky.size
    else:  # simplified
        k, risky, near = quantizer.index_and_near(v_enc, bound.risky_radius, "encoder tensor")
        varints = encode_varint(risky.size)
        write_positions(writer, risky)
        k[risky] = near.j  # canonical: the bin at/below the threshold, on both sides
        candidates = risky_count = risky.size
    stream = _header(mode, n) + varints + writer.getvalue()
    return Protected(k.reshape(shape), stream, mode, int(risky_count), int(candidates))


def resolve(
    v_dec: np.ndarray,
    quantizer: DecisionQuantizer,
    bound: ErrorBound,
    stream: bytes,
    mode: Mode | str,
) -> np.ndarray:
    """Decoder side: the encoder's indices, from the decoder's own values and the stream
    (`Protected.stream`): checks the header, then resolve_body.

    Exact whenever |v_enc - v_dec| is within `bound`. Raises MalformedSideInfo for a stream no
    encoder writes; outside the bound, raises SafeguardError where the stream shows the
    disagreement, and may otherwise return wrong indices: callers verify the index checksum
    the container carries (reprocodec.checksum).
    """
    mode = Mode(mode)
    if mode is Mode.NONE:
        if stream:
            raise MalformedSideInfo("mode 'none' carries no side information, got some")
        return resolve_body(v_dec, quantizer, bound, b"", mode)
    pos = _read_header(stream, mode, math.prod(np.shape(v_dec)))
    return resolve_body(v_dec, quantizer, bound, stream[pos:], mode)


def resolve_body(
    v_dec: np.ndarray,
    quantizer: DecisionQuantizer,
    bound: ErrorBound,
    body: bytes,
    mode: Mode | str,
) -> np.ndarray:
    """resolve for a stream without its header (`Protected.body`): the caller vouches for the
    mode and the element count (v_dec's size). b"" means nothing risky in every mode. The whole
    body is parsed and checked (MalformedSideInfo) before the decoder's tensor is processed."""
    mode = Mode(mode)
    quantizer.check_bound(bound)
    shape = np.shape(v_dec)
    if mode is Mode.NONE:
        if body:
            raise MalformedSideInfo("mode 'none' carries no side information, got some")
        return quantizer.index(v_dec, "decoder tensor")
    n = math.prod(shape)
    count, pos = decode_varint(body, 0) if body else (0, 0)
    reader = BitReader(body[pos:])
    if mode is Mode.SYNDROME:
        return _resolve_syndrome(v_dec, quantizer, bound, reader, count, bool(body))
    if count > n:
        raise MalformedSideInfo(f"side information claims {count} risky elements of {n}")
    risky = np.zeros(0, dtype=np.int64)
    above = np.zeros(0, dtype=np.int64)
    if body:
        risky = read_positions(reader, count, n)
        if mode is Mode.FLAGS:
            above = reader.read_bits(risky.size, 1).astype(np.int64)
        reader.finish()
    k = quantizer.index(v_dec, "decoder tensor").ravel()
    if risky.size:
        # The threshold each named element is risky for. The encoder's v_enc is within the
        # risky radius R(t) of it, so a decoder within the bound is within R(t) + e|v_enc|
        # <= encoder_radius(t) of it, and of no other threshold (check_bound keeps those
        # zones apart). The nearest threshold is not enough: see DecisionQuantizer._bracket.
        near, within = quantizer.near_within(
            np.asarray(v_dec).ravel()[risky].astype(np.float64), bound.encoder_radius)
        if not within.all():
            raise SafeguardError("a risky element's decoder value is near no threshold: "
                                 "decoder is outside the error bound")
        k[risky] = near.j + above if mode is Mode.FLAGS else near.j
    return k.reshape(shape)


def _resolve_syndrome(v_dec: np.ndarray, quantizer: DecisionQuantizer, bound: ErrorBound,
                      reader: BitReader, n_blocks: int, has_body: bool) -> np.ndarray:
    shape = np.shape(v_dec)
    n = math.prod(shape)
    if n_blocks > n:
        raise MalformedSideInfo("side information has more syndrome blocks than elements")
    rows = np.zeros(0, dtype=np.int64)
    sent: list[int] = []
    if n_blocks:
        rows = reader.read_rice(n_blocks)  # refuses n_blocks beyond the bits left first
        gf2.check_rows(rows, n, n_blocks, reader.remaining)  # all caps, before any work
        sent = [reader.read_int(m) for m in rows.tolist()]
    if has_body:
        reader.finish()
    return _solve_syndromes(v_dec, quantizer, bound, SyndromeParts(rows, sent))


def resolve_syndromes(v_dec: np.ndarray, quantizer: DecisionQuantizer, bound: ErrorBound,
                      parts: SyndromeParts) -> np.ndarray:
    """resolve_body of a syndrome body given as its fields (read by the caller from its own
    framing, each syndrome exactly rows[b] bits): the same checks, before any work."""
    quantizer.check_bound(bound)
    n, n_blocks = math.prod(np.shape(v_dec)), len(parts.sent)
    rows = np.asarray(parts.rows, dtype=np.int64)
    if rows.shape != (n_blocks,):
        raise MalformedSideInfo("side information has a row count per block, and only that")
    if n_blocks > n:
        raise MalformedSideInfo("side information has more syndrome blocks than elements")
    if n_blocks:
        gf2.check_rows(rows, n, n_blocks, int(rows.sum()))  # all caps, before any work
        if any(s < 0 or s >> m for s, m in zip(parts.sent, rows.tolist(), strict=True)):
            raise MalformedSideInfo("side information has a syndrome longer than its rows")
    return _solve_syndromes(v_dec, quantizer, bound, SyndromeParts(rows, parts.sent))


def _solve_syndromes(v_dec: np.ndarray, quantizer: DecisionQuantizer, bound: ErrorBound,
                     parts: SyndromeParts) -> np.ndarray:
    """The encoder's indices from checked syndrome fields."""
    shape = np.shape(v_dec)
    rows, sent, n_blocks = parts.rows, parts.sent, len(parts.sent)
    if not n_blocks:  # the encoder's 2e-zone was empty: no decoder within the bound differs
        return quantizer.index(v_dec, "decoder tensor")
    # C_d: the decoder's own risky zone, the only place where k can differ. If k_dec != k_enc,
    # one threshold t lies between v_enc and v_dec, both are within R(t) of it and t brackets
    # v_dec: so the element is in C_d with near.j = t (DecisionQuantizer._bracket), and k_dec is
    # j or j + 1. And every element of C_d has v_enc within R(t) + e|v_enc| <= encoder_radius(t)
    # of its t, so it is in the encoder's zone C_2 (found the same way): each block's solve is
    # unique, as the encoder sized it.
    k, zone, near = quantizer.index_and_near(v_dec, bound.risky_radius, "decoder tensor")
    known = gf2.block_syndromes(k, n_blocks, rows)
    residual = np.stack([gf2.to_words(s, known.shape[1]) for s in sent]) ^ known
    order, keys, starts = gf2.split_blocks(zone, n_blocks)
    flip = order[elimination.block_solve(keys, starts, rows, residual)]
    k[zone[flip]] = 2 * near.j[flip] + 1 - k[zone[flip]]  # the other of j, j + 1
    return k.reshape(shape)


def warm_up() -> None:
    """Run every kernel path once on a small tensor (syndrome on a uniform grid and on sorted
    thresholds), so that the numba kernels are compiled (or loaded from their cache) now
    rather than inside the first request's deadline."""
    v = np.arange(512, dtype=np.float64) * 0.499  # some elements within e of a threshold
    for q, bound, v_dec in (
        (DecisionQuantizer.uniform(1.0), ErrorBound.absolute(1e-3), v + 5e-4),
        (DecisionQuantizer.from_thresholds(np.arange(1, 200) + 0.5), ErrorBound.relative(1e-3),
         v * (1 + 5e-4)),
    ):
        p = protect(v, q, bound, Mode.SYNDROME)
        if not np.array_equal(resolve(v_dec, q, bound, p.stream, Mode.SYNDROME), p.indices):
            raise SafeguardError("syndrome self-check failed")
