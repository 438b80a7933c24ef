"""Occupancy coding: octree levels -> rANS bytes (compress) and back (decompress), mirrored.

Per learned level l and sub-pass k (child k of every level-l node, all nodes at once):

    features -> MLP logit (float, protected) -> safeguard index -> clamp -> CDF table -> rANS

Levels the stream gives to the adaptive context coder (adaptive.py: integer counts, its own
rANS stream, decoded node by node) or to the neighbour coder (neighbour.py: count models of
each child's neighbourhood, its own rANS stream, decoded pass by pass like learned levels)
skip all of this; every coder's levels walk the same octree, and the adaptive model's counts
see every level's bits. The encoder prices each level each way (learned_level /
estimate_level_cost, neighbour.walk_contexts, adaptive.code_length; codec.py picks).

The decoder runs the same steps with its own floats; the occupancy decision's `resolve_pass`
turns them into the encoder's indices as long as they are within the error bound. The side
information of all learned passes is one record (the record's mode and each pass's size are its
header; mode none has none):

* syndrome (the default): one bit stream, per pass a presence bit, then for a pass with
  candidates its block count and each block's row count as Elias-gamma codes and the
  syndrome bits, with no byte alignment or lengths: a pass with a few candidates, the common
  case, costs a few bits more than its syndrome (its `Protected.body`'s own framing is about
  3 bytes): the encoder writes `Protected.syndromes`, the decoder reads them back into
  `resolve_syndromes`, which checks them as `resolve_body` checks a body;
* flags, simplified: a bitmap of the passes that have a body, then per such pass a varint
  length and the body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import entropy
from ..decision import ProtectedDecision
from ..errors import ContainerError, VerificationError
from ..safeguard import DecisionQuantizer, ErrorBound, Mode, SyndromeParts
from ..safeguard.bitio import BitWriter, decode_varint, encode_varint
from . import adaptive, mixing, neighbour, nodecontext, octree, planes, refine
from .context import N_PASSES
from .grid import GRID_K, LOGIT_STEP
from .rowslices import Pending

# (neighbour table, bits so far, pass k, level, depth) -> float64 logits of child k of each node
Predict = Callable[[np.ndarray, np.ndarray, int, int, int], np.ndarray]
# The same, started: the logits as a rowslices.Pending (the encoder protects one pass while
# the pool makes the next)
StartPredict = Callable[[np.ndarray, np.ndarray, int, int, int], Pending]
LOGIT_QUANTIZER = DecisionQuantizer.uniform(LOGIT_STEP)
TENSOR = "occupancy_logit"


@dataclass
class CodedOccupancy:
    data: bytes  # rANS stream
    side_info: bytes  # per-pass safeguard bodies (empty for mode none)
    indices: np.ndarray  # clamped grid index of every coded bit, coding order (int16: |i| <= K)
    risky_count: int = 0
    candidate_count: int = 0
    per_level_nodes: list[int] = field(default_factory=list)


def occupancy_decision(bound: ErrorBound) -> ProtectedDecision:
    return ProtectedDecision(TENSOR, "decoding", LOGIT_QUANTIZER, bound)


def cdf_tables(table: np.ndarray) -> entropy.CdfTables:
    """The shipped logit -> CDF table (rows [0, f0, 2^16, 2^16]: bits 0 and 1, no escape)."""
    return entropy.CdfTables.from_arrays(table, np.full(len(table), 4), np.zeros(len(table)))


def _grid_index(indices: np.ndarray) -> np.ndarray:
    return np.clip(indices, -GRID_K, GRID_K)


@dataclass
class LearnedLevel:
    """The learned model's coding of one octree level (encoder side), before the per-level
    choice: what it would code and an estimate of what it would cost."""

    indices: np.ndarray  # clamped grid index of each bit, pass-major (child k of every node)
    bodies: list[bytes | SyndromeParts | None]  # per pass safeguard body (syndrome mode: its
    # fields, None when nothing is risky)
    risky: int
    candidates: int
    cost: int  # code length of the bits (the cheaper of the model's and, when priced, the
    # refined probabilities) plus the side information of the passes, in units of
    # 2^-entropy.COST_FRACTION bits (exact integers: the same choice on every machine)
    static_cost: int  # the bits' code length under the model's own probabilities (same units)
    code_length: int  # cost less the side information: the bits' code length alone
    contexts: mixing.LevelContexts | None = None  # the level's mixing contexts, if kept
    features: np.ndarray | None = None  # its (M, 8) plane features, if kept (mixer version 3)


def learned_level(
    neighbours: np.ndarray, bits: np.ndarray, level: int, depth: int, start: StartPredict,
    tables: entropy.CdfTables, mode: Mode, decision: ProtectedDecision,
    buckets: np.ndarray | None = None,
    on_pass: Callable[[int, np.ndarray], None] | None = None,
) -> LearnedLevel:
    """Run the model and the safeguard on one level (the encoder's float work). With
    `buckets` (refine.py's state after the levels before, walked on) the level is also priced
    under refined probabilities. The network makes pass k + 1's logits (the encoder knows
    every pass's inputs) while this thread protects and prices pass k: on two threads the
    pool's thread would otherwise wait for that serial work. on_pass(k, indices): called with
    each pass's grid indices as soon as they are made (a view of the level's array, which
    later passes do not write)."""
    side_bits = _SIDE_BITS.get(mode, _body_bits)
    m = bits.shape[0]
    # Pass k's indices go to rows k*m.. of one array, and each pass is priced as it comes
    # (integer sums: the same total): no per-pass list to join, no whole-level temporaries.
    index = np.empty(N_PASSES * m, dtype=np.int16)  # |index| <= GRID_K
    bodies, risky, candidates, cost, refined = [], 0, 0, 0, 0
    pending = start(neighbours, bits, 0, level, depth)
    try:
        for k in range(N_PASSES):
            logits = pending.result()
            if k + 1 < N_PASSES:
                pending = start(neighbours, bits, k + 1, level, depth)
            protected = decision.protect_pass(logits, mode)
            index[k * m:(k + 1) * m] = _grid_index(protected.indices)
            if on_pass is not None:
                on_pass(k, index[k * m:(k + 1) * m])
            if buckets is None:
                cost += _code_length(bits[:, k], index[k * m:(k + 1) * m], tables)
            else:
                static, refined_pass = refine.code_lengths(bits[:, k], index[k * m:(k + 1) * m],
                                                           buckets, tables.cdfs[:, 1])
                cost += static
                refined += refined_pass
            # syndrome mode: the body's fields, which _pack_syndromes writes its own way
            bodies.append(protected.syndromes if mode is Mode.SYNDROME else protected.body)
            risky += protected.risky_count
            candidates += protected.candidate_count
    finally:
        pending.cancel()  # a no-op unless this thread's work raised (cancellation, say)
    static_cost = code_length = cost
    if buckets is not None:
        code_length = min(cost, refined)
    cost = code_length + (sum(side_bits(b) for b in bodies) << entropy.COST_FRACTION)
    return LearnedLevel(index, bodies, risky, candidates, cost, static_cost, code_length)


def estimate_level_cost(
    neighbours: np.ndarray, bits: np.ndarray, level: int, depth: int, predict: Predict,
    tables: entropy.CdfTables, decision: ProtectedDecision, rows: np.ndarray,
    buckets: np.ndarray | None = None,
) -> int:
    """The learned model's code length of a level (units as LearnedLevel.cost) estimated from
    some of its nodes, `rows` (`neighbours`: their rows of the level's neighbour table; the
    encoder's choice only: a level it then codes is computed in full). With `buckets`, the
    cheaper of the model's and the refined probabilities (walked on a copy: a sample does
    not advance the state)."""
    index = np.concatenate([_grid_index(decision.protect_pass(
        predict(neighbours, bits, k, level, depth), Mode.NONE).indices)
        for k in range(N_PASSES)])
    sample_bits = bits[rows].T.reshape(-1)
    if buckets is None:
        cost = _code_length(sample_bits, index, tables)
    else:
        cost = min(refine.code_lengths(sample_bits, index, buckets.copy(), tables.cdfs[:, 1]))
    return cost * bits.shape[0] // rows.size


def _code_length(coded: np.ndarray, index: np.ndarray, tables: entropy.CdfTables) -> int:
    """Ideal rANS code length of coded bits under their grid indices, in units of
    2^-entropy.COST_FRACTION bits (integers: exact sums)."""
    p0 = tables.cdfs[:, 1].astype(np.int64)  # per grid index
    length = entropy.code_length_table()
    cost = np.concatenate([length[p0], length[(1 << entropy.PRECISION) - p0]])
    # Count the bits of each (bit, table row) pair and weigh the counts: the same integer as
    # a cost lookup per bit, with one int32 per bit instead of several int64 arrays.
    rows = index.astype(np.int32)
    rows += GRID_K
    rows[np.asarray(coded, dtype=bool)] += p0.size  # a 1 bit: the second half of `cost`
    counts = np.bincount(rows, minlength=cost.size)
    return int(np.sum(counts * cost))


def learned_levels(
    codes: list[np.ndarray], bits: list[np.ndarray], depth: int, start: StartPredict,
    tables: entropy.CdfTables, mode: Mode, decision: ProtectedDecision,
) -> list[LearnedLevel]:
    """Every level with the learned model."""
    level_tables = octree.LevelTables()
    return [learned_level(level_tables.table_of(codes[level], level,
                                                bits[level - 1] if level else None),
                          bits[level], level, depth, start, tables, mode, decision)
            for level in range(depth)]


def static_stream(levels: list[LearnedLevel], bits: list[np.ndarray],
                  tables: entropy.CdfTables) -> bytes:
    """The static rANS stream of the levels the learned model codes (in level order; `bits`
    are those levels' occupancy): each bit under its grid index's CDF-table row."""
    # One int32 array of symbols and one of table rows, filled level by level: the coder
    # buffers what it is given until flush, and per-level arrays would be joined there, a
    # second copy of the largest arrays of the encode.
    total = sum(lv.indices.size for lv in levels)
    symbols, rows = np.empty(total, np.int32), np.empty(total, np.int32)
    start = 0
    for level, level_bits in zip(levels, bits, strict=True):
        stop = start + level.indices.size
        symbols[start:stop] = level_bits.T.reshape(-1)
        rows[start:stop] = level.indices
        start = stop
    rows += GRID_K
    encoder = entropy.Encoder(tables)
    encoder.encode(symbols, rows)
    del symbols, rows  # the encoder's reference is dropped at flush
    return encoder.flush()


def pack_learned(levels: list[LearnedLevel], bits: list[np.ndarray], tables: entropy.CdfTables,
                 mode: Mode, static: bool = True) -> CodedOccupancy:
    """The static rANS stream (static_stream; b"" with static=False, for an encoder that
    codes these bits otherwise) and one side-information record for the levels the learned
    model codes (in level order; `bits` are those levels' occupancy)."""
    bodies = [body for level in levels for body in level.bodies]
    pack = {Mode.NONE: lambda _: b"", Mode.SYNDROME: _pack_syndromes}.get(mode, _pack_bodies)
    return CodedOccupancy(
        data=static_stream(levels, bits, tables) if static else b"", side_info=pack(bodies),
        indices=np.concatenate([lv.indices for lv in levels]),
        risky_count=sum(lv.risky for lv in levels),
        candidate_count=sum(lv.candidates for lv in levels),
        per_level_nodes=[b.shape[0] for b in bits],
    )


def compress(
    codes: list[np.ndarray], bits: list[np.ndarray], depth: int, start: StartPredict,
    tables: entropy.CdfTables, mode: Mode, decision: ProtectedDecision,
) -> CodedOccupancy:
    """Every level with the learned model (one rANS stream)."""
    levels = learned_levels(codes, bits, depth, start, tables, mode, decision)
    return pack_learned(levels, bits, tables, mode)


@dataclass
class Decompressed:
    leaves: np.ndarray  # Morton codes of the decoded voxels
    indices: np.ndarray  # learned levels: the clamped grid indices used, coding order (int16)
    occupancy: np.ndarray  # learned levels: decoded bits, coding order
    adaptive_occupancy: np.ndarray  # adaptive levels: decoded bits, coding order
    neighbour_occupancy: np.ndarray  # neighbour-coded levels: decoded bits, coding order


def decompress(
    data: bytes, side_info: bytes, total_bits: int, depth: int, predict: Predict,
    tables: entropy.CdfTables, mode: Mode, bound: ErrorBound, decision: ProtectedDecision,
    verify: bool = True, adaptive_levels: tuple[bool, ...] | None = None,
    adaptive_data: bytes = b"", adaptive_total: int = 0, max_nodes: int | None = None,
    refined: bool = False, threads: int = 1, mixed_points: int = 0,
    neighbour_levels: tuple[bool, ...] | None = None, neighbour_data: bytes = b"",
    neighbour_total: int = 0, neighbour_version: int = 2, mixed_version: int = 2,
) -> Decompressed:
    """Leaf Morton codes, the clamped indices used and the decoded bits of each coder in
    coding order. The learned stream is static rANS, or with refined=True refine.py's
    adapted probabilities, or with mixed_points > 0 (the cloud's voxels) mixing.py's (its mixer
    `mixed_version`). Levels
    with adaptive_levels[l] set come from the adaptive stream (adaptive.py), those with
    neighbour_levels[l] set from the neighbour coder's (neighbour.py, its model
    `neighbour_version`, its tables sized by max_nodes, the header's point count), the others
    from the learned one. Never decodes more
    than `total_bits` learned, `adaptive_total` adaptive and `neighbour_total` neighbour-coded
    decisions (the encoder's counts) nor a level of more than `max_nodes` nodes (a level never
    has more nodes than the cloud has points): a decoder that goes past them stops with an
    error. verify=False (benchmarks only) falls
    back to the decoder's own indices where the safeguard reports a disagreement, to measure
    what an unprotected decoder would return. `threads`: for the neighbour tables and the count
    models' contexts (the network's own threads are its own); no result depends on it.

    Each learned pass's node count depends on every bit decoded before it, so once the first
    learned pass is through, a stream that stops making sense (side information, either rANS
    stream, node counts) is reported as a desynchronisation (VerificationError: corrupt, or
    numerics beyond the bound), not as malformed: the decoder cannot tell the two apart. Before
    it, everything decoded is exact integer work, so a stream that breaks is malformed."""
    adaptive_levels = tuple(adaptive_levels or (False,) * depth)
    neighbour_levels = tuple(neighbour_levels or (False,) * depth)
    use_adaptive = any(adaptive_levels)
    last_adaptive = max((lv for lv in range(depth) if adaptive_levels[lv]), default=-1)
    # the last level that needs a neighbour table (learned or neighbour-coded)
    last_tabled = max((lv for lv in range(depth) if not adaptive_levels[lv]), default=-1)
    if any(a and b for a, b in zip(adaptive_levels, neighbour_levels, strict=True)):
        raise ValueError("a level is either adaptive or neighbour-coded")  # the caller's
    neighbour_decoder: neighbour.Decoder | None = None
    if any(neighbour_levels):
        if max_nodes is None:
            raise ValueError("the neighbour coder's tables are sized by max_nodes")
        neighbour_decoder = neighbour.Decoder(neighbour_data, max_nodes, neighbour_version,
                                              lenient=not verify)
    decoder: entropy.Decoder | refine.Decoder | None = None
    mixed: mixing.Decoder | None = None
    if total_bits and mixed_points:
        mixed = mixing.Decoder(data, tables.cdfs[:, 1], mixed_points, lenient=not verify,
                               version=mixed_version)
    elif total_bits:  # refined: the learned bits under refine.py's adapted probabilities
        decoder = (refine.Decoder(data, tables.cdfs[:, 1], lenient=not verify) if refined
                   else entropy.Decoder(data, tables, lenient=not verify))
    reader = _SyndromeReader if mode is Mode.SYNDROME else _SideReader
    side = reader(side_info, mode,
                  (depth - sum(adaptive_levels) - sum(neighbour_levels)) * N_PASSES)
    model = adaptive.Model() if use_adaptive else None
    adaptive_decoder = adaptive.Decoder(adaptive_data) if use_adaptive else None
    codes = np.zeros(1, dtype=np.int64)
    level_tables, parent_bits = octree.LevelTables(threads), None
    above = None  # the level above's bits, whichever coder decoded them (version 2's slots)
    all_indices, all_bits, adaptive_bits, used, used_adaptive = [], [], [], 0, 0
    neighbour_bits, used_neighbour = [], 0
    learned_seen = False  # a learned pass decoded: later failures may be desynchronisation

    def fail(detail: str, exc: Exception | None = None) -> Exception:
        if learned_seen:
            return VerificationError(_desync(detail))
        return exc if exc is not None else ContainerError(f"malformed bitstream: {detail}")

    for level in range(depth):
        m = codes.size
        if max_nodes is not None and m > max_nodes:
            raise fail(f"{m} nodes at octree level {level}, more than the cloud's points")
        if adaptive_levels[level]:
            used_adaptive += N_PASSES * m
            if used_adaptive > adaptive_total:
                raise fail(f"more nodes than the adaptive stream codes at octree level {level}")
            try:
                occupancy = model.decode_level(adaptive_decoder)
            except ContainerError as exc:
                raise fail(str(exc), exc) from exc
            bits = adaptive.byte_bits(occupancy)
            adaptive_bits.append(bits.reshape(-1))
            chain = level < last_tabled
            if chain:
                # A learned or neighbour-coded level follows: keep the chain of neighbour
                # tables, each made from the last (a table after a table-less level would
                # need 26 binary searches per node, several times this).
                level_tables.table_of(codes, level, parent_bits)
            codes, above = octree.children(codes, bits), bits
            parent_bits = bits if chain else None
            continue
        if neighbour_levels[level]:
            used_neighbour += N_PASSES * m
            if used_neighbour > neighbour_total:
                raise fail(f"more nodes than the neighbour stream codes at octree level {level}")
            neighbours = level_tables.table_of(codes, level, parent_bits)
            shapes = mixing.neighbour_shapes(neighbours)  # the same for the eight passes
            slots = nodecontext.node_slots(above) if neighbour_version == 2 else None
            bits = np.zeros((m, N_PASSES), dtype=bool)
            for k in range(N_PASSES):
                contexts = mixing.pass_contexts(neighbours, bits, k, max_nodes, shapes=shapes,
                                                threads=threads)
                extras = None if slots is None else nodecontext.pass_extras(slots, bits, k)
                try:
                    bits[:, k] = neighbour_decoder.decode(contexts, k, extras) == 1
                except ContainerError as exc:
                    raise fail(str(exc), exc) from exc
                neighbour_bits.append(bits[:, k].copy())
            if level < last_adaptive:
                model.observe(adaptive.occupancy_bytes(bits))
            # this level's arrays go before the next level's table is made from this one's
            # (held into it, they were 11 MB of a 0.97 M-point sweep's decoder peak)
            del neighbours, shapes, slots, contexts, extras
            if level == last_tabled:
                level_tables.release()
            codes, parent_bits, above = octree.children(codes, bits), bits, bits
            continue
        used += N_PASSES * m
        if used > total_bits:
            raise fail(f"more nodes than the stream codes at octree level {level}")
        # Made from the previous level's table when that level was learned too (the same
        # integers as octree.neighbour_table, without its binary searches).
        neighbours = level_tables.table_of(codes, level, parent_bits)
        shapes = mixing.neighbour_shapes(neighbours) if mixed is not None else None
        slots = nodecontext.node_slots(above) if mixed is not None and mixed_version >= 2 \
            else None
        # version 3's plane features: from this level's table and codes, for the eight passes
        features = planes.level_features(neighbours, shapes, threads) \
            if mixed is not None and mixed_version == 3 else None
        bits = np.zeros((m, N_PASSES), dtype=bool)
        for k in range(N_PASSES):
            logits = predict(neighbours, bits, k, level, depth)
            try:
                indices = decision.resolve_pass(logits, side.next(m), mode, bound, verify)
                index = _grid_index(indices)
                if mixed is not None:
                    contexts = mixing.pass_contexts(neighbours, bits, k, mixed_points,
                                                    shapes=shapes, threads=threads)
                    extras = None if slots is None else nodecontext.pass_extras(slots, bits, k)
                    bits[:, k] = mixed.decode(
                        index + GRID_K, contexts, k, extras,
                        None if features is None else np.ascontiguousarray(features[:, k])) == 1
                else:
                    bits[:, k] = decoder.decode(index + GRID_K) == 1
            except ContainerError as exc:
                raise _stream_error(exc, mode, first_pass=not learned_seen) from exc
            learned_seen = True
            all_indices.append(index.astype(np.int16))  # |index| <= GRID_K
            all_bits.append(bits[:, k].copy())
        if level < last_adaptive:
            model.observe(adaptive.occupancy_bytes(bits))
        # (as the neighbour levels')
        del neighbours, shapes, slots, features, logits, indices, index
        if mixed is not None:
            del contexts, extras
        if level == last_tabled:  # no table needed after: free the largest one early
            level_tables.release()
        codes, parent_bits, above = octree.children(codes, bits), bits, bits
    if used != total_bits:
        raise fail(f"decoded {used} occupancy bits but the stream codes {total_bits}")
    if used_adaptive != adaptive_total:
        raise fail(f"decoded {used_adaptive} adaptive occupancy bits but the stream codes "
                   f"{adaptive_total}")
    if used_neighbour != neighbour_total:
        raise fail(f"decoded {used_neighbour} neighbour-coded occupancy bits but the stream "
                   f"codes {neighbour_total}")
    try:
        side.finish()
        for learned_decoder in (decoder, mixed, neighbour_decoder):
            if learned_decoder is not None:
                learned_decoder.finish()
        if adaptive_decoder is not None:
            adaptive_decoder.finish()
    except ContainerError as exc:
        raise fail(str(exc), exc) from exc
    return Decompressed(
        leaves=codes,
        indices=np.concatenate(all_indices) if all_indices else np.zeros(0, np.int16),
        occupancy=np.concatenate(all_bits) if all_bits else np.zeros(0, bool),
        adaptive_occupancy=(np.concatenate(adaptive_bits) if adaptive_bits
                            else np.zeros(0, bool)),
        neighbour_occupancy=(np.concatenate(neighbour_bits) if neighbour_bits
                             else np.zeros(0, bool)),
    )


def _syndrome_bits(parts: SyndromeParts | None) -> int:
    """Bits of one pass in _pack_syndromes: presence bit, gamma counts, syndrome bits."""
    if parts is None:
        return 1
    return 1 + _gamma_bits(len(parts.sent)) + sum(_gamma_bits(m + 1) + m
                                                   for m in parts.rows.tolist())


def _gamma_bits(n: int) -> int:
    return 2 * (n.bit_length() - 1) + 1


def _body_bits(body: bytes) -> int:
    """Bits of one pass in _pack_bodies: its bitmap bit, then its length and body."""
    return 1 + (8 * (len(encode_varint(len(body))) + len(body)) if body else 0)


_SIDE_BITS = {Mode.NONE: lambda _: 0, Mode.SYNDROME: _syndrome_bits}


def _stream_error(exc: Exception, mode: Mode, first_pass: bool) -> Exception:
    """Malformed where nothing this decoder computed could explain it; else desynchronised."""
    if first_pass and mode is not Mode.NONE:
        return exc
    return VerificationError(_desync(str(exc)))


def _desync(detail: str) -> str:
    return (f"point cloud decoding desynchronised: {detail}. Either the stream is corrupt or the "
            "decoder's numerics differ from the encoder's beyond the stream's error bound "
            "(decode with a matching profile or re-encode with protection)")


def _pack_bodies(bodies: list[bytes]) -> bytes:
    present = np.array([bool(b) for b in bodies])
    out = bytearray(np.packbits(present, bitorder="little").tobytes())
    for body in bodies:
        if body:
            out += encode_varint(len(body)) + body
    return bytes(out)


_GAMMA_MAX = 40  # bits of an Elias-gamma value: any honest count is far below 2^40


def _write_gamma(writer: BitWriter, n: int) -> None:
    """Elias gamma of n >= 1: floor(log2 n) in unary, then n's bits below its top one."""
    width = n.bit_length() - 1
    writer.write_unary(np.array([width]))
    if width:
        writer.write_int(n - (1 << width), width)


def _read_gamma(reader: _FieldReader) -> int:
    width = reader.unary(_GAMMA_MAX)
    return (1 << width) + reader.int(width)


def _pack_syndromes(passes: list[SyndromeParts | None]) -> bytes:
    """The syndrome fields of all passes as one bit stream (see the module docstring)."""
    writer = BitWriter()
    for parts in passes:
        writer.write_int(0 if parts is None else 1, 1)
        if parts is None:
            continue
        rows = parts.rows.tolist()
        _write_gamma(writer, len(rows))
        for m in rows:
            _write_gamma(writer, m + 1)
        for sent, m in zip(parts.sent, rows, strict=True):
            writer.write_int(sent, m)
    return writer.getvalue()


class _FieldReader:
    """A bit stream (LSB first in each byte, as BitWriter writes) read one field at a time:
    the packed syndromes' fields are a few bits each, where BitReader's vectorized reads
    cost far more than they read (~100 us a pass). The bits are one byte each (0 or 1), so
    that a unary code's end is one bytes.find and a field one int(); nothing is read past
    the end, and every read's work is its own length."""

    _DIGITS = bytes.maketrans(b"\x00\x01", b"01")

    def __init__(self, data: bytes) -> None:
        self._bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").tobytes()
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._bits) - self._pos

    def unary(self, most: int) -> int:
        """A count of at most `most` written as that many ones and a zero."""
        end = self._bits.find(b"\x00", self._pos, self._pos + most + 1)
        if end < 0:
            raise ContainerError("malformed bitstream: occupancy side information is "
                                 "truncated or has an oversized count")
        count, self._pos = end - self._pos, end + 1
        return count

    def int(self, width: int) -> int:
        """An unsigned `width`-bit field (0 for width 0)."""
        if width > self.remaining:
            raise ContainerError("malformed bitstream: occupancy side information is "
                                 "truncated")
        field = self._bits[self._pos:self._pos + width]
        self._pos += width
        return int(field[::-1].translate(self._DIGITS), 2) if width else 0

    def finish(self) -> None:
        """Only the zero bits that pad the last byte may be left."""
        if self.remaining >= 8 or b"\x01" in self._bits[self._pos:]:
            raise ContainerError("malformed bitstream: occupancy side information: side "
                                 "information has trailing bits after its fields")


class _SyndromeReader:
    """Reads each pass's syndrome fields back from the packed bit stream (_pack_syndromes)."""

    def __init__(self, stream: bytes, mode: Mode, passes: int):
        del mode  # syndrome only
        self.reader, self.passes, self.index = _FieldReader(stream), passes, 0

    def next(self, size: int) -> bytes | SyndromeParts:
        """The next pass's fields (b"": nothing risky) for resolve_pass; `size`: its bits."""
        self.index += 1
        if self.index > self.passes:
            raise ContainerError("malformed bitstream: more occupancy passes than the depth")
        if not self.reader.int(1):
            return b""
        n_blocks = _read_gamma(self.reader)
        if n_blocks > size:
            raise ContainerError("malformed bitstream: more syndrome blocks than bits in an "
                                 "occupancy pass")
        rows = [_read_gamma(self.reader) - 1 for _ in range(n_blocks)]
        if sum(rows) > self.reader.remaining:
            raise ContainerError("malformed bitstream: occupancy side information is "
                                 "truncated")
        return SyndromeParts(np.array(rows, dtype=np.int64),
                             [self.reader.int(m) for m in rows])

    def finish(self) -> None:
        self.reader.finish()


class _SideReader:
    """Splits the side information back into per-pass safeguard bodies (see _pack_bodies)."""

    def __init__(self, stream: bytes, mode: Mode, passes: int):
        self.stream, self.mode = stream, mode
        self.present = np.zeros(passes, dtype=bool)
        self.pos, self.index = 0, 0
        if mode is not Mode.NONE:
            size = (passes + 7) // 8
            if len(stream) < size:
                raise ContainerError("malformed bitstream: occupancy side information is "
                                     "shorter than its pass bitmap")
            bits = np.unpackbits(np.frombuffer(stream[:size], np.uint8), bitorder="little")
            if bits[passes:].any():
                raise ContainerError("malformed bitstream: occupancy pass bitmap has bits set "
                                     "past the last pass")
            self.present, self.pos = bits[:passes].astype(bool), size

    def next(self, size: int) -> bytes:
        del size  # the bodies carry their own counts
        if self.mode is Mode.NONE:
            return b""
        present = bool(self.present[self.index]) if self.index < self.present.size else False
        self.index += 1
        if not present:
            return b""
        try:
            length, pos = decode_varint(self.stream, self.pos)
        except (ValueError, IndexError) as exc:
            raise ContainerError("malformed bitstream: occupancy side information is "
                                 "truncated") from exc
        if length == 0 or pos + length > len(self.stream):
            raise ContainerError("malformed bitstream: occupancy side information is truncated")
        self.pos = pos + length
        return self.stream[pos:self.pos]

    def finish(self) -> None:
        if self.mode is not Mode.NONE and self.pos != len(self.stream):
            raise ContainerError("malformed bitstream: occupancy side information has "
                                 f"{len(self.stream) - self.pos} bytes after its last pass")
        if self.mode is Mode.NONE and self.stream:
            raise ContainerError("malformed bitstream: mode none carries no side information")
