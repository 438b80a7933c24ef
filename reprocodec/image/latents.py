"""The image codec's two entropy-coded latents, each a mirrored encode/decode pair on top of
reprocodec.entropy (tables from the weights file, never recomputed).

    HyperLatent (z, factorized prior)            Latent (y, Gaussian conditional)
    symbols = round(z - median)                  symbols = round(y - mean_q)   (mean_q or 0)
    table   = channel                            table   = scale_index (protected decision)
    z_hat   = symbols + median  (float32)        y_hat   = symbols + mean_q    (float32)

Both sides compute z_hat and y_hat from integers and the file's float32 medians / the exact
grid means with one IEEE addition, so they are identical everywhere. Symbol order is C order
of the (C, H, W) tensor, as CompressAI's, so streams are byte-compatible with its rANS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import entropy
from ..errors import EncoderError
from ..numerics import to_host


def _symbols(values: Any, means: Any | None) -> np.ndarray:
    """CompressAI's quantize(..., "symbols"): round half to even of (values - means)."""
    import torch

    out = torch.from_numpy(to_host(values, torch.float32))
    if means is not None:
        out -= means
    if not bool(torch.isfinite(out).all()):
        raise EncoderError("the analysis transform produced NaN or infinity; cannot code it")
    return torch.round(out).to(torch.int32).numpy()[0]


def _dequantize(symbols: np.ndarray, means: Any | None) -> Any:
    import torch

    out = torch.from_numpy(np.ascontiguousarray(symbols, dtype=np.float32))[None]
    return out + means if means is not None else out


class HyperLatent:
    """z: one CDF table per channel, symbols offset by the channel's median."""

    def __init__(self, entropy_bottleneck: Any):
        import torch

        self.tables = entropy.CdfTables.from_entropy_model(entropy_bottleneck)
        # quantiles[:, :, 1] is the median, float32 as loaded from the (fp16) weights.
        medians = torch.from_numpy(to_host(entropy_bottleneck.quantiles[:, 0, 1], torch.float32))
        self.medians = medians.reshape(1, -1, 1, 1)
        self.channels = int(medians.numel())

    def _indexes(self, shape: tuple[int, ...]) -> np.ndarray:
        c, h, w = shape
        return np.repeat(np.arange(c, dtype=np.int32), h * w)

    def encode(self, z: Any) -> tuple[bytes, np.ndarray, Any]:
        """(bytes, symbols [C, h, w], z_hat [1, C, h, w] float32)."""
        symbols = _symbols(z, self.medians)
        data = entropy.encode(symbols, self._indexes(symbols.shape), self.tables)
        return data, symbols, _dequantize(symbols, self.medians)

    def decode(self, data: bytes, height: int, width: int, lenient: bool = False
               ) -> tuple[np.ndarray, Any]:
        """(symbols, z_hat); raises EntropyStreamError unless the stream is exactly whole."""
        shape = (self.channels, height, width)
        symbols = entropy.decode(data, self._indexes(shape), self.tables, lenient)
        symbols = symbols.reshape(shape)
        return symbols, _dequantize(symbols, self.medians)


class Latent:
    """y: CDF table chosen per element by the protected scale index; optional grid means."""

    def __init__(self, gaussian_conditional: Any):
        self.tables = entropy.CdfTables.from_entropy_model(gaussian_conditional)

    def encode(self, y: Any, scale_index: np.ndarray, means: Any | None
               ) -> tuple[bytes, np.ndarray, Any]:
        symbols = _symbols(y, means)
        data = entropy.encode(symbols, scale_index, self.tables)
        return data, symbols, _dequantize(symbols, means)

    def decode(self, data: bytes, scale_index: np.ndarray, means: Any | None,
               lenient: bool = False) -> tuple[np.ndarray, Any]:
        symbols = entropy.decode(data, scale_index, self.tables, lenient)
        symbols = symbols.reshape(scale_index.shape[-3:])
        return symbols, _dequantize(symbols, means)
