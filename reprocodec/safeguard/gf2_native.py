"""numba kernels of the syndrome mode: `syndromes_kernel` for `syndrome.block_syndromes`, and
`rows_kernel` / `solve_kernel` for `elimination`, with the same contracts as their numpy /
Python-int references (the tests check them bit for bit). Importing this module needs numba,
which the server extra installs; compiled code is cached beside the module (or under
NUMBA_CACHE_DIR) after the first call.
"""

from __future__ import annotations

import numba
import numpy as np

from .syndrome import AMBIGUOUS, HASH_CONSTANTS, INCONSISTENT, SOLVED, TOO_FEW_ROWS

GOLDEN, WORD_KEY, SALT, M1, M2 = HASH_CONSTANTS
ONE, ZERO = np.uint64(1), np.uint64(0)
# Index of a power of two by de Bruijn multiplication (exact integer arithmetic).
DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
LOW_BIT_TABLE = np.zeros(64, dtype=np.int64)
for i in range(64):
    LOW_BIT_TABLE[((1 << i) * int(DEBRUIJN) % (1 << 64)) >> 58] = i

jit = numba.njit(cache=True, nogil=True)


@jit
def lowest_bit(x):
    return LOW_BIT_TABLE[((x & (~x + ONE)) * DEBRUIJN) >> np.uint64(58)]


@jit
def column(key, n_bits, out):
    """H's column for a grid row: splitmix64 words, exactly as syndrome.hash_words."""
    for w in range(out.size):
        x = np.uint64(key) * GOLDEN
        x += np.uint64(w + 1) * WORD_KEY + SALT
        x ^= x >> np.uint64(30)
        x *= M1
        x ^= x >> np.uint64(27)
        x *= M2
        x ^= x >> np.uint64(31)
        out[w] = x
    tail = n_bits - 64 * (out.size - 1)
    if out.size and tail < 64:
        out[out.size - 1] &= (ONE << np.uint64(tail)) - ONE


@jit
def syndromes_kernel(k, n_blocks, n_words, out):
    """out[b] ^= column(row) for every odd k in block b: one pass in grid order, one hash per
    grid row."""
    n = k.size
    column_words = np.empty(n_words, np.uint64)
    for row in range((n + n_blocks - 1) // n_blocks):
        column(row, 64 * n_words, column_words)
        base = row * n_blocks
        for b in range(min(n_blocks, n - base)):
            if k[base + b] & 1:
                for w in range(n_words):
                    out[b, w] ^= column_words[w]


@jit
def insert(vec, combo, basis, combos, slot, count):
    """Reduce vec (and its combo) by the basis; store it if independent. Returns the pivot,
    or -1 when it reduced to ZERO. slot[p] = row of basis holding pivot p, or -1."""
    w = 0
    while w < vec.size:
        if vec[w] == ZERO:
            w += 1
            continue
        p = 64 * w + lowest_bit(vec[w])
        s = slot[p]
        if s < 0:
            slot[p] = count
            basis[count, :] = vec
            combos[count, :] = combo
            return p
        for u in range(w, vec.size):  # a basis vector has no bits below its pivot
            vec[u] ^= basis[s, u]
        for u in range(combo.size):
            combo[u] ^= combos[s, u]
    return -1


@jit
def rows_kernel(keys, starts, out):
    for b in range(starts.size - 1):
        lo, hi = starts[b], starts[b + 1]
        c = hi - lo
        if c == 0:
            out[b] = 0
            continue
        n_bits = c + 64
        n_words = (n_bits + 63) // 64
        basis = np.zeros((c, n_words), np.uint64)
        nocombo = np.zeros((c, 0), np.uint64)
        slot = np.full(n_bits, -1, np.int64)
        vec = np.empty(n_words, np.uint64)
        combo = np.empty(0, np.uint64)
        top = -1
        for j in range(c):
            column(keys[lo + j], n_bits, vec)
            p = insert(vec, combo, basis, nocombo, slot, j)
            if p < 0:
                return b  # no full rank within c + 64 rows (probability ~2^-64)
            top = max(top, p)
        out[b] = max(top + 1, c)
    return -1


@jit
def solve_kernel(keys, starts, rows, residual, flips):
    for b in range(starts.size - 1):
        lo, hi = starts[b], starts[b + 1]
        c, m = hi - lo, rows[b]
        n_words = (m + 63) // 64
        if c == 0:
            for w in range(n_words):
                if residual[b, w] != ZERO:
                    return INCONSISTENT
            continue
        if c > m:
            return TOO_FEW_ROWS
        c_words = (c + 63) // 64
        basis = np.zeros((c, n_words), np.uint64)
        combos = np.zeros((c, c_words), np.uint64)
        slot = np.full(max(m, 1), -1, np.int64)
        vec = np.empty(n_words, np.uint64)
        combo = np.zeros(c_words, np.uint64)
        count = 0
        independent = True
        for j in range(c):
            column(keys[lo + j], m, vec)
            combo[:] = ZERO
            combo[j // 64] = ONE << np.uint64(j % 64)
            if insert(vec, combo, basis, combos, slot, count) >= 0:
                count += 1
            else:
                independent = False
        s = residual[b, :n_words].copy()
        x = np.zeros(c_words, np.uint64)
        w = 0
        while w < n_words:
            if s[w] == ZERO:
                w += 1
                continue
            r = slot[64 * w + lowest_bit(s[w])]
            if r < 0:
                return INCONSISTENT
            for u in range(w, n_words):
                s[u] ^= basis[r, u]
            for u in range(c_words):
                x[u] ^= combos[r, u]
        nonzero = False
        for u in range(c_words):
            nonzero = nonzero or x[u] != ZERO
        if nonzero and not independent:
            return AMBIGUOUS
        for j in range(c):
            if (x[j // 64] >> np.uint64(j % 64)) & ONE:
                flips[lo + j] = True
    return SOLVED

