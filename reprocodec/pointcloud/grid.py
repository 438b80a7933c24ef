"""The occupancy logit grid and its integer CDF table (no torch).

The network's float logit is snapped to a uniform grid (step LOGIT_STEP) under the safeguard,
clamped to +-LOGIT_LIMIT, and a fixed integer table shipped in the weights file turns the grid
index into the 16-bit CDF the rANS coder uses.
"""

from __future__ import annotations

import numpy as np

ARCHITECTURE = "octree-context"
LOGIT_STEP = 1.0 / 16.0
LOGIT_LIMIT = 12.0
CDF_PRECISION = 16
GRID_K = int(round(LOGIT_LIMIT / LOGIT_STEP))  # grid indices -K..K, CDF table rows 0..2K


def grid_size() -> int:
    """Number of grid indices: -K..K with K = LOGIT_LIMIT / LOGIT_STEP."""
    return 2 * int(round(LOGIT_LIMIT / LOGIT_STEP)) + 1


def build_cdf_table(step: float = LOGIT_STEP, limit: float = LOGIT_LIMIT) -> np.ndarray:
    """(2K+1, 4) int32 CDFs [0, f0, 2^16, 2^16] for logits -K*step..K*step.

    Computed once when the weights are shipped and stored in the weights file, so no decoder
    ever recomputes it with its own libm. The last (overflow) symbol has zero frequency: the
    coder only ever sees 0 or 1 and can never enter compressai's bypass path.
    """
    k = int(round(limit / step))
    logits = np.arange(-k, k + 1, dtype=np.float64) * step
    p_empty = 1.0 / (1.0 + np.exp(logits))
    total = 1 << CDF_PRECISION
    f0 = np.clip(np.rint(p_empty * total), 1, total - 1).astype(np.int64)
    table = np.zeros((logits.size, 4), dtype=np.int32)
    table[:, 1] = f0
    table[:, 2:] = total
    return table
