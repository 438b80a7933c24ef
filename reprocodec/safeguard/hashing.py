"""The columns of the syndrome mode's matrix H: a fixed 64-bit integer hash, no platform RNG.

Shared by the numpy code (`syndrome`, `elimination`) and the numba kernels (`native`), which
must compute the same bits.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
WORD_KEY = np.uint64(0xD1B54A32D192ED03)
SALT = np.uint64(0x7265_7072_6F63_6463)  # "reprocdc"
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)


def hash_words(keys: np.ndarray, word: int) -> np.ndarray:
    """Bits 64*word .. 64*word+63 of the columns of H for the given grid rows
    (splitmix64 finalizer of a linear combination: fast, well mixed, fully specified)."""
    with np.errstate(over="ignore"):
        x = np.asarray(keys, dtype=np.uint64) * GOLDEN
        x += np.uint64(word + 1) * WORD_KEY + SALT
        x ^= x >> np.uint64(30)
        x *= M1
        x ^= x >> np.uint64(27)
        x *= M2
        x ^= x >> np.uint64(31)
        return x
