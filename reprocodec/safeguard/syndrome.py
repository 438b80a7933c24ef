"""GF(2) syndrome of index parities: the `syndrome` mode's machinery (ours, beyond the paper).

For an element near threshold j, the only indices in play are j and j + 1, and their parity
tells them apart. The encoder sends s = H * parity(k_enc) over GF(2); the decoder knows the
parity of every element outside its candidate set C_d (its own index is right there), XORs
those out and solves H[:, C_d] x = s' for the rest.

H is split into independent blocks so that each solve is small: element i belongs to block
i mod n_blocks (interleaved, so that a contiguous run of candidates, e.g. a flat image region
whose scale sits near one threshold, spreads over all blocks). Block b's matrix has m_b rows;
column i's bits come from a fixed 64-bit integer hash of (i, word) — no platform RNG. The
encoder picks m_b so that the columns of its 2e-zone C_2 in that block are linearly
independent; since C_d is a subset of C_2 whenever the bound holds, every decoder solve then
has exactly one solution.
"""

from __future__ import annotations

import numpy as np

from .quantizer import SafeguardError

# Mean number of encoder candidates per block. Larger blocks send fewer per-block row counts
# (about 7 bits each) but make the O(c^2) elimination slower.
TARGET_CANDIDATES_PER_BLOCK = 64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_WORD_KEY = np.uint64(0xD1B54A32D192ED03)
_SALT = np.uint64(0x7265_7072_6F63_6463)  # "reprocdc"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def hash_words(elements: np.ndarray, word: int) -> np.ndarray:
    """Bits 64*word .. 64*word+63 of the columns of H for the given element numbers
    (splitmix64 finalizer of a linear combination: fast, well mixed, fully specified)."""
    with np.errstate(over="ignore"):
        x = np.asarray(elements, dtype=np.uint64) * _GOLDEN
        x += np.uint64(word + 1) * _WORD_KEY + _SALT
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
        return x


def choose_block_count(n: int, n_candidates: int) -> int:
    if n_candidates == 0:
        return 0
    return int(min(n, -(-n_candidates // TARGET_CANDIDATES_PER_BLOCK)))


def block_syndromes(parity: np.ndarray, n_blocks: int, rows: list[int]) -> list[int]:
    """s_b = H_b * parity restricted to block b, as Python ints of rows[b] bits (bit r = row r).

    Only odd-parity elements contribute: hash those and XOR each into its block's word.
    """
    odd = np.flatnonzero(parity & 1).astype(np.uint64)
    block = (odd % np.uint64(max(n_blocks, 1))).astype(np.intp)
    words_needed = np.array([-(-m // 64) for m in rows], dtype=np.int64)
    syndromes = [0] * n_blocks
    for word in range(int(words_needed.max(initial=0))):
        if word:  # only the few blocks with more than 64 rows need further words
            keep = words_needed[block] > word
            odd, block = odd[keep], block[keep]
        folded = np.zeros(n_blocks, dtype=np.uint64)
        np.bitwise_xor.at(folded, block, hash_words(odd, word))
        for b in np.flatnonzero(words_needed > word).tolist():
            syndromes[b] |= int(folded[b]) << (64 * word)
    return [s & ((1 << m) - 1) for s, m in zip(syndromes, rows, strict=True)]


def column_ints(elements: np.ndarray, n_bits: int) -> list[int]:
    """Columns of H (first n_bits rows) for the given elements, as Python ints."""
    cols = [0] * elements.size
    for word in range(-(-n_bits // 64)):
        for j, value in enumerate(hash_words(elements, word).tolist()):
            cols[j] |= value << (64 * word)
    mask = (1 << n_bits) - 1
    return [c & mask for c in cols]


def _insert(basis: dict[int, tuple[int, int]], vector: int, combo: int) -> bool:
    """Add a vector to an XOR basis keyed by leading bit; False if it was dependent."""
    while vector:
        lead = vector.bit_length() - 1
        if lead not in basis:
            basis[lead] = (vector, combo)
            return True
        base_vec, base_combo = basis[lead]
        vector ^= base_vec
        combo ^= base_combo
    return False


def rows_for_full_rank(elements: np.ndarray) -> int:
    """Smallest m >= len(elements) such that H's first m rows restricted to these columns
    have full column rank (each extra row halves the chance of a dependency).

    Column rank equals row rank, so this is the first m at which the rows, inserted one by one
    into an XOR basis, span all c columns: one elimination pass, no retries.
    """
    c = elements.size
    if c == 0:
        return 0
    n_bits = c + 64
    words = np.stack([hash_words(elements, w) for w in range(-(-n_bits // 64))], axis=1)
    column_bits = np.unpackbits(words.astype("<u8").view(np.uint8).reshape(c, -1), axis=1,
                                bitorder="little")[:, :n_bits]
    rows = np.packbits(column_bits.T, axis=1, bitorder="little")  # row r: bit j = H[r, col j]
    basis: dict[int, tuple[int, int]] = {}
    for r in range(n_bits):
        if _insert(basis, int.from_bytes(rows[r].tobytes(), "little"), 0) and len(basis) == c:
            return max(r + 1, c)
    raise SafeguardError("syndrome: could not reach full rank")  # probability ~2^-64


def solve(columns: list[int], syndrome: int) -> int:
    """Unique x (bit j = column j) with XOR_j x_j columns[j] = syndrome.

    When the columns are dependent and the syndrome is zero, x = 0 is returned (the decoder's
    own indices are consistent; the stream's index checksum has the last word). Otherwise a
    missing or ambiguous solution means the decoder is outside the error bound.
    """
    basis: dict[int, tuple[int, int]] = {}
    independent = True
    for j, col in enumerate(columns):
        independent &= _insert(basis, col, 1 << j)
    x = 0
    s = syndrome
    while s:
        lead = s.bit_length() - 1
        if lead not in basis:
            raise SafeguardError("syndrome is inconsistent: decoder is outside the error bound")
        base_vec, base_combo = basis[lead]
        s ^= base_vec
        x ^= base_combo
    if x and not independent:
        raise SafeguardError("syndrome is ambiguous: decoder is outside the error bound")
    return x
