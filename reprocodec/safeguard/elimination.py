"""GF(2) eliminations of the syndrome mode, all blocks in one call: `block_rows` (encoder) and
`block_solve` (decoder), mirrored; `plan_blocks` (encoder) picks the block layout.

Block b's columns are H's columns for its members (keys[starts[b]:starts[b + 1]], see
`syndrome`), as vectors of row bits: bit r = H[r, column]. Both sides keep an XOR basis keyed
by each vector's LOWEST set bit. With that key, the basis vectors' pivots are distinct, every
nonzero combination's lowest bit is the smallest pivot in it, and so the first m rows already
separate all columns exactly when every pivot is below m: the encoder's fewest rows for full
column rank is max(pivot) + 1, found in one pass.

Two implementations with one contract: `numba` kernels (installed with the server extra; a few
ms per million-element tensor) and plain Python ints (the reference, used when numba is absent,
and by the tests to check the kernels bit for bit). Integer arithmetic only: nothing here can
round differently between platforms.
"""

from __future__ import annotations

import numpy as np

from . import native
from .errors import SafeguardError
from .hashing import hash_words
from .native import AMBIGUOUS, INCONSISTENT, SOLVED, TOO_FEW_ROWS
from .syndrome import choose_block_count, decoder_work, split_blocks, to_int, words_for, work_budget

_ERRORS = {
    INCONSISTENT: "syndrome is inconsistent: decoder is outside the error bound",
    AMBIGUOUS: "syndrome is ambiguous: decoder is outside the error bound",
    TOO_FEW_ROWS: "syndrome block has more candidates than rows: decoder is outside the "
                   "error bound",
}


# ---------------------------------------------------------------- Python reference ----------

def _columns(keys: np.ndarray, n_bits: int) -> list[int]:
    cols = [0] * keys.size
    for word in range(words_for(n_bits)):
        for j, value in enumerate(hash_words(keys, word).tolist()):
            cols[j] |= value << (64 * word)
    mask = (1 << n_bits) - 1
    return [c & mask for c in cols]


def _insert(basis: dict[int, tuple[int, int]], vector: int, combo: int) -> int:
    """Reduce vector by the basis (keyed by lowest set bit); store it if independent.
    Returns its pivot, or -1 if it reduced to zero."""
    while vector:
        low = (vector & -vector).bit_length() - 1
        if low not in basis:
            basis[low] = (vector, combo)
            return low
        base_vec, base_combo = basis[low]
        vector ^= base_vec
        combo ^= base_combo
    return -1


def _rows_py(keys: np.ndarray) -> int:
    c = keys.size
    if c == 0:
        return 0
    basis: dict[int, tuple[int, int]] = {}
    top = -1
    for col in _columns(keys, c + 64):
        pivot = _insert(basis, col, 0)
        if pivot < 0:
            raise SafeguardError("syndrome: could not reach full rank")  # probability ~2^-64
        top = max(top, pivot)
    return max(top + 1, c)


def _solve_py(keys: np.ndarray, m: int, residual: int) -> tuple[int, list[int]]:
    c = keys.size
    if c > m:
        return TOO_FEW_ROWS, []
    basis: dict[int, tuple[int, int]] = {}
    independent = True
    for j, col in enumerate(_columns(keys, m)):
        independent &= _insert(basis, col, 1 << j) >= 0
    x, s = 0, residual
    while s:
        low = (s & -s).bit_length() - 1
        if low not in basis:
            return INCONSISTENT, []
        base_vec, base_combo = basis[low]
        s ^= base_vec
        x ^= base_combo
    # Dependent columns with a consistent syndrome: x = 0 (the decoder's own indices) is one
    # solution of several; only an x that changes something would be a guess.
    if x and not independent:
        return AMBIGUOUS, []
    return SOLVED, [j for j in range(c) if x >> j & 1]


def block_rows_python(keys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.array([_rows_py(keys[starts[b]:starts[b + 1]]) for b in range(starts.size - 1)],
                    dtype=np.int64)


def block_solve_python(keys: np.ndarray, starts: np.ndarray, rows: np.ndarray,
                       residual: np.ndarray) -> np.ndarray:
    flips = np.zeros(keys.size, dtype=bool)
    for b in range(starts.size - 1):
        lo, hi = int(starts[b]), int(starts[b + 1])
        s = to_int(residual[b])
        if lo == hi and s == 0:
            continue
        status, picked = _solve_py(keys[lo:hi], int(rows[b]), s)
        if status != SOLVED:
            raise SafeguardError(_ERRORS[status])
        flips[[lo + j for j in picked]] = True
    return flips


# ---------------------------------------------------------------- dispatch ------------------

def block_rows_native(keys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    out = np.zeros(starts.size - 1, dtype=np.int64)
    if native.rows_kernel(keys.astype(np.int64), starts.astype(np.int64), out) >= 0:
        raise SafeguardError("syndrome: could not reach full rank")
    return out


def block_solve_native(keys: np.ndarray, starts: np.ndarray, rows: np.ndarray,
                       residual: np.ndarray) -> np.ndarray:
    flips = np.zeros(keys.size, dtype=bool)
    if residual.shape[1] == 0:  # every block has zero rows
        residual = np.zeros((residual.shape[0], 1), dtype=np.uint64)
    status = native.solve_kernel(keys.astype(np.int64), starts.astype(np.int64),
                         rows.astype(np.int64), np.ascontiguousarray(residual, np.uint64), flips)
    if status != SOLVED:
        raise SafeguardError(_ERRORS[status])
    return flips


def block_rows(keys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Encoder: per block, the fewest rows of H whose restriction to the block's columns has
    full column rank (at least the column count)."""
    return (block_rows_native if native.AVAILABLE else block_rows_python)(keys, starts)


def block_solve(keys: np.ndarray, starts: np.ndarray, rows: np.ndarray,
                residual: np.ndarray) -> np.ndarray:
    """Decoder: which columns (as a mask over keys) XOR to each block's residual syndrome.
    Raises SafeguardError where no unique answer exists (decoder outside the bound).

    A block with more decoder candidates than rows is refused here, for all blocks before any
    elimination runs, so that the work stays within syndrome.decoder_work of the rows (the
    kernels check it again per block)."""
    if np.any(np.diff(starts) > rows):
        raise SafeguardError(_ERRORS[TOO_FEW_ROWS])
    solve = block_solve_native if native.AVAILABLE else block_solve_python
    return solve(keys, starts, rows, residual)


def plan_blocks(n: int, zone: np.ndarray) -> tuple[int, np.ndarray]:
    """Encoder: (n_blocks, rows). choose_block_count's layout, its block count doubled until
    the decoder's work for the stream fits syndrome.work_budget(n) (only lumpy or very dense
    zones need a doubling; one block per element always fits), so that every stream protect
    writes passes the decoder's check_rows."""
    n_blocks = choose_block_count(n, zone)
    while n_blocks:
        _, keys, starts = split_blocks(zone, n_blocks)
        rows = block_rows(keys, starts)
        if decoder_work(n, n_blocks, rows) <= work_budget(n):
            return n_blocks, rows
        if n_blocks == n:  # unreachable: one element per block costs 2n (see syndrome)
            raise SafeguardError("syndrome: no block layout fits the decoder's work budget")
        n_blocks = min(n, 2 * n_blocks)
    return 0, np.zeros(0, dtype=np.int64)
