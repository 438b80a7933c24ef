"""The reproducible image codec: CompressAI hyperprior models with protected decisions.

Encoder and decoder are written side by side (CompressAI latent_codecs style). Every float a
discrete decision depends on is computed by a network on both sides and passes through the
safeguard, so the integers (CDF indices, mean grid points, output pixels) are identical:

    encode                                        decode
    y = g_a(x); z = h_a(y)
    z_hat = EB(z)            (exact: symbols+medians) z_hat = EB.decompress(z)
    params = h_s(z_hat)                           params = h_s(z_hat)
    scale_index = protect(sigma)                  scale_index = resolve(sigma)   (+ checksum)
    mean_q = protect(mean) / 32   (mbt only)      mean_q = resolve(mean) / 32    (+ checksum)
    y_hat = round(y - mean_q) + mean_q  ->  rANS  ->  y_hat = symbols + mean_q   (exact)
    pixels = protect(255 g_s(y_hat))              pixels = resolve(255 g_s(y_hat)) (+ checksum)

With mode `none` the decisions are CompressAI's own (each side thresholds its own floats);
the checksums still catch a flip, so the failure is reported rather than returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprocodec import container, numerics
from reprocodec.checksum import checksum, crc32
from reprocodec.errors import (
    ContainerError,
    InputError,
    ModelMismatchError,
    VerificationError,
)
from reprocodec.safeguard import DecisionQuantizer, ErrorBound, Mode, Protected, SafeguardError
from reprocodec.safeguard import protect as sg_protect
from reprocodec.safeguard import resolve as sg_resolve
from reprocodec.v1 import bitstream_pb2 as pb

from .io import DEFAULT_MAX_PIXELS, check_pixels
from .models import ModelInfo, build_model, load_checkpoint, load_shipped

LEVELS = ("decoding", "reconstruction", "both")

# Means are snapped to multiples of 1/32 (a power of two, so symbol + mean stays exact in
# float32 for |y| < 2^18). Against unit quantization of y the snapping error (<= 1/64) costs
# about (1/64)^2 / (2 sigma^2 ln 2) bits per element: < 0.01 % of the rate for sigma >= 0.11;
# a finer grid would enlarge the risky zone (2e/step) and hence the protection overhead.
MEAN_STEP = 1.0 / 32

# Pixels: v = 255 * clamp(x_hat, 0, 1) as CompressAI does, rounded on the uniform grid of
# step 1 (thresholds at 0.5 .. 254.5 within [0, 255]), so the index is the 8-bit value 0..255.
# Clamping is 1-Lipschitz, so it keeps the error bound; a clamped 0 or 255 is half a level from
# any threshold, so saturated pixels are never risky. The uniform quantizer is arithmetic,
# about 10x faster than a 255-threshold search on a million pixels.
PIXEL_STEP = 1.0



@dataclass
class TensorStats:
    name: str
    mode: str
    level: str
    risky_count: int
    candidate_count: int
    side_info_bytes: int
    matched: bool = True


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8 H x W x C, C = 1 or 3
    bit_exact: bool  # output checksum equals the encoder's
    tensors: list[TensorStats] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Decision:
    """One protected decision: how a float tensor becomes integers, and within what bound."""

    name: str
    level: str
    quantizer: DecisionQuantizer
    bound: ErrorBound


def _bound_from_info(info: ModelInfo, tensor: str) -> ErrorBound:
    b = info.tensor_bound(tensor)
    return ErrorBound(b["kind"], float(b["value"]))


class ImageCodec:
    def __init__(self, model: Any, info: ModelInfo, max_pixels: int = DEFAULT_MAX_PIXELS):
        import torch

        self.info = info
        self.max_pixels = max_pixels
        self.profile = numerics.current_profile()
        self.model = numerics.prepare_module(model.eval())
        # The entropy models are integer tables driven from the CPU whatever the profile.
        self.model.entropy_bottleneck.cpu()
        self.model.gaussian_conditional.cpu()
        if self.profile.synthesis_float64:
            self.model.h_s.double()
            self.model.g_s.double()
        self.has_means = info.architecture == "mbt2018-mean"
        self.weights_sha256 = bytes.fromhex(info.weights_sha256)
        gc = self.model.gaussian_conditional
        table = gc.scale_table.detach().cpu().to(torch.float64).numpy()
        self.decisions = {
            "scale_index": _Decision(
                "scale_index",
                "decoding",
                # build_indexes: index = #{s in table[:-1] : sigma > s}
                DecisionQuantizer.from_thresholds(table[:-1]),
                _bound_from_info(info, "scale_index"),
            ),
            "mean_grid": _Decision(
                "mean_grid",
                "decoding",
                DecisionQuantizer.uniform(MEAN_STEP),
                _bound_from_info(info, "mean_grid"),
            ),
            "pixels": _Decision(
                "pixels",
                "reconstruction",
                DecisionQuantizer.uniform(PIXEL_STEP),
                _bound_from_info(info, "pixels"),
            ),
        }
        for d in self.decisions.values():
            d.quantizer.check_bound(d.bound)

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, name: str, weights_dir: str | None = None) -> ImageCodec:
        model, info = load_shipped(name, Path(weights_dir) if weights_dir else None)
        return cls(model, info)

    @classmethod
    def from_checkpoint(cls, path: str, architecture: str) -> ImageCodec:
        model, info = load_checkpoint(path, architecture)
        return cls(model, info)

    @classmethod
    def from_model(
        cls,
        model: Any,
        name: str,
        weights_sha256: str,
        bounds: dict[str, dict[str, Any]] | None = None,
        architecture: str | None = None,
    ) -> ImageCodec:
        """Wrap an in-memory CompressAI model (its CDF tables must be built already)."""
        if architecture is None:
            architecture = (
                "mbt2018-mean" if type(model).__name__ == "MeanScaleHyperprior"
                else "bmshj2018-hyperprior"
            )
        info = ModelInfo(
            name=name, architecture=architecture, quality=0, weights_sha256=weights_sha256,
            bounds=dict(bounds or {}), N=int(model.N), M=int(model.M),
        )
        return cls(model, info)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Any], architecture: str, name: str,
                        weights_sha256: str) -> ImageCodec:
        return cls.from_model(build_model(architecture, state_dict), name, weights_sha256,
                              architecture=architecture)

    # ----------------------------------------------------------------------- shared steps

    def _decision_mode(self, name: str, mode: Mode, level: str) -> Mode:
        wanted = self.decisions[name].level
        return mode if level in (wanted, "both") else Mode.NONE

    def _z_hat_and_params(self, z_hat: Any) -> tuple[Any, Any]:
        """h_s on the exact z_hat -> (sigma, mean) as float64 numpy; mean is None for bmshj."""
        import torch

        dtype = numerics.synthesis_dtype()
        with torch.no_grad():
            params = self.model.h_s(numerics.prepare_input(z_hat.to(dtype)))
        if self.has_means:
            sigma, mean = params.chunk(2, 1)
            return _numpy64(sigma), _numpy64(mean)
        return _numpy64(params), None

    def _synthesis(self, y_hat: Any, height: int, width: int, channels: int) -> np.ndarray:
        """255 * clamp(g_s(y_hat), 0, 1), cropped, float64 H x W x C (greyscale: mean of 3)."""
        import torch

        dtype = numerics.synthesis_dtype()
        with torch.no_grad():
            x_hat = self.model.g_s(numerics.prepare_input(y_hat.to(dtype)))
            # Crop, then float64: the same IEEE operations as on the whole padded tensor, on
            # fewer elements, and H x W x C contiguous for the safeguard's single pass.
            v = (x_hat[0, :, :height, :width].permute(1, 2, 0).to(torch.float64) * 255.0)
            v = v.clamp_(0, 255).contiguous().numpy()
        if channels == 1:
            v = v.mean(axis=2, keepdims=True)
        return v

    def _means_tensor(self, mean_index: np.ndarray) -> Any:
        import torch

        # index * 2^-5 is exact in float32, so both sides hold the identical grid value.
        return torch.from_numpy((mean_index * MEAN_STEP).astype(np.float32))

    # ----------------------------------------------------------------------------- encode

    def encode(self, pixels: np.ndarray, mode: Mode | str = Mode.SYNDROME,
               level: str = "both", capture: dict | None = None) -> pb.Bitstream:
        """capture (benchmarks, calibration): filled with each decision's float values and
        indices, and the exact latents z_hat / y_hat."""
        import torch
        import torch.nn.functional as F

        try:
            mode = Mode(mode)
        except ValueError:
            raise InputError(f"unknown safeguard mode {mode!r}; use one of "
                             f"{', '.join(m.value for m in Mode)}") from None
        if level not in LEVELS:
            raise InputError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
        pixels = check_pixels(pixels, self.max_pixels)
        height, width, channels = pixels.shape
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255.0
        if channels == 1:
            x = x.expand(1, 3, height, width)
        pad_h, pad_w = _padded(height), _padded(width)
        # Replicate padding codes cheaper than zeros (no artificial edge); cropped away later.
        x = F.pad(x, (0, pad_w - width, 0, pad_h - height), mode="replicate")
        eb, gc = self.model.entropy_bottleneck, self.model.gaussian_conditional

        with torch.no_grad():
            y = self.model.g_a(numerics.prepare_input(x))
            z = self.model.h_a(y if self.has_means else torch.abs(y))
            y, z = y.float().cpu().contiguous(), z.float().cpu().contiguous()
            z_strings = eb.compress(z)
            z_hat = eb.decompress(z_strings, z.shape[-2:])

        sigma, mean = self._z_hat_and_params(z_hat)
        protected = []
        scale_index = self._protect("scale_index", sigma, mode, level, protected, capture)
        mean_q = None
        if self.has_means:
            mean_q = self._means_tensor(
                self._protect("mean_grid", mean, mode, level, protected, capture))

        indexes = torch.from_numpy(scale_index.astype(np.int32))
        y_strings = gc.compress(y, indexes, means=mean_q)
        y_hat = gc.quantize(y, "dequantize", mean_q)  # = symbols + mean_q, as decode rebuilds

        v_pixels = self._synthesis(y_hat, height, width, channels)
        if level in ("reconstruction", "both"):
            output = self._protect("pixels", v_pixels, mode, level, protected, capture)
        else:
            output = self.decisions["pixels"].quantizer.index(v_pixels)
        output = np.clip(output, 0, 255).astype(np.uint8)  # noise profile can step outside
        _capture(capture, z_hat=z_hat, y_hat=y_hat, output=output)

        msg = pb.Bitstream(
            magic=container.MAGIC,
            format_version=container.FORMAT_VERSION,
            codec=pb.CODEC_KIND_IMAGE,
            model=self.info.name,
            weights_sha256=self.weights_sha256,
            image=pb.ImageHeader(height=height, width=width, channels=channels),
            output_checksum=checksum(output),
            encoder_profile=self.profile.name,
        )
        msg.payloads.append(container.make_payload("z", z_strings[0], list(z.shape[1:])))
        msg.payloads.append(container.make_payload("y", y_strings[0], list(y.shape[1:])))
        msg.protected.extend(protected)
        return msg

    def _protect(self, name: str, values: np.ndarray, mode: Mode, level: str,
                 out: list, capture: dict | None) -> np.ndarray:
        d = self.decisions[name]
        tensor_mode = self._decision_mode(name, mode, level)
        if tensor_mode is Mode.NONE:  # plain CompressAI decision: skip the risk analysis
            p = Protected(d.quantizer.index(values), b"", Mode.NONE, 0, 0)
        else:
            p = sg_protect(values, d.quantizer, d.bound, tensor_mode)
        out.append(container.make_protected(name, d.level, p, d.bound))
        _capture(capture, **{name: values, f"{name}_indices": p.indices})
        return p.indices

    # ----------------------------------------------------------------------------- decode

    def decode(self, msg: pb.Bitstream, verify: bool = True,
               capture: dict | None = None) -> DecodedImage:
        """Decode a validated container. verify=False (benchmarks only) decodes on past a
        failed index check so that the damage plain CompressAI would do can be measured."""
        import torch

        start = time.perf_counter()
        container.validate(msg)  # framing, CRCs, ranges: before any byte reaches rANS
        height, width, channels = self._check_header(msg)
        pad_h, pad_w = _padded(height), _padded(width)
        eb, gc = self.model.entropy_bottleneck, self.model.gaussian_conditional
        m = self.model.M
        z_bytes = _payload(msg, "z", [eb.channels, pad_h // 64, pad_w // 64])
        y_bytes = _payload(msg, "y", [m, pad_h // 16, pad_w // 16])
        prot = {t.name: t for t in msg.protected}
        _check_protected_set(prot, self.has_means)

        with torch.no_grad():
            z_hat = eb.decompress([z_bytes], (pad_h // 64, pad_w // 64))

        sigma, mean = self._z_hat_and_params(z_hat)
        stats: list[TensorStats] = []
        scale_index = self._resolve(prot["scale_index"], sigma, verify, stats, capture)
        mean_q = None
        if self.has_means:
            mean_q = self._means_tensor(
                self._resolve(prot["mean_grid"], mean, verify, stats, capture))

        indexes = torch.from_numpy(scale_index.astype(np.int32))
        y_hat = gc.decompress([y_bytes], indexes, torch.float32, means=mean_q)

        v_pixels = self._synthesis(y_hat, height, width, channels)
        if "pixels" in prot:
            output = self._resolve(prot["pixels"], v_pixels, verify, stats, capture)
        else:  # unprotected: CompressAI's own rounding of this decoder's floats
            pix = self.decisions["pixels"]
            output = pix.quantizer.index(numerics.perturb("pixels", v_pixels, pix.bound))
        output = np.clip(output, 0, 255).astype(np.uint8)  # noise profile can step outside
        _capture(capture, z_hat=z_hat, y_hat=y_hat, output=output)

        bit_exact = checksum(output) == msg.output_checksum
        return DecodedImage(output, bit_exact, stats, time.perf_counter() - start)

    def _resolve(self, t: pb.ProtectedTensor, values: np.ndarray, verify: bool,
                 stats: list, capture: dict | None) -> np.ndarray:
        d = self.decisions[t.name]
        mode = container.mode_from_proto(t.mode)
        if list(t.shape) != list(values.shape):
            raise ContainerError(
                f"protected tensor {t.name} has shape {list(t.shape)}, the model computes "
                f"{list(values.shape)}"
            )
        bound = container.bound_from_proto(t.bound)
        try:
            d.quantizer.check_bound(bound)
        except SafeguardError as exc:
            raise ContainerError(f"protected tensor {t.name}: {exc}") from exc
        values = numerics.perturb(t.name, values, bound)
        try:
            if mode is Mode.NONE:  # this decoder's own decision, as plain CompressAI
                indices = d.quantizer.index(values)
            else:
                indices = sg_resolve(values, d.quantizer, bound, t.side_info, mode)
            matched = checksum(indices) == t.indices_checksum
        except SafeguardError as exc:
            if verify:
                raise VerificationError(_verification_message(t.name, str(exc))) from exc
            indices, matched = d.quantizer.index(values), False
        stats.append(TensorStats(t.name, mode.value, d.level, t.risky_count, t.candidate_count,
                                 len(t.side_info), matched))
        _capture(capture, **{t.name: values, f"{t.name}_indices": indices})
        if not matched and verify:
            raise VerificationError(_verification_message(
                t.name, "its indices do not reproduce the encoder's checksum"))
        return indices

    def _check_header(self, msg: pb.Bitstream) -> tuple[int, int, int]:
        if msg.codec != pb.CODEC_KIND_IMAGE:
            raise ContainerError("not an image bitstream")
        if bytes(msg.weights_sha256) != self.weights_sha256:
            raise ModelMismatchError(
                f"stream was encoded with model {msg.model!r} weights "
                f"{bytes(msg.weights_sha256).hex()[:12]}.., this decoder has {self.info.name!r} "
                f"weights {self.weights_sha256.hex()[:12]}..: decode with the encoder's model"
            )
        if msg.WhichOneof("header") != "image":
            raise ContainerError("image bitstream without an image header")
        h, w, c = msg.image.height, msg.image.width, msg.image.channels
        if c not in (1, 3) or h == 0 or w == 0 or h * w > self.max_pixels:
            raise ContainerError(f"image header out of range: {h} x {w} x {c}")
        return h, w, c


    # ------------------------------------------------------------------------ calibration

    def network_floats(self, z_hat: Any, y_hat: Any, height: int, width: int,
                       channels: int) -> dict[str, np.ndarray]:
        """The protected float tensors this process's numerics compute from exact latents
        (what `reprocodec calibrate` compares across profiles)."""
        sigma, mean = self._z_hat_and_params(z_hat)
        out = {"scale_index": sigma, "pixels": self._synthesis(y_hat, height, width, channels)}
        if mean is not None:
            out["mean_grid"] = mean
        return out


def _capture(capture: dict | None, **items: Any) -> None:
    if capture is not None:
        capture.update(items)


def _numpy64(t: Any) -> np.ndarray:
    import torch

    return t.detach().to("cpu", torch.float64).contiguous().numpy()


def _padded(n: int) -> int:
    """Height/width padded to the models' 2^6 = 64 downsampling factor."""
    return (n + 63) // 64 * 64


