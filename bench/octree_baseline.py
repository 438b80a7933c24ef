"""The non-learned reference coder bench/pointcloud.py compares against (not product code).

Breadth-first octree occupancy bytes, each coded with a context-adaptive binary arithmetic
coder: the byte is binarized MSB first (8 binary decisions, a binary tree), and each decision's
context is (the parent's occupancy byte, the node's position in its parent, the bits of this
byte coded so far) -- i.e. an adaptive 256-ary model per (parent occupancy, child position).
Probabilities are Krichevsky-Trofimov counts, p1 = (n1 + 1/2) / (n + 1), updated after every
decision in coding order; the bits go through the same rANS coder and 16-bit CDF grid as the
learned codec, so the byte count is real, not an entropy estimate.

Only the encoder is implemented: its probabilities are causal (each uses counts of earlier
decisions only), so a sequential decoder reproduces them; the benchmark needs the size.
"""

from __future__ import annotations

import numpy as np

from reprocodec import entropy
from reprocodec.pointcloud import octree
from reprocodec.pointcloud.coder import cdf_tables
from reprocodec.pointcloud.networks import LOGIT_LIMIT, LOGIT_STEP, build_cdf_table


def _rank_within_groups(keys: np.ndarray) -> np.ndarray:
    """For each position i: how many earlier positions share keys[i]."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, keys.size]))
    rank = np.empty(keys.size, np.int64)
    rank[order] = np.arange(keys.size) - group_start
    return rank


def adaptive_probabilities(contexts: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """KT estimate of P(bit = 1) for each decision from earlier decisions in its context."""
    n_before = _rank_within_groups(contexts)
    ones_before = _rank_within_groups(contexts * 2 + bits) * bits  # valid where bit = 1
    # For bit = 0 decisions, ones before = n_before - (zeros before).
    zeros_before = _rank_within_groups(contexts * 2 + bits) * (1 - bits)
    n1 = np.where(bits == 1, ones_before, n_before - zeros_before)
    return (n1 + 0.5) / (n_before + 1.0)


def decisions(voxels: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, bits) of every binary decision, in coding order."""
    codes, bits = octree.build_levels(voxels, depth)
    ctx_all, bit_all = [], []
    parent_byte = np.zeros(1, np.int64)  # the root has no parent: context byte 0
    position = np.zeros(1, np.int64)
    weights = 1 << np.arange(8)[::-1]  # child c is bit (7 - c) of the byte: MSB = child 0
    for level in range(depth):
        occupancy = bits[level].astype(np.int64)
        byte = occupancy @ weights
        prefix = np.zeros_like(byte)
        for j in range(8):
            ctx = ((parent_byte * 8 + position) * 256 + (prefix | (1 << j))) * 8 + j
            b = occupancy[:, j]
            ctx_all.append(ctx)
            bit_all.append(b)
            prefix = prefix | (b << j)
        # Children of this level in decoder order: each inherits this node's byte.
        parent_byte = np.repeat(byte, occupancy.sum(axis=1))
        position = np.nonzero(occupancy)[1]
    # Interleave to node-major order (all 8 decisions of a node, then the next node).
    contexts, out_bits = [], []
    for level_start in range(0, len(ctx_all), 8):
        c = np.stack(ctx_all[level_start:level_start + 8], axis=1).ravel()
        b = np.stack(bit_all[level_start:level_start + 8], axis=1).ravel()
        contexts.append(c)
        out_bits.append(b)
    return np.concatenate(contexts), np.concatenate(out_bits)


def encoded_size(voxels: np.ndarray, depth: int) -> int:
    """Bytes of the adaptive-context octree stream for a voxel set."""
    if voxels.shape[0] == 0:
        return 0
    contexts, bits = decisions(voxels, depth)
    p1 = np.clip(adaptive_probabilities(contexts, bits), 1e-9, 1 - 1e-9)
    k = int(round(LOGIT_LIMIT / LOGIT_STEP))
    index = np.clip(np.rint(np.log(p1 / (1 - p1)) / LOGIT_STEP), -k, k).astype(np.int64) + k
    return len(entropy.encode(bits.astype(np.int32), index, cdf_tables(build_cdf_table())))
