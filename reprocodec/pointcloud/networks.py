"""The learned occupancy model (a small MLP in torch) and the logit -> CDF table.

The MLP maps a child's context features to the logit of P(occupied). Its float output is the
protected variable "occupancy_logit": it is snapped to a uniform grid (step LOGIT_STEP) under
the safeguard, clamped to +-LOGIT_LIMIT, and a fixed integer table shipped in the weights file
turns the grid index into the 16-bit CDF the rANS coder uses. The CDF is therefore a pure
integer function of protected indices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..numerics import prepare_input, to_host
from .context import N_CELLS, N_FEATURES, N_HEIGHTS, N_PASSES, active_columns

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
