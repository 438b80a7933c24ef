"""GPU numerics reproduced on a CPU, for the `emulate-tf32` and `emulate-splitk` profiles.

A GPU decoder differs from a CPU one in two ways that matter here, and both can be had on a
CPU by wrapping torch's convolution and linear functionals (process-global, like every other
profile setting; nn.Conv2d, ConvTranspose2d, Linear and CompressAI's GDN all call these):

* `emulate-tf32`: Ampere/Hopper tensor cores with `allow_tf32` (PyTorch's default for cuDNN
  convolutions) round float32 inputs and weights to TF32's 10-bit mantissa and accumulate in
  float32. Emulated by rounding both operands to nearest-even on 10 mantissa bits. float64
  operations are untouched, as on the hardware (TF32 applies to float32 only).
* `emulate-splitk`: GPU convolution and GEMM kernels split the reduction (input channels x
  kernel taps) into chunks summed separately and then added: another summation order.
  Emulated by computing each convolution / linear layer as the sum of SPLITS partial results
  over input-channel groups, in the working dtype.

Both keep shapes, dtypes and devices; only the rounding of the results changes.
"""

from __future__ import annotations

from typing import Any

SPLITS = 4  # partial sums per reduction (cuBLAS/cuDNN split-K factors are typically 2..16)
_TF32_DROP = 13  # float32 has 23 mantissa bits, TF32 10


def round_to_tf32(t: Any) -> Any:
    """float32 tensor rounded to nearest-even on TF32's 10-bit mantissa (others untouched)."""
    import torch

    if t is None or t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    # round half to even on the dropped bits: add 0x0FFF plus the lowest kept bit, then clear
    keep_lsb = (bits >> _TF32_DROP) & 1
    rounded = (bits + ((1 << (_TF32_DROP - 1)) - 1) + keep_lsb) & ~((1 << _TF32_DROP) - 1)
    finite = torch.isfinite(t)
    return torch.where(finite, rounded.view(torch.float32), t)


def _split_sum(parts: list[Any]) -> Any:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def install(mode: str) -> None:
    """Wrap torch.nn.functional's conv2d, conv_transpose2d and linear for `mode`."""
    import torch.nn.functional as F

    conv2d, conv_t2d, linear = F.conv2d, F.conv_transpose2d, F.linear

    if mode == "tf32":
        def tf32_conv2d(x, w, b=None, *args, **kwargs):
            return conv2d(round_to_tf32(x), round_to_tf32(w), b, *args, **kwargs)

        def tf32_conv_t2d(x, w, b=None, *args, **kwargs):
            return conv_t2d(round_to_tf32(x), round_to_tf32(w), b, *args, **kwargs)

        def tf32_linear(x, w, b=None):
            return linear(round_to_tf32(x), round_to_tf32(w), b)

        F.conv2d, F.conv_transpose2d, F.linear = tf32_conv2d, tf32_conv_t2d, tf32_linear
        return
    if mode != "splitk":
        raise ValueError(f"unknown GPU emulation {mode!r}")

    def chunks(n: int) -> list[slice]:
        step = -(-n // SPLITS)
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]

    def splitk_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        if groups != 1 or w.shape[1] < 2:
            return conv2d(x, w, b, stride, padding, dilation, groups)
        parts = [conv2d(x[:, s], w[:, s], None, stride, padding, dilation) for s in
                 chunks(w.shape[1])]
        out = _split_sum(parts)
        return out if b is None else out + b.reshape(1, -1, 1, 1)

    def splitk_conv_t2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                        dilation=1):
        if groups != 1 or w.shape[0] < 2:
            return conv_t2d(x, w, b, stride, padding, output_padding, groups, dilation)
        parts = [conv_t2d(x[:, s], w[s], None, stride, padding, output_padding, 1, dilation)
                 for s in chunks(w.shape[0])]
        out = _split_sum(parts)
        return out if b is None else out + b.reshape(1, -1, 1, 1)

    def splitk_linear(x, w, b=None):
        if w.shape[1] < 2:
            return linear(x, w, b)
        out = _split_sum([linear(x[..., s], w[:, s]) for s in chunks(w.shape[1])])
        return out if b is None else out + b

    F.conv2d, F.conv_transpose2d, F.linear = splitk_conv2d, splitk_conv_t2d, splitk_linear