def _payload(msg: pb.Bitstream, name: str, shape: list[int]) -> bytes:
    """A payload's bytes after checking its framing: CompressAI's rANS decoder does no bounds
    checks, so nothing reaches it that the container's CRC and the header do not vouch for."""
    found = [p for p in msg.payloads if p.name == name]
    if len(found) != 1:
        raise ContainerError(f"image bitstream must carry exactly one payload {name!r}")
    p = found[0]
    if list(p.shape) != shape:
        raise ContainerError(f"payload {name!r} has shape {list(p.shape)}, header implies {shape}")
    if crc32(p.data) != p.crc32:
        raise ContainerError(f"payload {name!r} fails its CRC-32: the stream is corrupt")
    if not p.data:
        raise ContainerError(f"payload {name!r} is empty")
    return bytes(p.data)


def _check_protected_set(prot: dict, has_means: bool) -> None:
    need = {"scale_index"} | ({"mean_grid"} if has_means else set())
    allowed = need | {"pixels"}
    if not need <= prot.keys() or not prot.keys() <= allowed:
        raise ContainerError(
            f"image bitstream protects {sorted(prot)}, expected {sorted(need)} (+ pixels)"
        )
    for t in prot.values():
        want = "reconstruction" if t.name == "pixels" else "decoding"
        if t.level != container.LEVELS[want]:
            raise ContainerError(f"protected tensor {t.name} must be at the {want} level")


def _verification_message(name: str, detail: str) -> str:
    return (
        f"decode failed verification on {name}: {detail}. This decoder's numerics differ from "
        "the encoder's by more than the stream's error bound; re-encode with a protected "
        "--safeguard mode or calibrated bounds, or decode on a platform matching the encoder"
    )
