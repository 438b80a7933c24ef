"""numba kernels of the safeguard, each with the same contract as a numpy / Python-int reference
that the tests check it against bit for bit: `uniform_kernel` (quantizer), `syndromes_kernel`
(syndrome.block_syndromes), `rows_kernel` / `solve_kernel` (elimination).

numba comes with the server extra. Without it (the light client install), or with
REPROCODEC_PURE_PYTHON_GF2=1, AVAILABLE is False and the references run. Compiled code is cached
beside this module (or under NUMBA_CACHE_DIR) after the first call; `warm_up` triggers it.
"""

from __future__ import annotations

import os

import numpy as np

from ..kernels import compiled, numba
from .hashing import GOLDEN, M1, M2, SALT, WORD_KEY

# Outcomes of one block's decoder solve (both elimination implementations).
SOLVED, INCONSISTENT, AMBIGUOUS, TOO_FEW_ROWS = 0, 1, 2, 3

AVAILABLE = numba is not None and not os.environ.get("REPROCODEC_PURE_PYTHON_GF2")

ONE, ZERO = np.uint64(1), np.uint64(0)
# Index of a power of two by de Bruijn multiplication (exact integer arithmetic).
DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
LOW_BIT_TABLE = np.zeros(64, dtype=np.int64)
for i in range(64):
    LOW_BIT_TABLE[((1 << i) * int(DEBRUIJN) % (1 << 64)) >> 58] = i

FEW_BLOCKS = 8  # syndromes_kernel's layouts: at 16 blocks the grid-order pass was faster
HASH_CHUNK = 256  # grid rows hashed at a time by the few-blocks layout

if AVAILABLE:
    jit = compiled

    @jit
    def uniform_kernel(v, offset, step, radius, k, near):
        """One pass of DecisionQuantizer's uniform grid (see quantizer._uniform_reference):
        k[i] = #{thresholds below v[i]}, and near[:count] = the positions (ascending) within
        radius of their nearest threshold. Returns count, or -1 if some value is not finite or
        beyond 2**52 grid steps (where the grid arithmetic stops being exact)."""
        scaled = not (offset == 0.0 and step == 1.0)
        count = 0
        for i in range(v.size):
            u = np.float64(v[i])
            if scaled:
                u = (u - offset) / step
            if not abs(u) < 4503599627370496.0:  # false for NaN too
                return -1
            j = np.floor(u)
            f = u - j
            k[i] = np.int64(j) + (1 if f > 0.5 else 0)
            d = abs(f - 0.5)
            if scaled:
                d *= step
            if d <= radius:
                near[count] = i
                count += 1
        return count

    @jit
    def lowest_bit(x):
        return LOW_BIT_TABLE[((x & (~x + ONE)) * DEBRUIJN) >> np.uint64(58)]

    @jit
    def word_hash(key, w):
        """Word w of H's column for a grid row: splitmix64, exactly as syndrome.hash_words."""
        x = np.uint64(key) * GOLDEN
        x += np.uint64(w + 1) * WORD_KEY + SALT
        x ^= x >> np.uint64(30)
        x *= M1
        x ^= x >> np.uint64(27)
        x *= M2
        x ^= x >> np.uint64(31)
        return x

    @jit
    def column(key, n_bits, out):
        """H's column for a grid row: its words, the last cut to n_bits."""
        for w in range(out.size):
            out[w] = word_hash(key, w)
        tail = n_bits - 64 * (out.size - 1)
        if out.size and tail < 64:
            out[out.size - 1] &= (ONE << np.uint64(tail)) - ONE

    @jit
    def syndromes_kernel(k, n_blocks, n_words, out):
        """out[w, b] ^= word w of column(row) for every odd k in block b. XOR is exact in any
        order, so two layouts give the same words: with many blocks, one pass in grid order,
        one hash per grid row, branch-free (the parity becomes an all-ones or all-zeros mask)
        so the inner loop over blocks vectorizes; with at most FEW_BLOCKS (a point-cloud
        pass's few risky logits: a grid row of one to three elements, and a hash each), the
        hashes of HASH_CHUNK rows at a time, a loop that vectorizes, then each block's XOR down
        them (~3 ns an element instead of 5-20)."""
        n = k.size
        rows = (n + n_blocks - 1) // n_blocks
        if n_blocks <= FEW_BLOCKS:
            hashes = np.empty(HASH_CHUNK, np.uint64)
            for w in range(n_words):
                for start in range(0, rows, HASH_CHUNK):
                    stop = min(rows, start + HASH_CHUNK)
                    for row in range(start, stop):
                        hashes[row - start] = word_hash(row, w)
                    for b in range(n_blocks):
                        acc = ZERO
                        for row in range(start, min(stop, (n - b + n_blocks - 1) // n_blocks)):
                            odd = ZERO - np.uint64(k[row * n_blocks + b] & 1)
                            acc ^= hashes[row - start] & odd
                        out[w, b] ^= acc
            return
        column_words = np.empty(n_words, np.uint64)
        for row in range(rows):
            column(row, 64 * n_words, column_words)
            base = row * n_blocks
            width = min(n_blocks, n - base)
            for w in range(n_words):
                word = column_words[w]
                for b in range(width):
                    out[w, b] ^= word & (ZERO - np.uint64(k[base + b] & 1))

    @jit
    def thresholds_kernel(v, thresholds, radius, k, near, near_j):
        """One pass of DecisionQuantizer over sorted thresholds (see its numpy reference,
        index_and_near and _bracket): k[i] = #{t : v[i] > t}; near[:count] = the positions
        within radius[j] of one of their two bracketing thresholds j, and near_j[:count] that
        j (the one within the radius; if both, the nearer, ties below). Returns count, or -1
        on NaN/infinity."""
        last = thresholds.size - 1
        count = 0
        for i in range(v.size):
            x = np.float64(v[i])
            if not abs(x) < np.inf:
                return -1
            # lo = #{t < x}: a branch-free binary search (selects, not jumps; the values are
            # random with respect to the thresholds, so branches would mispredict half the time).
            lo, n = 0, thresholds.size
            while n > 1:
                half = n >> 1
                lo = lo + half if thresholds[lo + half - 1] < x else lo
                n -= half
            lo += 1 if thresholds[lo] < x else 0
            k[i] = lo
            if near.size == 0:  # no radius: indices only
                continue
            below = min(max(lo - 1, 0), last)
            above = min(lo, last)
            d_below = abs(x - thresholds[below])
            d_above = abs(x - thresholds[above])
            in_below = d_below <= radius[below]
            in_above = d_above <= radius[above]
            if in_below or in_above:
                pick_below = (in_below and not in_above) or (in_below and d_below <= d_above)
                near[count] = i
                near_j[count] = below if pick_below else above
                count += 1
        return count

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

