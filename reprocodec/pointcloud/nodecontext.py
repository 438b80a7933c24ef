"""The node context of a child bit: its parent's occupancy byte, its place in it and its
node's children decoded so far (the adaptive coder's context), with how many of those are
occupied. The neighbour coder's version 2 model and mixing.py's version 2 mixer each keep a
count model of it (a direct index, no hash) and choose by the occupied count too.

Each bit's context and count travel packed in one int32, its "extra":

    node context = slot (parent byte x 8 + place in it, < 2^11) x 256
                   + the children decoded so far as (2^k - 1) + their bits (child 0 first)
    extra        = node context | occupied children so far << POP_SHIFT

The encoder makes a level's extras from its known bits (level_extras), the decoder pass by
pass from the bits it decoded (pass_extras): the same integers, from the decoder's own
tables, never from stream bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import entropy
from ..kernels import compiled
from . import adaptive
from .context import N_PASSES

NODE_CONTEXTS = 1 << 19  # slot < 2^11, times 256
SLOT_DTYPE = np.uint16  # a node's slot (< 2^11)
POP_SHIFT = 24  # an extra: node context | occupied children so far << 24
NODE_MASK = (1 << POP_SHIFT) - 1


def node_slots(parent_bits: np.ndarray | None) -> np.ndarray:
    """(M,) SLOT_DTYPE slot of each node of a level: its parent's occupancy byte (child 0 the most
    significant bit) x 8 + its own child index, the nodes in the octree's order (each occupied
    child of each parent in turn); parent_bits: the level above's (M', 8) bits, None at the
    root (one node, slot 0)."""
    if parent_bits is None:
        return np.zeros(1, dtype=SLOT_DTYPE)
    parent_byte, position = adaptive.child_places(adaptive.occupancy_bytes(parent_bits))
    return parent_byte.astype(SLOT_DTYPE) * 8 + position


@entropy.jit_inline
def _extra_of(slot, partial, occupied, k):  # pragma: no cover - compiled
    """The extra of child k of a node: node context | occupied << 24 (NODE_MASK; < 2^27)."""
    return np.int32((np.int64(slot) << 8) + (np.int64(1) << k) - 1 + partial +
                    (occupied << POP_SHIFT))


@compiled
def _pass_extras_kernel(slots, bits, k, out):  # pragma: no cover - compiled
    for j in range(slots.size):
        partial, occupied = np.int64(0), np.int64(0)
        for c in range(k):
            partial = 2 * partial + bits[j, c]
            occupied += bits[j, c]
        out[j] = _extra_of(slots[j], partial, occupied, k)


def _checked_slots(slots: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(slots)
    b = np.ascontiguousarray(np.asarray(bits, dtype=bool), dtype=np.uint8)  # 0 or 1
    if s.dtype.kind not in "iu" or b.shape != (s.size, N_PASSES) or \
            (s.size and (int(s.min()) < 0 or int(s.max()) >= 2048)):
        raise ValueError("one slot below 2048 and 8 bits per node")
    return np.ascontiguousarray(s, dtype=SLOT_DTYPE), b  # (in range: checked above)


def level_extras(slots: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """(8 M,) int32 extras of a level's bits, pass-major (the encoder: all bits known)."""
    s, b = _checked_slots(slots, bits)
    return LevelExtras(s, adaptive.occupancy_bytes(b)).array()


def pass_extras(slots: np.ndarray, bits: np.ndarray, k: int) -> np.ndarray:
    """(M,) int32 extras of child k of every node (the decoder: children < k decoded)."""
    s, b = _checked_slots(slots, bits)
    if not 0 <= k < N_PASSES:
        raise ValueError(f"pass {k} outside 0..7")
    out = np.empty(s.size, dtype=np.int32)
    _pass_extras_kernel(s, b, np.int64(k), out)
    return out


# occupied children of a k-bit partial byte (k <= 8)
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)


