"""The risky map of the paper's modes: a sparse set of element positions, gap-coded.

Positions are sent as the gaps between consecutive risky elements, Golomb-Rice coded with
the cost-minimizing parameter. For risky elements scattered at rate p, gaps are geometric and
Rice coding of them costs within a few percent of the entropy N*H(p) of the map (the optimum
for an i.i.d. map, and what an adaptive arithmetic coder would approach) while decoding with
a handful of vectorized numpy operations. This is the fair baseline the syndrome mode is
compared against.
"""

from __future__ import annotations

import numpy as np

from .bitio import BitReader, BitWriter
from .errors import MalformedSideInfo


def write_positions(writer: BitWriter, positions: np.ndarray) -> None:
    """`positions`: strictly increasing element numbers (the count is sent separately)."""
    gaps = np.diff(positions, prepend=-1) - 1
    writer.write_rice(gaps)


def read_positions(reader: BitReader, count: int, n: int) -> np.ndarray:
    """Refuses (MalformedSideInfo) more positions than elements, or than bits left, before
    reading; then any position outside the tensor."""
    if count > n:
        raise MalformedSideInfo(f"side information claims {count} risky elements of {n}")
    gaps = reader.read_rice(count)
    if count and int(gaps.max()) >= n:  # also keeps the cumulative sum far from overflow
        raise MalformedSideInfo("side information has a gap past the end of the tensor")
    positions = np.cumsum(gaps + 1) - 1
    if count and positions[-1] >= n:
        raise MalformedSideInfo("side information names an element past the end of the tensor")
    return positions
