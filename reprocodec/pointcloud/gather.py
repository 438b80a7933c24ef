"""The exact integer first layer of gather models ("first_layer": "gather" in a weights file,
octree-ctx-v2 on), in numpy and numba (no torch).

The features are binary and come from 27 neighbour nodes, each in one of 257 states for a pass
(its byte of decoded children, or absent), so the first layer is the sum over the 27
neighbours of a table row: the sum of the weight columns of that neighbour's cells in that
state. With weights and bias rounded to the 2^-bits grid (done once at load, exactly, from the
stored values) the rows hold integers and the sum is exact whatever order or hardware adds it:
no features are made and 27 row additions replace ~190 multiply-adds per hidden unit. The
integer ReLU output is exact in float32 (checked at load: |pre-activation| < 2^24); the
2^-bits scale folds into the second layer.
"""

from __future__ import annotations

import numpy as np

from ..kernels import compiled, numba
from .context import N_CELLS, N_HEIGHTS, N_PASSES, WINDOW_CHILD, WINDOW_NEIGHBOUR, active_columns

GATHER_STATES = 257  # a neighbour's decoded-children byte (0..255), or 256: no such node


class GatherFirstLayer:
    """The integer tables and biases of a first layer (weight (H, N_FEATURES), bias (H,),
    float, as stored) on the 2^-bits grid; ValueError when its sums are not exact in
    float32."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, bits: int):
        w = np.rint(np.ldexp(np.asarray(weight, np.float64), bits)).astype(np.int64)
        b = np.rint(np.ldexp(np.asarray(bias, np.float64), bits)).astype(np.int64)
        self.bits, self.hidden = bits, w.shape[0]
        self.tables: list[np.ndarray] = []
        self.active: list[np.ndarray] = []
        self.biases: dict[tuple[int, int], np.ndarray] = {}
        self.full_biases: dict[tuple[int, int], np.ndarray] = {}
        limit = 0
        for k in range(N_PASSES):
            # Relative to "no node": the absent state's rows go into the bias and become zero,
            # so the sum skips absent neighbours (most of them, on a surface).
            table = gather_table(w, k).reshape(27, GATHER_STATES, -1)
            absent = table[:, GATHER_STATES - 1].copy()
            table -= absent[:, None, :]
            self.tables.append(table.reshape(27 * GATHER_STATES, -1).astype(np.int32))
            self.active.append(w[:, active_columns(k)].astype(np.float64))
            reach = np.abs(table).max(axis=1).sum(axis=0)  # per unit, the largest row sum
            for h in range(N_HEIGHTS):
                bias = (b + w[:, 2 * N_CELLS + k] + w[:, 2 * N_CELLS + N_PASSES + h]
                        + absent.sum(axis=0))
                self.biases[k, h] = bias.astype(np.int32)
                self.full_biases[k, h] = (bias - absent.sum(axis=0)).astype(np.float64)
                limit = max(limit, int((np.abs(bias) + reach).max()))
        if limit >= 1 << 24:
            raise ValueError(f"first-layer sums up to {limit} are not exact in float32")

    def exact(self, features: np.ndarray, k: int, height: int) -> np.ndarray:
        """float64 ReLU pre-activations (integers) of compact uint8 features
        (context.pass_features, compact=True): the first layer as a float64 matrix product of
        the integer weights, exact; the reference the gather is tested against."""
        bias = self.full_biases[k, min(height, N_HEIGHTS - 1)]
        return np.maximum(features.astype(np.float64) @ self.active[k].T + bias, 0)


class GatherInputs:
    """A pass's neighbour rows and each node's state (its decoded-children byte, 256 for the
    empty sentinel row M): all a gather network reads."""

    def __init__(self, neighbours: np.ndarray, bits: np.ndarray, k: int):
        m = bits.shape[0]
        self.state = np.empty(m + 1, dtype=np.int32)
        if numba is not None:
            _state_kernel(np.ascontiguousarray(bits, dtype=bool).view(np.uint8), k, self.state)
        else:
            self.state[:m] = np.packbits(bits, axis=1)[:, 0] & ((0xFF00 >> k) & 0xFF)
        self.state[m] = GATHER_STATES - 1
        self.neighbours, self.rows = neighbours, neighbours.shape[0]


def gather_table(w: np.ndarray, k: int) -> np.ndarray:
    """(27 * 257, H) int64: row 257 t + s is the first-layer contribution (weights w, (H,
    N_FEATURES)) of the window cells in neighbour t when that neighbour is in state s: its
    decoded-children byte s (MSB = child 0; a cell of child c < k is occupied or known empty,
    a later one unknown and contributes nothing), or s = 256, no node (all its cells known
    empty)."""
    table = np.zeros((27, GATHER_STATES, w.shape[0]), dtype=np.int64)
    states = np.arange(GATHER_STATES - 1)
    for cell in range(N_CELLS):
        t, c = WINDOW_NEIGHBOUR[k, cell], WINDOW_CHILD[k, cell]
        occupied, empty = w[:, cell], w[:, N_CELLS + cell]
        table[t, GATHER_STATES - 1] += empty
        if c < k:
            bit = ((states >> (7 - c)) & 1).astype(bool)
            table[t, :GATHER_STATES - 1] += np.where(bit[:, None], occupied, empty)
    return table.reshape(27 * GATHER_STATES, -1)


def gather_first_layer(rows: np.ndarray, state: np.ndarray, table: np.ndarray,
                       bias: np.ndarray, dtype=np.float32) -> np.ndarray:
    """ReLU of the integer first layer of each row: bias + the table rows of its 27
    neighbours' states (compiled with numba; numpy otherwise, the same integers)."""
    out = np.empty((rows.shape[0], table.shape[1]), dtype=dtype)
    if numba is not None:
        _gather_kernel(np.ascontiguousarray(rows), state, table, bias, out)
        return out
    acc = np.broadcast_to(bias, out.shape).copy()
    for t in range(27):
        acc += table[t * GATHER_STATES + state[rows[:, t]]]  # absent: a zero row
    np.maximum(acc, 0, out=acc)
    out[:] = acc
    return out


if numba is not None:
    @compiled
    def _state_kernel(bits, k, state):  # pragma: no cover - compiled
        for i in range(bits.shape[0]):
            byte = 0
            for c in range(k):
                byte |= (bits[i, c] & 1) << (7 - c)  # children < k, MSB = child 0
            state[i] = byte

    @compiled
    def _gather_kernel(rows, state, table, bias, out):  # pragma: no cover - compiled
        hidden = bias.size
        absent = state.size - 1  # the sentinel row M: its table rows are zero
        acc = np.empty(hidden, np.int32)
        for r in range(rows.shape[0]):
            for u in range(hidden):
                acc[u] = bias[u]
            for t in range(27):
                j = rows[r, t]
                if j == absent:
                    continue
                row = t * GATHER_STATES + state[j]
                for u in range(hidden):
                    acc[u] += table[row, u]
            for u in range(hidden):
                out[r, u] = max(acc[u], 0)
