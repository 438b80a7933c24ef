"""The learned occupancy model (a small MLP in torch): training, v1 models (float first
layer) and the torch runs of gather models (GPU and GPU-emulating profiles; the CPU profiles
run native.py).

The MLP maps a child's context features to the logit of P(occupied). Its float output is the
protected variable "occupancy_logit": it is snapped to the logit grid (grid.py) under the
safeguard, and the grid index picks the 16-bit CDF the rANS coder uses from an integer table
shipped in the weights file. The CDF is therefore a pure integer function of protected
indices.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..numerics import prepare_input, to_host
from .context import (
    N_CELLS,
    N_FEATURES,
    N_HEIGHTS,
    N_PASSES,
    CompactFeatures,
    active_columns,
)
from .gather import (  # noqa: F401 - re-exported: the gather's names where training finds them
    GATHER_STATES,
    GatherFirstLayer,
    GatherInputs,
    gather_first_layer,
    gather_table,
)
from .grid import (  # noqa: F401 - re-exported
    ARCHITECTURE,
    CDF_PRECISION,
    LOGIT_LIMIT,
    LOGIT_STEP,
    build_cdf_table,
    grid_size,
)
from .rowslices import Pending
from .weightsfile import read_weights

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


class _StartsNow:
    """start_logits of the torch paths: made at once, on the profile's device."""

    def start_logits(self, inputs, k: int, height: int) -> Pending:
        logits = self.logits_of(inputs, k, height)
        return Pending(lambda: logits)


class PassNetworks(_StartsNow):
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


class GatherNetworks(_StartsNow):
    """The MLP with an exact integer first layer (gather.py; models whose weights file says
    "first_layer": "gather") in torch: the second and last layers' float work, which the
    safeguard protects, runs on the profile's device in fixed-size chunks on both sides."""

    def __init__(self, model: OccupancyMLP, dtype: torch.dtype, device: str = "cpu",
                 bits: int = 12):
        first = model.net[0]
        self.first = GatherFirstLayer(first.weight.detach().double().numpy(),
                                      first.bias.detach().double().numpy(), bits)
        self.tables, self.biases = self.first.tables, self.first.biases
        self.bits, self.hidden = bits, self.first.hidden
        rest = copy.deepcopy(model.net[2:])  # after the first ReLU
        with torch.no_grad():
            rest[0].weight.mul_(2.0 ** -bits)  # exact: a power of two
        self.rest = rest.to(device=device, dtype=dtype)
        for layer in self.rest:
            if isinstance(layer, nn.ReLU):
                layer.inplace = True
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
        the first layer as an exact float64 product (the reference the gather is tested
        against)."""
        out = np.empty(inputs.shape[0], dtype=np.float64)
        for start in range(0, inputs.shape[0], CHUNK_ROWS):
            hidden = self.first.exact(inputs[start:start + CHUNK_ROWS], k, height)
            out[start:start + CHUNK_ROWS] = self._rest(hidden.astype(self.np_dtype))
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


def load_weights(path: str) -> tuple[OccupancyMLP, np.ndarray, dict[str, Any]]:
    """The torch model, CDF table and blob of a weights file (weightsfile.read_weights)."""
    state, table, blob = read_weights(path)
    model = OccupancyMLP(tuple(blob["hidden"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    return model, table, blob
