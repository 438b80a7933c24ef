"""GF(2) syndrome of index parities: the `syndrome` mode's machinery (ours, beyond the paper).

For an element near threshold j, the only indices in play are j and j + 1, and their parity
tells them apart. The encoder sends s = H * parity(k_enc) over GF(2); the decoder knows the
parity of every element outside its candidate set C_d (its own index is right there), XORs
those out and solves H[:, C_d] x = s' for the rest.

H is split into independent blocks so that each solve is small. The tensor is laid out as a
grid of n_blocks columns: element i sits in grid row i // n_blocks, block i % n_blocks
(interleaved, so that a contiguous run of candidates, e.g. a flat image region whose scale sits
near one threshold, spreads over all blocks). Within a block, element i's column of H is a
fixed 64-bit integer hash of (grid row, word): no platform RNG, and the same column for every
block, which is harmless (blocks are separate systems) and makes the syndromes one XOR-reduce
over the grid instead of a scatter. Block b's matrix has m_b rows. The encoder picks m_b so that
the columns of its 2e-zone C_2 in that block are linearly independent; since C_d is a subset of
C_2 whenever the bound holds, every decoder solve then has exactly one solution. The eliminations
that find m_b and solve the decoder's systems live in `elimination`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import native
from .errors import MalformedSideInfo
from .hashing import hash_words

# Mean number of encoder candidates per block. Larger blocks send fewer per-block row counts
# (about 7 bits each) but make the O(c^2) elimination slower.
TARGET_CANDIDATES_PER_BLOCK = 64
# A block's matrix is at most this many rows. The encoder never needs more than its candidate
# count + 64; a legitimate stream (about 64 candidates per block) is far below it, and the cap
# bounds what a hostile stream can make the decoder allocate (rows x candidates bits).
MAX_BLOCK_ROWS = 1 << 14
MAX_BLOCK_CANDIDATES = MAX_BLOCK_ROWS - 64
# The most work a decoder does for one syndrome stream, in 64-bit word operations (up to a small
# constant factor; see decoder_work): WORK_PER_ELEMENT per tensor element plus WORK_FLOOR (a few
# ms, so that small tensors with lumpy zones keep their natural blocks). An honest encoder
# (protect) doubles its block count until its stream fits, which is always possible: with one
# block per element every block holds at most one element, in grid row 0, whose column's lowest
# set bit is bit 0, so it needs 1 row: 2n in all (tests check both facts). The
# usual stream (about 64 candidates per block, 1e-3 to 1e-2 of the tensor) costs 1 to 5 per
# element. A decoder refuses a stream over the budget before it reads a syndrome bit.
WORK_PER_ELEMENT = 32
WORK_FLOOR = 1 << 22


def words_for(bits: int) -> int:
    return -(-bits // 64)


def choose_block_count(n: int, zone: np.ndarray) -> int:
    """About TARGET_CANDIDATES_PER_BLOCK zone elements per block, and never a block over
    MAX_BLOCK_CANDIDATES (doubled until so: only a zone with a period of the block count could
    pile up in one block; with n blocks every block holds one element)."""
    if zone.size == 0:
        return 0
    n_blocks = int(min(n, -(-zone.size // TARGET_CANDIDATES_PER_BLOCK)))
    while n_blocks < n and np.bincount(zone % n_blocks).max() > MAX_BLOCK_CANDIDATES:
        n_blocks = min(n, 2 * n_blocks)
    return n_blocks


def split_blocks(elements: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group sorted element numbers by block: (order, keys, starts).

    elements[order] runs block by block (ascending within a block), keys are their grid rows
    (the H column keys) and block b's members are positions starts[b]:starts[b + 1].
    """
    block = elements % n_blocks
    order = np.argsort(block, kind="stable")
    starts = np.searchsorted(block[order], np.arange(n_blocks + 1))
    return order, (elements[order] // n_blocks).astype(np.int64), starts.astype(np.int64)


def block_syndromes(k: np.ndarray, n_blocks: int, rows: np.ndarray | Sequence[int]) -> np.ndarray:
    """s_b = H_b * parity restricted to block b, as (n_blocks, words) little-endian uint64 words
    (bit r of the row = row r of H), zero above rows[b].

    k holds the indices (int64); only their parity counts. In the grid layout block b is grid
    column b and all blocks share the row hashes: the numba kernel (`native`) hashes each grid
    row once and XORs it into the blocks of its odd elements; without numba each word is one
    masked XOR-reduce down the grid's columns.
    """
    rows_arr = np.asarray(rows, dtype=np.int64)
    n_words = words_for(int(rows_arr.max(initial=0)))
    out = np.zeros((n_blocks, n_words), dtype=np.uint64)
    if n_words == 0:
        return out
    k = np.ascontiguousarray(k, dtype=np.int64).ravel()
    if native.AVAILABLE:
        by_word = np.zeros((n_words, n_blocks), dtype=np.uint64)
        native.syndromes_kernel(k, n_blocks, n_words, by_word)
        out[:] = by_word.T
    else:
        n = k.size
        grid_rows = -(-n // n_blocks)
        odd = np.zeros(grid_rows * n_blocks, dtype=bool)
        np.bitwise_and(k, 1, out=odd[:n], casting="unsafe")
        odd = odd.reshape(grid_rows, n_blocks)
        keys = np.arange(grid_rows, dtype=np.uint64)
        zero = np.uint64(0)
        for word in range(n_words):
            masked = np.where(odd, hash_words(keys, word)[:, None], zero)
            out[:, word] = np.bitwise_xor.reduce(masked, axis=0)
    # Clear the bits at and above each block's row count.
    bit = np.arange(n_words, dtype=np.int64)[None, :] * 64
    keep = np.clip(rows_arr[:, None] - bit, 0, 64)
    full = keep == 64
    mask = np.where(full, np.uint64(0xFFFF_FFFF_FFFF_FFFF),
                    (np.uint64(1) << keep.astype(np.uint64) % np.uint64(64)) - np.uint64(1))
    return out & mask


def to_int(words: np.ndarray) -> int:
    """Little-endian uint64 words as a Python int (the bit writer's unit)."""
    return int.from_bytes(np.ascontiguousarray(words, dtype="<u8").tobytes(), "little")


def to_words(value: int, n_words: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(8 * n_words, "little"), dtype="<u8").astype(np.uint64)


def work_budget(n: int) -> int:
    return WORK_PER_ELEMENT * n + WORK_FLOOR


def decoder_work(n: int, n_blocks: int, rows: np.ndarray) -> int:
    """Upper bound (up to a constant) on the decoder's work for a stream with these blocks,
    computed from the row counts alone. Syndromes: one hash word per grid cell and word of the
    tallest block, which also bounds the (n_blocks, words) arrays. Elimination of block b: at
    most m_b candidates (more is refused before its elimination starts: too few rows), each
    reduced against at most m_b basis vectors of words(m_b) words. Exact integers, so the
    encoder's check and the decoder's agree everywhere."""
    if n_blocks == 0:
        return 0
    values, counts = np.unique(np.asarray(rows, dtype=np.int64), return_counts=True)
    grid_rows = -(-n // n_blocks)
    total = grid_rows * n_blocks * words_for(int(values[-1]))
    for m, c in zip(values.tolist(), counts.tolist(), strict=True):
        total += c * m * m * words_for(m)
    return total


def check_rows(rows: np.ndarray, n: int, n_blocks: int, bits_left: int) -> None:
    """Decoder: refuse (MalformedSideInfo) per-block row counts that no honest encoder writes,
    before any syndrome is read or elimination runs. An honest block with c encoder candidates
    has at most c + 64 rows (full rank is found within c + 64 rows, or protect fails), and
    c <= min(grid rows, MAX_BLOCK_CANDIDATES); so the rows of all blocks sum to at most
    n + 64 n_blocks; the syndrome bits must all be there; and protect keeps decoder_work within
    work_budget(n)."""
    if rows.size == 0:
        return
    grid_rows = -(-n // n_blocks)
    if int(rows.max()) > min(grid_rows + 64, MAX_BLOCK_ROWS):
        raise MalformedSideInfo("side information has an impossible syndrome size for a block")
    total = int(rows.sum())  # each below 2**14 now: no overflow
    if total > bits_left:
        raise MalformedSideInfo("side information truncated (syndrome bits)")
    if total > n + 64 * n_blocks:
        raise MalformedSideInfo("side information has more syndrome rows than elements")
    work, budget = decoder_work(n, n_blocks, rows), work_budget(n)
    if work > budget:
        raise MalformedSideInfo(
            f"side information asks for {work} units of syndrome work; no encoder writes more "
            f"than {budget} for {n} elements")
