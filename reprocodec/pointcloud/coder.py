"""Occupancy coding: octree levels -> rANS bytes (compress) and back (decompress), mirrored.

Per level l and sub-pass k (child k of every level-l node, all nodes at once):

    features -> MLP logit (float, protected) -> safeguard index -> clamp -> CDF table -> rANS

The decoder runs the same steps with its own floats; `resolve` turns them into the encoder's
indices as long as they are within the error bound. The side information of all passes is
concatenated into one stream: a mode tag byte, then per pass a varint length and that pass's
safeguard stream without its own (tag, element count) header, which the decoder knows (a pass
with nothing risky, most of them, has an empty body: one byte in all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from compressai.ans import BufferedRansEncoder, RansDecoder

from ..errors import VerificationError
from ..safeguard import DecisionQuantizer, ErrorBound, Mode, SafeguardError, protect, resolve
from ..safeguard.bitio import decode_varint, encode_varint
from . import octree
from .context import N_PASSES
from .model import LOGIT_LIMIT, LOGIT_STEP

# (neighbour table, bits so far, pass k, level, depth) -> float64 logits of child k of each node
Predict = Callable[[np.ndarray, np.ndarray, int, int, int], np.ndarray]
LOGIT_QUANTIZER = DecisionQuantizer.uniform(LOGIT_STEP)
GRID_K = int(round(LOGIT_LIMIT / LOGIT_STEP))


@dataclass
class CodedOccupancy:
    data: bytes  # rANS stream
    side_info: bytes  # concatenated safeguard streams (empty for mode none)
    indices: np.ndarray  # clamped grid index of every coded bit, coding order
    risky_count: int = 0
    candidate_count: int = 0
    per_level_nodes: list[int] = field(default_factory=list)


class _Cdfs:
    """The CDF table in the list form compressai's rANS wants, built once per table."""

    def __init__(self, table: np.ndarray):
        self.cdfs = table.tolist()
        self.lengths = [4] * len(self.cdfs)
        self.offsets = [0] * len(self.cdfs)


def _grid_index(indices: np.ndarray) -> np.ndarray:
    return np.clip(indices, -GRID_K, GRID_K)


# Every mode's stream body for a pass without risky elements: a zero count (flags, simplified)
# or zero syndrome blocks (syndrome). Sent as an empty body.
_NOTHING_RISKY = encode_varint(0)


def _strip_header(stream: bytes, n: int) -> bytes:
    """Drop the safeguard stream's (tag byte, varint n) header; see the module docstring."""
    return stream[1 + len(encode_varint(n)):]


def compress(
    codes: list[np.ndarray], bits: list[np.ndarray], depth: int, predict: Predict,
    table: np.ndarray, mode: Mode, bound: ErrorBound,
) -> CodedOccupancy:
    cdfs = _Cdfs(table)
    encoder = BufferedRansEncoder()
    side = bytearray()
    all_indices, risky, candidates = [], 0, 0
    for level in range(depth):
        neighbours = octree.neighbour_table(codes[level], level)
        for k in range(N_PASSES):
            logits = predict(neighbours, bits[level], k, level, depth)
            protected = protect(logits, LOGIT_QUANTIZER, bound, mode)
            index = _grid_index(protected.indices)
            encoder.encode_with_indexes(
                bits[level][:, k].astype(np.int32).tolist(), (index + GRID_K).tolist(),
                cdfs.cdfs, cdfs.lengths, cdfs.offsets,
            )
            if mode is not Mode.NONE:
                if not side:
                    side.append(protected.stream[0])  # the mode tag, once
                body = _strip_header(protected.stream, logits.size)
                if body == _NOTHING_RISKY:
                    body = b""  # most passes: one byte instead of two
                side += encode_varint(len(body)) + body
            all_indices.append(index)
            risky += protected.risky_count
            candidates += protected.candidate_count
    return CodedOccupancy(
        data=encoder.flush(), side_info=bytes(side), indices=np.concatenate(all_indices),
        risky_count=risky, candidate_count=candidates,
        per_level_nodes=[c.size for c in codes],
    )


def decompress(
    data: bytes, side_info: bytes, total_bits: int, depth: int, predict: Predict,
    table: np.ndarray, mode: Mode, bound: ErrorBound, perturb: Callable[[np.ndarray], np.ndarray],
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Leaf Morton codes and the clamped indices used. Never decodes more than `total_bits`
    symbols (the encoder's count): a desynchronised decoder stops with VerificationError.
    verify=False (benchmarks only) falls back to the decoder's own indices where the safeguard
    reports a disagreement, to measure what an unprotected decoder would return."""
    cdfs = _Cdfs(table)
    decoder = RansDecoder()
    # compressai's rANS decoder reads 32-bit words without bounds checks. Each symbol divides
    # the 64-bit state by at most 2^16 (every table frequency is >= 1 of 2^16) and a word is
    # read only when the state falls below 2^31, so s symbols read at most s/2 + 2 words
    # whatever the bytes are: this zero padding keeps even a desynchronised decoder (mode
    # none, or numerics beyond the bound) inside the buffer.
    decoder.set_stream(bytes(data) + bytes(2 * total_bits + 64))
    side = _SideReader(side_info, mode)
    codes = np.zeros(1, dtype=np.int64)
    all_indices, used = [], 0
    for level in range(depth):
        m = codes.size
        used += N_PASSES * m
        if used > total_bits:
            raise VerificationError(
                f"decoding desynchronised at octree level {level}: more nodes than the stream "
                "codes; the decoder's numerics differ from the encoder's beyond the stream's "
                "error bound (decode with a matching profile or re-encode with protection)"
            )
        neighbours = octree.neighbour_table(codes, level)
        bits = np.zeros((m, N_PASSES), dtype=bool)
        for k in range(N_PASSES):
            logits = perturb(predict(neighbours, bits, k, level, depth))
            try:
                indices = resolve(logits, LOGIT_QUANTIZER, bound, side.next(m), mode)
            except SafeguardError as exc:
                if not verify:
                    indices = LOGIT_QUANTIZER.index(logits)
                else:
                    raise VerificationError(
                        f"occupancy_logit could not be resolved at level {level}, pass {k}: "
                        f"{exc}; the decoder's numerics are outside the stream's error bound"
                    ) from exc
            index = _grid_index(indices)
            decoded = decoder.decode_stream(
                (index + GRID_K).tolist(), cdfs.cdfs, cdfs.lengths, cdfs.offsets
            )
            bits[:, k] = np.asarray(decoded, dtype=np.int64) == 1
            all_indices.append(index)
        codes = octree.children(codes, bits)
    if used != total_bits:
        raise VerificationError(
            f"decoded {used} occupancy bits but the stream codes {total_bits}: desynchronised"
        )
    indices = np.concatenate(all_indices) if all_indices else np.zeros(0, np.int64)
    return codes, indices


class _SideReader:
    """Splits the concatenated side information back into per-pass safeguard streams."""

    def __init__(self, stream: bytes, mode: Mode):
        self.stream, self.mode = stream, mode
        self.pos = 1 if mode is not Mode.NONE else 0

    def next(self, n: int) -> bytes:
        if self.mode is Mode.NONE:
            return b""
        try:
            length, pos = decode_varint(self.stream, self.pos)
        except (ValueError, IndexError) as exc:
            raise SafeguardError("occupancy side information is truncated") from exc
        if pos + length > len(self.stream):
            raise SafeguardError("occupancy side information is truncated")
        self.pos = pos + length
        body = self.stream[pos:pos + length] if length else _NOTHING_RISKY
        return self.stream[:1] + encode_varint(n) + body