@entropy.jit_inline
def node_extra(slots, node_bytes, k, j):  # pragma: no cover - compiled
    """The extra of child k of node j of a level (LevelExtras' arrays): level_extras' value,
    from the node's slot and occupancy byte (its children < k: the byte's top k bits)."""
    partial = np.int64(node_bytes[j]) >> (8 - k)
    return _extra_of(slots[j], partial, _POPCOUNT[partial], k)


class LevelExtras(NamedTuple):
    """A level's extras as the encoder's neighbour walk reads them: each node's slot and
    occupancy byte (child 0 the most significant bit), from which node_extra makes a bit's
    extra where it is read. 3 bytes a node where level_extras' array takes 32; array() makes
    that array."""

    slots: np.ndarray  # (M,) SLOT_DTYPE, each below 2048
    node_bytes: np.ndarray  # (M,) uint8

    @classmethod
    def of(cls, parent_bits: np.ndarray | None, bits: np.ndarray) -> LevelExtras:
        """The extras of a level's bits (M, 8), its parents' bits (None at the root)."""
        return cls(node_slots(parent_bits), adaptive.occupancy_bytes(bits)).checked()

    @property
    def nodes(self) -> int:
        return self.slots.size

    def array(self) -> np.ndarray:
        """(8 M,) int32: level_extras of the level, pass-major."""
        out = np.empty(N_PASSES * self.nodes, dtype=np.int32)
        _extras_array_kernel(self.slots, self.node_bytes, out)
        return out

    def checked(self) -> LevelExtras:
        """Itself, checked for the kernels to read unchecked (ValueError otherwise): one slot
        below 2048 and one byte a node, contiguous."""
        s, b = self.slots, self.node_bytes
        if s.dtype != SLOT_DTYPE or b.dtype != np.uint8 or s.ndim != 1 or s.shape != b.shape \
                or not s.flags.c_contiguous or not b.flags.c_contiguous or \
                (s.size and (s.min() < 0 or s.max() >= 2048)):
            raise ValueError("the node model needs one slot below 2048 and one byte a node")
        return self


@compiled
def _extras_array_kernel(slots, node_bytes, out):  # pragma: no cover - compiled
    m = slots.size
    for k in range(N_PASSES):
        for j in range(m):
            out[k * m + j] = node_extra(slots, node_bytes, k, j)


def checked_level_extras(extras: LevelExtras | None, nodes: int, version: int) -> LevelExtras:
    """A level's extras as the encoder's kernels of a model `version` read them unchecked:
    version 2's for each of the level's `nodes` nodes (ValueError otherwise); version 1 reads
    none (empty arrays, whatever was passed)."""
    if version == 1:
        return LevelExtras(np.zeros(0, SLOT_DTYPE), np.zeros(0, np.uint8))
    if extras is None or extras.nodes != nodes:
        raise ValueError("the node model needs the extras of each node of the level")
    return extras.checked()


def checked_extras(extras: np.ndarray | None, size: int, version: int) -> np.ndarray:
    """Extras as the kernels of a coder's model `version` read them unchecked: version 2's,
    one int32 per bit, each a node context below NODE_CONTEXTS and at most 7 occupied
    children (level_extras and pass_extras make no other; ValueError otherwise); version 1
    reads none (an empty array, whatever was passed)."""
    if version == 1:
        return np.zeros(0, dtype=np.int32)
    if extras is None or extras.shape != (size,) or extras.dtype != np.int32:
        raise ValueError("the node model needs one int32 extra per bit")
    e = np.ascontiguousarray(extras)
    if not _extras_inside(e):
        raise ValueError("an extra outside the node model's tables")
    return e


@compiled
def _extras_inside(extras):  # pragma: no cover - compiled
    """Whether every extra is a node context below NODE_CONTEXTS with at most 7 occupied
    children (in one pass, no temporary arrays: a large level's extras are 10-20 MB)."""
    for i in range(extras.size):
        e = extras[i]
        if e < 0 or (e & NODE_MASK) >= NODE_CONTEXTS or (e >> POP_SHIFT) >= N_PASSES:
            return False
    return True
