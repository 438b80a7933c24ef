"""mbt2018-mean-checkerboard: the mean-scale hyperprior plus He et al.'s checkerboard context
("Checkerboard Context Model for Efficient Learned Image Compression", CVPR 2021), and its
two decoding passes, each with its own protected decisions.

The latent grid splits into anchors ((row + column) even, CompressAI's "even" parity) and
non-anchors. Pass 1 codes the anchors with parameters from the hyperprior alone (zero
context); pass 2 codes the non-anchors with parameters from the hyperprior and a 5 x 5
checkerboard-masked convolution of the dequantized anchors, which are integers plus grid
means and hence identical on both sides:

    encode                                         decode
    hyper = h_s(z_hat)                  (float64)  hyper = h_s(z_hat)
    pass 1: params = e(0, hyper)[anchors]          params = e(0, hyper)[anchors]
      scale_index.anchors = protect(sigma)           resolve(sigma)        (+ checksum)
      mean_grid.anchors   = protect(mean)            resolve(mean)         (+ checksum)
      y.anchors           = code(y[anchors])         decode               (+ checksum)
    pass 2: params = e(ctx(y_hat anchors), hyper)[non-anchors]   (the same on both sides)
      scale_index.non_anchors, mean_grid.non_anchors, y.non_anchors   likewise

e = entropy_parameters (1 x 1 convolutions, so it runs on the pass's positions only),
ctx = context_prediction; both run in float64 like h_s. The decoder resolves a pass's
protected indices before it entropy-decodes that pass, so every CDF index is the encoder's.
A pass tensor holds its positions in row-major order as a [1, M, 1, P] tensor (P = positions
of the pass): the latents' C order, as for the one-pass models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models import MeanScaleHyperprior
from compressai.ops import quantize_ste
from torch import nn

from reprocodec import numerics

ARCHITECTURE = "mbt2018-mean-checkerboard"
PASSES = ("anchors", "non_anchors")


def anchor_mask(h: int, w: int) -> np.ndarray:
    """Boolean h x w: True at the anchors ((row + column) even)."""
    rows, cols = np.indices((h, w))
    return (rows + cols) % 2 == 0


def pass_mask(h: int, w: int, step: int) -> np.ndarray:
    mask = anchor_mask(h, w)
    return mask if step == 0 else ~mask


def gather(t: Any, mask: np.ndarray) -> Any:
    """[N, C, h, w] -> [N, C, 1, P]: the masked positions in row-major order."""
    return t[..., torch.from_numpy(mask).to(t.device)].unsqueeze(2)


def scatter(dest: Any, values: Any, mask: np.ndarray) -> None:
    """Inverse of gather, in place: dest[..., mask] = values [N, C, 1, P]."""
    where = torch.from_numpy(mask).to(dest.device)
    dest[..., where] = values.squeeze(2).to(dest.device, dest.dtype)


class MeanScaleCheckerboard(MeanScaleHyperprior):
    """CompressAI's MeanScaleHyperprior (same g_a, g_s, h_a, h_s: a shipped mbt2018-mean
    initialises it) plus Cheng2020AnchorCheckerboard's context_prediction (M -> 2M, 5 x 5,
    checkerboard mask) and entropy_parameters (1 x 1: 4M -> 2M, scales then means).
    entropy_parameters sees cat(context, hyper), as CompressAI's CheckerboardLatentCodec."""

    def __init__(self, N: int, M: int, **kwargs: Any):
        super().__init__(N, M, **kwargs)
        self.context_prediction = CheckerboardMaskedConv2d(
            M, 2 * M, kernel_size=5, padding=2, stride=1)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, M * 6 // 3, 1),
        )

    def _anchor(self, like: Any) -> Any:
        h, w = like.shape[-2:]
        return torch.from_numpy(anchor_mask(h, w)).to(like.device)[None, None]

    def forward(self, x: Any) -> dict[str, Any]:
        """The standard two-pass checkerboard training forward (CompressAI's "twopass"):
        anchors' parameters from zero context, non-anchors' from the context of the
        STE-quantized anchors; likelihoods of y under the merged parameters (noise)."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        hyper = self.h_s(z_hat)
        anchor = self._anchor(y)
        ctx0 = torch.zeros_like(hyper)
        params0 = self.entropy_parameters(torch.cat([ctx0, hyper], 1))
        means0 = params0.chunk(2, 1)[1]
        y_hat0 = (quantize_ste(y - means0) + means0) * anchor
        params1 = self.entropy_parameters(torch.cat([self.context_prediction(y_hat0), hyper], 1))
        means1 = params1.chunk(2, 1)[1]
        y_hat1 = (quantize_ste(y - means1) + means1) * ~anchor
        params = torch.where(anchor, params0, params1)
        scales_hat, means_hat = params.chunk(2, 1)
        _, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        x_hat = self.g_s(y_hat0 + y_hat1)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def pass_params(self, hyper: Any, y_hat_anchors: Any | None, mask: np.ndarray) -> Any:
        """entropy_parameters at one pass's positions, [N, 2M, 1, P]: zero context for the
        anchors (y_hat_anchors None), else context_prediction of the anchors' y_hat (zero
        elsewhere). entropy_parameters is pointwise, so only the pass's positions run."""
        if y_hat_anchors is None:
            ctx = torch.zeros_like(gather(hyper, mask))
        else:
            ctx = gather(self.context_prediction(y_hat_anchors), mask)
        return self.entropy_parameters(torch.cat([ctx, gather(hyper, mask)], 1))

    # CompressAI's compress / decompress (evaluation: rate of the real rANS strings)

    def compress(self, x: Any) -> dict[str, Any]:
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        hyper = self.h_s(z_hat)
        h, w = y.shape[-2:]
        y_hat = torch.zeros_like(y)
        strings = []
        for step in (0, 1):
            mask = pass_mask(h, w, step)
            scales, means = self.pass_params(hyper, y_hat if step else None, mask).chunk(2, 1)
            indexes = self.gaussian_conditional.build_indexes(scales)
            y_i = gather(y, mask)
            strings.append(self.gaussian_conditional.compress(y_i, indexes, means=means))
            scatter(y_hat, self.gaussian_conditional.quantize(y_i, "dequantize", means), mask)
        return {"strings": [*strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape: Any) -> dict[str, Any]:
        z_hat = self.entropy_bottleneck.decompress(strings[2], shape)
        hyper = self.h_s(z_hat)
        n, h, w = z_hat.shape[0], 4 * int(shape[0]), 4 * int(shape[1])
        y_hat = hyper.new_zeros((n, self.M, h, w))
        for step in (0, 1):
            mask = pass_mask(h, w, step)
            scales, means = self.pass_params(hyper, y_hat if step else None, mask).chunk(2, 1)
            indexes = self.gaussian_conditional.build_indexes(scales)
            scatter(y_hat, self.gaussian_conditional.decompress(strings[step], indexes,
                                                                means=means), mask)
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


class CheckerboardY:
    """The y latent of a checkerboard model: two passes, each protected then entropy-coded.

    `decide(name, values) -> indices` is the codec's protector (encoder) or resolver
    (decoder) of one decision; `code(step, scale_index, mean_q) -> y_hat of the pass`
    entropy-codes (encoder) or entropy-decodes (decoder) the pass. Both sides call them in
    the same order: a pass's decisions are final before its symbols are coded."""

    def __init__(self, model: MeanScaleCheckerboard, latent: Any,
                 grid_means: Callable[[np.ndarray], Any]):
        self.model, self.latent, self.grid_means = model, latent, grid_means

    def run(self, hyper: Any, shape: tuple[int, int],
            decide: Callable[[str, np.ndarray], np.ndarray],
            code: Callable[[int, np.ndarray, Any], Any]) -> Any:
        """y_hat [1, M, h, w] float32 after both passes; `hyper` is h_s(z_hat) in float64."""
        h, w = shape
        y_hat = torch.zeros((1, self.model.M, h, w), dtype=torch.float32)
        with torch.no_grad():
            for step, tag in enumerate(PASSES):
                mask = pass_mask(h, w, step)
                context = numerics.prepare_input(y_hat.to(torch.float64)) if step else None
                params = self.model.pass_params(hyper, context, mask)
                sigma, mean = (_numpy64(t) for t in params.chunk(2, 1))
                del params
                scale_index = decide(f"scale_index.{tag}", sigma)
                mean_q = self.grid_means(decide(f"mean_grid.{tag}", mean))
                scatter(y_hat, code(step, scale_index, mean_q), mask)
        return y_hat

    def floats(self, hyper: Any, y_hat: Any) -> tuple[np.ndarray, np.ndarray]:
        """(sigma, mean) over the whole grid [1, M, h, w] from exact y_hat (calibration): each
        position's values from its own pass, as encode and decode compute them."""
        h, w = y_hat.shape[-2:]
        anchors = numerics.prepare_input(
            y_hat.to(torch.float64) * torch.from_numpy(anchor_mask(h, w)))
        out = torch.zeros((1, 2 * self.model.M, h, w), dtype=torch.float64)
        with torch.no_grad():
            for step in (0, 1):
                mask = pass_mask(h, w, step)
                scatter(out, self.model.pass_params(hyper, anchors if step else None, mask),
                        mask)
        sigma, mean = out.chunk(2, 1)
        return _numpy64(sigma), _numpy64(mean)


def _numpy64(t: Any) -> np.ndarray:
    return numerics.to_host(t, torch.float64)
