"""The learned occupancy model (a small MLP in torch) and the logit -> CDF table.

The MLP maps a child's context features to the logit of P(occupied). Its float output is the
protected variable "occupancy_logit": it is snapped to a uniform grid (step LOGIT_STEP) under
the safeguard, clamped to +-LOGIT_LIMIT, and a fixed integer table shipped in the weights file
turns the grid index into the 16-bit CDF the rANS coder uses. The CDF is therefore a pure
integer function of protected indices.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..numerics import prepare_input, to_host
from .context import (
    N_CELLS,
    N_FEATURES,
    N_HEIGHTS,
    N_PASSES,
    WINDOW_CHILD,
    WINDOW_NEIGHBOUR,
    CompactFeatures,
    active_columns,
    numba,
)

ARCHITECTURE = "octree-context"
LOGIT_STEP = 1.0 / 16.0
LOGIT_LIMIT = 12.0
CDF_PRECISION = 16
# Rows are evaluated in fixed-size chunks on both sides: a BLAS may pick different kernels
# for different batch sizes, and encoder and decoder must run the same shapes.
CHUNK_ROWS = 1 << 16


class OccupancyMLP(nn.Module):
    def __init__(self, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        width = N_FEATURES
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.hidden = tuple(hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class PassNetworks:
    """The trained MLP specialised per (pass, height): first-layer columns that are always
    zero in that pass are dropped and the one-hot inputs folded into the bias (done once at
    load, in float64, then rounded to the working dtype). Same function, fewer operations;
    encoder and decoder both run this form."""

    def __init__(self, model: OccupancyMLP, dtype: torch.dtype, device: str = "cpu"):
        first = model.net[0]
        w = first.weight.detach().double()
        b = first.bias.detach().double()
        self.rest = model.net[1:].to(device=device, dtype=dtype)
        for layer in self.rest:  # in place on the fresh activations: same values, no copies
            if isinstance(layer, nn.ReLU):
                layer.inplace = True
        self.weights, self.biases = [], {}
        for k in range(N_PASSES):
            self.weights.append(w[:, active_columns(k)].to(device=device, dtype=dtype))
            for h in range(N_HEIGHTS):
                bias = b + w[:, 2 * N_CELLS + k] + w[:, 2 * N_CELLS + N_PASSES + h]
                self.biases[k, h] = bias.to(device=device, dtype=dtype)
        self.dtype, self.device = dtype, device

    def inputs(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int):
        """What logits_of reads for pass k of a level: its compact features, made per chunk."""
        return CompactFeatures(neighbours, bits, k, level, depth)

    @torch.no_grad()
    def logits(self, inputs: np.ndarray, k: int, height: int) -> np.ndarray:
        """float64 logits of compact uint8 inputs, evaluated in fixed-size chunks."""
        weight, bias = self.weights[k], self.biases[k, min(height, N_HEIGHTS - 1)]
        out = np.empty(inputs.shape[0], dtype=np.float64)
        for start in range(0, inputs.shape[0], CHUNK_ROWS):
            x = prepare_input(torch.from_numpy(inputs[start:start + CHUNK_ROWS]).to(self.dtype))
            h = torch.nn.functional.linear(x, weight, bias)
            out[start:start + CHUNK_ROWS] = to_host(self.rest(h).squeeze(-1), torch.float64)
        return out

    @torch.no_grad()
    def logits_of(self, features, k: int, height: int) -> np.ndarray:
        """logits() of a context.CompactFeatures, its rows made chunk by chunk in the working
        dtype: the same chunks, so the same values, without the whole uint8 array."""
        weight, bias = self.weights[k], self.biases[k, min(height, N_HEIGHTS - 1)]
        out = np.empty(features.rows, dtype=np.float64)
        dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        for start in range(0, features.rows, CHUNK_ROWS):
            x = prepare_input(torch.from_numpy(features.chunk(start, start + CHUNK_ROWS, dtype)))
            h = torch.nn.functional.linear(x, weight, bias)
            out[start:start + CHUNK_ROWS] = to_host(self.rest(h).squeeze(-1), torch.float64)
        return out


# The integer first layer ("first_layer": "gather" in a weights file): weights and bias on a
# 2^-bits grid, so a row's pre-activations are integers.
GATHER_STATES = 257  # a neighbour's decoded-children byte (0..255), or 256: no such node


class GatherNetworks:
    """The MLP with an exact integer first layer (models whose weights file says
    "first_layer": "gather"). The features are binary and come from 27 neighbour nodes, each
    in one of 257 states for a pass (its byte of decoded children, or absent), so the first
    layer is the sum over the 27 neighbours of a table row: the sum of the weight columns of
    that neighbour's cells in that state. With weights and bias rounded to the 2^-bits grid
    (done once at load, exactly, from the stored values) the rows hold integers and the sum is
    exact whatever order or hardware adds it: no features are made and 27 row additions
    replace ~190 multiply-adds per hidden unit. The integer ReLU output is exact in float32
    (checked at load: |pre-activation| < 2^24); the 2^-bits scale folds into the second layer,
    whose float work (and the last layer's) the safeguard protects as before, in the same
    fixed-size chunks on both sides."""

    def __init__(self, model: OccupancyMLP, dtype: torch.dtype, device: str = "cpu",
                 bits: int = 12):
        first = model.net[0]
        w = np.rint(np.ldexp(first.weight.detach().double().numpy(), bits)).astype(np.int64)
        b = np.rint(np.ldexp(first.bias.detach().double().numpy(), bits)).astype(np.int64)
        self.bits, self.hidden = bits, w.shape[0]
        rest = copy.deepcopy(model.net[2:])  # after the first ReLU
        with torch.no_grad():
            rest[0].weight.mul_(2.0 ** -bits)  # exact: a power of two
        self.rest = rest.to(device=device, dtype=dtype)
        for layer in self.rest:
            if isinstance(layer, nn.ReLU):
                layer.inplace = True
        self.tables, self.active, self.biases, self.full_biases = [], [], {}, {}
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
        self.dtype, self.device = dtype, device
        self.np_dtype = torch.empty(0, dtype=dtype).numpy().dtype

    def inputs(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int):
        return GatherInputs(neighbours, bits, k)

    def _rest(self, hidden: np.ndarray) -> np.ndarray:
        h = prepare_input(torch.from_numpy(hidden))
        return to_host(self.rest(h).squeeze(-1), torch.float64)

    @torch.no_grad()
    def logits_of(self, inputs: GatherInputs, k: int, height: int) -> np.ndarray:
        """float64 logits of a pass's GatherInputs, in fixed-size chunks."""
        table, bias = self.tables[k], self.biases[k, min(height, N_HEIGHTS - 1)]
        out = np.empty(inputs.rows, dtype=np.float64)
        for start in range(0, inputs.rows, CHUNK_ROWS):
            rows = inputs.neighbours[start:start + CHUNK_ROWS]
            out[start:start + CHUNK_ROWS] = self._rest(
                gather_first_layer(rows, inputs.state, table, bias, self.np_dtype))
        return out

    @torch.no_grad()
    def logits(self, inputs: np.ndarray, k: int, height: int) -> np.ndarray:
        """The same logits from compact uint8 features (context.pass_features, compact=True),
        the first layer as a float64 matrix product of the integer weights (exact: the
        reference the gather is tested against)."""
        weight, bias = self.active[k], self.full_biases[k, min(height, N_HEIGHTS - 1)]
        out = np.empty(inputs.shape[0], dtype=np.float64)
        for start in range(0, inputs.shape[0], CHUNK_ROWS):
            x = inputs[start:start + CHUNK_ROWS].astype(np.float64)
            hidden = np.maximum(x @ weight.T + bias, 0).astype(self.np_dtype)
            out[start:start + CHUNK_ROWS] = self._rest(hidden)
        return out


def gather_bits(model: OccupancyMLP, most: int = 14) -> int:
    """The finest 2^-bits grid (bits <= most) on which GatherNetworks' sums of `model` stay
    exact in float32."""
    for bits in range(most, 0, -1):
        try:
            GatherNetworks(model, torch.float32, "cpu", bits)
        except ValueError:
            continue
        return bits
    raise ValueError("no grid keeps this model's first-layer sums exact")


class GatherInputs:
    """A pass's neighbour rows and each node's state (its decoded-children byte, 256 for the
    empty sentinel row M): all GatherNetworks reads."""

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
    @numba.njit(cache=True, nogil=True)
    def _state_kernel(bits, k, state):  # pragma: no cover - compiled
        for i in range(bits.shape[0]):
            byte = 0
            for c in range(k):
                byte |= (bits[i, c] & 1) << (7 - c)  # children < k, MSB = child 0
            state[i] = byte

    @numba.njit(cache=True, nogil=True)
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


def save_weights(path: str, model: OccupancyMLP, extra: dict | None = None) -> None:
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    torch.save(
        {
            "architecture": ARCHITECTURE,
            "hidden": list(model.hidden),
            "n_features": N_FEATURES,
            "logit_step": LOGIT_STEP,
            "logit_limit": LOGIT_LIMIT,
            "cdf_table": torch.from_numpy(build_cdf_table()),
            "state_dict": state,
            **(extra or {}),
        },
        path,
    )


def load_weights(path: str) -> tuple[OccupancyMLP, np.ndarray, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("architecture") != ARCHITECTURE or blob.get("n_features") != N_FEATURES:
        raise ValueError(f"{path} is not an {ARCHITECTURE} model with {N_FEATURES} features")
    if blob["logit_step"] != LOGIT_STEP or blob["logit_limit"] != LOGIT_LIMIT:
        raise ValueError(f"{path} uses another logit grid than this code")
    model = OccupancyMLP(tuple(blob["hidden"]))
    model.load_state_dict({k: v.to(torch.float32) for k, v in blob["state_dict"].items()})
    model.eval()
    table = blob["cdf_table"].numpy().astype(np.int32)
    if table.shape != (grid_size(), 4):
        raise ValueError(f"{path} has a CDF table of shape {table.shape}")
    return model, table, blob
