"""The reproducible image codec: CompressAI hyperprior models with protected decisions.

Encoder and decoder are written side by side (CompressAI latent_codecs style) from small
mirrored units: two entropy-coded latents (latents.py) and three ProtectedDecisions
(reprocodec/decision.py). Every float a discrete decision depends on is computed by a network
on both sides and goes through a decision, so the integers (CDF indices, mean grid points,
output pixels) are identical; every integer the entropy decoder returns is checked against
the encoder's symbol checksum before any output exists:

    encode                                        decode
    y = g_a(x); z = h_a(y)
    z_hat = hyper.encode(z)       (exact)         z_hat = hyper.decode(z)            (+ checksum)
    params = h_s(z_hat)                           params = h_s(z_hat)
    scale_index = protect(sigma)                  scale_index = resolve(sigma)       (+ checksum)
    mean_q = protect(mean) / 32   (mbt only)      mean_q = resolve(mean) / 32        (+ checksum)
    y_hat = latent.encode(y, scale_index, mean_q) y_hat = latent.decode(y, ...)      (+ checksum)
    pixels = protect(255 g_s(y_hat))              pixels = resolve(255 g_s(y_hat))   (+ checksum)

mbt2018-mean-checkerboard replaces the scale_index / mean_grid / y lines with two passes
(checkerboard.py): anchors, then non-anchors from the anchors' context, each pass's decisions
(scale_index.<pass>, mean_grid.<pass>) protected and resolved before that pass's payload
(y.<pass>) is entropy-coded or decoded.

With mode `none` the decisions are CompressAI's own (each side thresholds its own floats);
the checksums still catch a flip, so the failure is reported rather than returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprocodec import cancel, container, numerics, options
from reprocodec.checksum import checksum
from reprocodec.decision import (
    DecisionStats,
    ProtectedDecision,
    bound_from_info,
    coverage_note,
)
from reprocodec.errors import ContainerError, ModelMismatchError, VerificationError
from reprocodec.numerics import to_host
from reprocodec.safeguard import DecisionQuantizer, Mode, SafeguardError
from reprocodec.safeguard import warm_up as warm_up_safeguard
from reprocodec.v1 import bitstream_pb2 as pb

from .io import DEFAULT_MAX_PIXELS, check_pixels
from .latents import HyperLatent, Latent
from .models import (
    CHECKERBOARD_ARCHITECTURES,
    DEFAULT_BOUNDS,
    MEAN_ARCHITECTURES,
    ModelInfo,
    load_shipped,
)

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

# Synthesis tiles for large images (see ImageCodec._synthesis): 32 latents = 512 px, with 4
# latents of context (2 needed). Images up to 2 tiles' area (0.5 MP) run whole. A tile's
# float64 transposed convolutions take about 0.5 GB (their column buffers: 64 x 25 doubles per
# input element), whatever the image size.
SYNTHESIS_TILE, SYNTHESIS_HALO = 32, 4
# Analysis tiles (encoder only, see ImageCodec._analysis): 64 latents = 1024 px, 4 latents of
# context (every latent depends on pixels within 30 of its 16 x 16 block: 2 latents needed).
# A float32 tile takes about 0.4 GB; images up to 2 tiles' area (2.1 MP) run whole.
ANALYSIS_TILE, ANALYSIS_HALO = 64, 4
# Pixel arrays are clipped, converted and hashed this many rows at a time, so that no
# full-image int64 or float64 temporary exists beside the ones the safeguard needs.
_ROWS_PER_CHUNK = 256
# warm_up's image: WARM_UP_SIDE x WARM_UP_SIDE RGB (four 16-pixel blocks a side)
WARM_UP_SIDE = 64


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8 H x W x C, C = 1 or 3
    bit_exact: bool  # output checksum equals the encoder's
    tensors: list[DecisionStats] = field(default_factory=list)
    seconds: float = 0.0


class ImageCodec:
    kind = "image"

    def __init__(self, model: Any, info: ModelInfo, max_pixels: int = DEFAULT_MAX_PIXELS):
        import torch

        self.info = info
        self.max_pixels = max_pixels
        self.profile = numerics.current_profile()
        self.model = numerics.prepare_module(model.eval())
        # The decision networks (h_s: scales and means; g_s: pixels) run in float64 on every
        # device: two platforms' float64 results differ by ~1e-13 relative, so the calibrated
        # bounds and the risky zones they imply are ~10^7 times smaller than in float32 and
        # protection costs almost nothing; TF32 never applies to them. The analysis transforms
        # only run on the encoder, so they keep the device's float32 (and its speed).
        self.model.h_s.double()
        self.model.g_s.double()
        self.has_means = info.architecture in MEAN_ARCHITECTURES
        self.weights_sha256 = bytes.fromhex(info.weights_sha256)
        self.hyper = HyperLatent(self.model.entropy_bottleneck)
        self.latent = Latent(self.model.gaussian_conditional)
        self.checkerboard: Any = None
        if info.architecture in CHECKERBOARD_ARCHITECTURES:
            from .checkerboard import CheckerboardY

            # the context networks feed the same decisions as h_s: float64 as well
            self.model.context_prediction.double()
            self.model.entropy_parameters.double()
            self.checkerboard = CheckerboardY(self.model, self.latent, self._grid_means)
        table = self.model.gaussian_conditional.scale_table.detach().cpu().to(torch.float64)
        bounds = DEFAULT_BOUNDS | info.bounds
        self.decisions = {
            # build_indexes: index = #{s in table[:-1] : sigma > s}
            "scale_index": ProtectedDecision(
                "scale_index", "decoding",
                DecisionQuantizer.from_thresholds(to_host(table)[:-1]),
                bound_from_info(bounds, "scale_index")),
            "mean_grid": ProtectedDecision(
                "mean_grid", "decoding", DecisionQuantizer.uniform(MEAN_STEP),
                bound_from_info(bounds, "mean_grid")),
            "pixels": ProtectedDecision(
                "pixels", "reconstruction", DecisionQuantizer.uniform(PIXEL_STEP),
                bound_from_info(bounds, "pixels")),
        }
        if self.checkerboard is not None:
            from .checkerboard import PASSES

            # One decision per pass and kind, on the bounds of scale_index / mean_grid (the
            # same networks' floats: `network_floats` reports both passes under those names,
            # so calibration measures one bound that covers both passes).
            for tag in PASSES:
                for kind in ("scale_index", "mean_grid"):
                    d = self.decisions[kind]
                    self.decisions[f"{kind}.{tag}"] = ProtectedDecision(
                        f"{kind}.{tag}", d.level, d.quantizer, d.bound)

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, name: str, weights_dir: str | None = None) -> ImageCodec:
        model, info = load_shipped(name, Path(weights_dir) if weights_dir else None)
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
            architecture = {
                "MeanScaleHyperprior": "mbt2018-mean",
                "MeanScaleCheckerboard": "mbt2018-mean-checkerboard",
            }.get(type(model).__name__, "bmshj2018-hyperprior")
        info = ModelInfo(
            name=name, architecture=architecture, quality=0, weights_sha256=weights_sha256,
            bounds=dict(bounds or {}), N=int(model.N), M=int(model.M),
        )
        return cls(model, info)

    # ----------------------------------------------------------------------- shared steps

    def _hyper(self, z_hat: Any) -> Any:
        """h_s on the exact z_hat, float64 (a tensor on the profile's device)."""
        import torch

        with torch.no_grad():
            return self.model.h_s(numerics.prepare_input(z_hat.to(torch.float64)))

    def _params(self, z_hat: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """h_s on the exact z_hat -> (sigma, mean) as float64 numpy; mean is None for bmshj."""
        params = self._hyper(z_hat)
        if self.has_means:
            sigma, mean = params.chunk(2, 1)
            return _numpy64(sigma), _numpy64(mean)
        return _numpy64(params), None

    def _synthesis(self, y_hat: Any, height: int, width: int, channels: int) -> np.ndarray:
        """255 * clamp(g_s(y_hat), 0, 1), cropped, float64 H x W x C (greyscale: mean of 3).

        Large images go through g_s in tiles of SYNTHESIS_TILE latents with SYNTHESIS_HALO
        latents of context on each side, so memory stays bounded (float64 activations at full
        resolution take ~1 KB per pixel). Every output pixel depends on latents within 2 of
        its own (four stride-2 transposed 5x5 convolutions: 1 + 1/2 + 1/4 + 1/8 latents; GDN
        is 1x1), so a tile computes the same expression as the whole image; only the order of
        float64 additions may differ (~1e-13), far inside the pixel bound: encoder and
        decoder need not even tile alike. The only full-size array is the result (8 bytes per
        pixel and channel); each tile writes its part of it directly."""
        import torch

        h, w = y_hat.shape[-2:]
        out = np.empty((height, width, channels), dtype=np.float64)
        out_t = torch.from_numpy(out)
        with torch.no_grad():
            for r0, r1, c0, c1 in _tiles(h, w, SYNTHESIS_TILE):
                oy0, oy1, ox0, ox1 = 16 * r0, min(16 * r1, height), 16 * c0, min(16 * c1, width)
                if oy0 >= oy1 or ox0 >= ox1:  # a tile of padding only
                    continue
                a0, a1 = max(0, r0 - SYNTHESIS_HALO), min(h, r1 + SYNTHESIS_HALO)
                b0, b1 = max(0, c0 - SYNTHESIS_HALO), min(w, c1 + SYNTHESIS_HALO)
                x_hat = self.model.g_s(numerics.prepare_input(
                    y_hat[..., a0:a1, b0:b1].to(torch.float64)))
                # Crop, then scale: the same IEEE operations as on the whole tensor, on fewer
                # elements, H x W x C for the safeguard's single pass.
                v = x_hat[0, :, oy0 - 16 * a0:oy1 - 16 * a0, ox0 - 16 * b0:ox1 - 16 * b0]
                del x_hat
                v = torch.from_numpy(_numpy64(v.permute(1, 2, 0).to(torch.float64) * 255.0))
                v.clamp_(0, 255)
                if channels == 1:  # the mean of each pixel's 3 values, as numpy computes it
                    v = torch.from_numpy(v.numpy().mean(axis=2, keepdims=True))
                out_t[oy0:oy1, ox0:ox1] = v
        return out

    def _analysis(self, pixels: np.ndarray) -> Any:
        """y = g_a(x) for uint8 H x W x C pixels, x = pixels / 255 in float32, replicate-padded
        to the 64-pixel grid (greyscale as 3 equal channels), in tiles of ANALYSIS_TILE
        latents with ANALYSIS_HALO latents of context, so that no full-resolution float
        activation exists (g_a's first layer alone would take 1 KB per pixel).

        Encoder only: y is the encoder's choice, the decoder never recomputes it, so the
        tiles need not agree bit for bit with a whole-image g_a (they compute the same
        expression: every latent depends on the pixels within 30 of its 16 x 16 block, inside
        the halo; only float32 summation order may differ)."""
        import torch

        height, width, _ = pixels.shape
        h, w = _padded(height) // 16, _padded(width) // 16
        y = None
        with torch.no_grad():
            for r0, r1, c0, c1 in _tiles(h, w, ANALYSIS_TILE):
                a0, a1 = max(0, r0 - ANALYSIS_HALO), min(h, r1 + ANALYSIS_HALO)
                b0, b1 = max(0, c0 - ANALYSIS_HALO), min(w, c1 + ANALYSIS_HALO)
                x = _input_tile(pixels, 16 * a0, 16 * a1, 16 * b0, 16 * b1)
                y_tile = self.model.g_a(numerics.prepare_input(x))
                del x
                if y is None:
                    y = torch.empty((1, y_tile.shape[1], h, w), dtype=y_tile.dtype,
                                    device=y_tile.device)
                y[..., r0:r1, c0:c1] = y_tile[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0]
                del y_tile
        return y

    def _grid_means(self, mean_index: np.ndarray) -> Any:
        import torch

        # index * 2^-5 is exact in float32, so both sides hold the identical grid value.
        return torch.from_numpy((mean_index * MEAN_STEP).astype(np.float32))

    def warm_up(self) -> None:
        """Encode and decode (verified) a small gradient image: torch's first inference and
        the entropy and safeguard kernels' loading (or compiling) happen now, not in the
        first request (a fresh process's first encode of a 400 x 267 image took 0.54-2.15 s,
        the next 0.21-0.26; after this 0.29-0.82 s: torch still prepares each new shape).
        The services call it before they report SERVING. The safeguard's syndrome kernels
        first: an image with no risky element runs none."""
        warm_up_safeguard()
        y, x = np.mgrid[0:WARM_UP_SIDE, 0:WARM_UP_SIDE]
        pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
        msg = container.unpack(container.pack(self.encode(pixels)))
        with numerics.failures_expected():
            self.decode(msg)

    # ----------------------------------------------------------------------------- encode

    def encode(self, pixels: np.ndarray, mode: Mode | str = Mode.SYNDROME,
               level: str = "both", capture: dict | None = None) -> pb.Bitstream:
        """capture (benchmarks, calibration): filled with each decision's float values and
        indices, and the exact latents z_hat / y_hat."""
        import torch

        mode, level = options.parse_mode(mode), options.parse_level(level)
        pixels = check_pixels(pixels, self.max_pixels)
        height, width, channels = pixels.shape
        y = self._analysis(pixels)
        with torch.no_grad():
            z = self.model.h_a(y if self.has_means else torch.abs(y))

        records: list[pb.ProtectedTensor] = []
        protect = _Protector(self.decisions, mode, level, records, capture)
        z_bytes, z_symbols, z_hat = self.hyper.encode(z)
        if self.checkerboard is not None:
            y_payloads, y_hat = self._encode_checkerboard(y, z_hat, protect)
        else:
            sigma, mean = self._params(z_hat)
            scale_index = protect("scale_index", sigma)
            mean_q = self._grid_means(protect("mean_grid", mean)) if self.has_means else None
            y_bytes, y_symbols, y_hat = self.latent.encode(y, scale_index, mean_q)
            y_payloads = [("y", y_bytes, y_symbols)]
            del sigma, mean, scale_index
        del y, z
        cancel.check()
        output = _to_uint8(protect("pixels", self._synthesis(y_hat, height, width, channels)))
        _capture(capture, z_hat=z_hat, y_hat=y_hat, output=output)

        msg = pb.Bitstream(
            magic=container.MAGIC,
            codec=pb.CODEC_KIND_IMAGE,
            model=self.info.name,
            weights_sha256=self.weights_sha256,
            image=pb.ImageHeader(height=height, width=width, channels=channels),
            output_checksum=pixel_checksum(output),
            encoder_profile=self.profile.name,
        )
        msg.format_version = container.required_version(msg)
        msg.payloads.append(container.make_payload("z", z_bytes, z_symbols.shape, z_symbols))
        for name, data, symbols in y_payloads:
            msg.payloads.append(container.make_payload(name, data, symbols.shape, symbols))
        msg.protected.extend(records)
        return msg

    # ----------------------------------------------------------------------------- decode

    def decode(self, msg: pb.Bitstream, verify: bool = True,
               capture: dict | None = None) -> DecodedImage:
        """Decode a validated container. verify=False (benchmarks only) decodes on past a
        failed check so that the damage plain CompressAI would do can be measured."""
        start = time.perf_counter()
        container.validate(msg)  # framing, CRCs, ranges: before any byte reaches rANS
        height, width, channels = self._check_header(msg)
        pad_h, pad_w = _padded(height), _padded(width)
        h, w, m = pad_h // 16, pad_w // 16, self.model.M
        if self.checkerboard is not None:
            from .checkerboard import PASSES, pass_mask

            counts = [int(pass_mask(h, w, step).sum()) for step in (0, 1)]
            y_shapes = {f"y.{tag}": [m, 1, n] for tag, n in zip(PASSES, counts, strict=True)}
            shapes = {f"{kind}.{tag}": [1, m, 1, n] for tag, n in zip(PASSES, counts, strict=True)
                      for kind in ("scale_index", "mean_grid")}
        else:
            y_shapes = {"y": [m, h, w]}
            shapes = {"scale_index": [1, m, h, w], "mean_grid": [1, m, h, w]}
        shapes["pixels"] = [height, width, channels]
        payloads = _payloads(msg, {"z": [self.hyper.channels, pad_h // 64, pad_w // 64]}
                             | y_shapes)
        z_rec = payloads["z"]
        records = _records(msg, {n for n in shapes if n != "pixels"
                                 and (self.has_means or not n.startswith("mean_grid"))})
        # Every record is checked (shape, level, bound) before any network runs.
        for name, t in records.items():
            self.decisions[name].check_record(t, shapes[name])

        note = coverage_note(self.info.bounds, msg.encoder_profile, self.profile.name)
        stats: list[DecisionStats] = []
        resolve = _Resolver(self.decisions, records, verify, stats, capture, note)
        z_symbols, z_hat = self.hyper.decode(z_rec.data, pad_h // 64, pad_w // 64, not verify)
        _check_symbols(z_rec, z_symbols, verify)
        if self.checkerboard is not None:
            y_hat = self._decode_checkerboard(payloads, z_hat, (h, w), resolve, verify)
        else:
            y_rec = payloads["y"]
            sigma, mean = self._params(z_hat)
            scale_index = resolve("scale_index", sigma)
            mean_q = self._grid_means(resolve("mean_grid", mean)) if self.has_means else None
            y_symbols, y_hat = self.latent.decode(y_rec.data, scale_index, mean_q, not verify)
            _check_symbols(y_rec, y_symbols, verify)
            del sigma, mean, scale_index
        cancel.check()
        output = _to_uint8(resolve("pixels", self._synthesis(y_hat, height, width, channels)))
        _capture(capture, z_hat=z_hat, y_hat=y_hat, output=output)

        bit_exact = pixel_checksum(output) == msg.output_checksum
        if verify and "pixels" in records and not bit_exact:
            # The pixel indices reproduced their checksum, so these are the encoder's pixels:
            # a different output checksum means the stream itself was altered.
            raise ContainerError("malformed bitstream: the output checksum disagrees with the "
                                 "verified pixels")
        return DecodedImage(output, bit_exact, stats, time.perf_counter() - start)

    # ---------------------------------------------------------------- checkerboard passes

    def _encode_checkerboard(self, y: Any, z_hat: Any, protect: _Protector
                             ) -> tuple[list[tuple[str, bytes, np.ndarray]], Any]:
        """Both passes: each pass's decisions protected, then its symbols coded."""
        from .checkerboard import PASSES, gather, pass_mask

        h, w = y.shape[-2:]
        payloads: list[tuple[str, bytes, np.ndarray]] = []

        def code(step: int, scale_index: np.ndarray, mean_q: Any) -> Any:
            data, symbols, y_hat = self.checkerboard.latent.encode(
                gather(y, pass_mask(h, w, step)), scale_index, mean_q)
            payloads.append((f"y.{PASSES[step]}", data, symbols))
            return y_hat

        y_hat = self.checkerboard.run(self._hyper(z_hat), (h, w), protect, code)
        return payloads, y_hat

    def _decode_checkerboard(self, payloads: dict[str, pb.Payload], z_hat: Any,
                             shape: tuple[int, int], resolve: _Resolver, verify: bool) -> Any:
        """Both passes: each pass's indices resolved (and checked against their checksum)
        before its payload is entropy-decoded (and checked against its symbol checksum)."""
        from .checkerboard import PASSES

        def code(step: int, scale_index: np.ndarray, mean_q: Any) -> Any:
            rec = payloads[f"y.{PASSES[step]}"]
            symbols, y_hat = self.checkerboard.latent.decode(rec.data, scale_index, mean_q,
                                                             not verify)
            _check_symbols(rec, symbols, verify)
            return y_hat

        return self.checkerboard.run(self._hyper(z_hat), shape, resolve, code)

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

    def calibration_sample(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The exact latents of an (unprotected) encode: integers plus grid values, identical
        on every platform, from which `network_floats` recomputes the protected floats."""
        capture: dict[str, Any] = {}
        self.encode(pixels, Mode.NONE, "both", capture=capture)
        return {"z_hat": to_host(capture["z_hat"]), "y_hat": to_host(capture["y_hat"]),
                "hwc": np.array(pixels.shape)}

    def network_floats(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The protected float tensors this process's numerics compute from a sample (what
        `reprocodec calibrate` compares across profiles)."""
        import torch

        height, width, channels = (int(v) for v in sample["hwc"])
        y_hat = torch.from_numpy(sample["y_hat"])
        if self.checkerboard is not None:  # both passes, each position from its own pass
            sigma, mean = self.checkerboard.floats(
                self._hyper(torch.from_numpy(sample["z_hat"])), y_hat)
        else:
            sigma, mean = self._params(torch.from_numpy(sample["z_hat"]))
        out = {"scale_index": sigma, "pixels": self._synthesis(y_hat, height, width, channels)}
        if mean is not None:
            out["mean_grid"] = mean
        return out


class _Protector:
    """Encoder side of every decision of one encode: indices out, records collected."""

    def __init__(self, decisions: dict[str, ProtectedDecision], mode: Mode, level: str,
                 records: list, capture: dict | None):
        self.decisions, self.mode, self.level = decisions, mode, level
        self.records, self.capture = records, capture

    def __call__(self, name: str, values: np.ndarray) -> np.ndarray:
        d = self.decisions[name]
        mode = d.mode_for(self.mode, self.level)
        if d.level == "reconstruction" and self.level == "decoding":
            # output not protected at this level: no record, the decoder rounds its own floats
            indices = d.protect_pass(values, mode).indices
        else:
            indices, record = d.protect(values, mode)
            self.records.append(record)
        _capture(self.capture, **{name: values, f"{name}_indices": indices})
        return indices


class _Resolver:
    """Decoder side: the encoder's indices of every recorded decision."""

    def __init__(self, decisions: dict[str, ProtectedDecision], records: dict, verify: bool,
                 stats: list[DecisionStats], capture: dict | None, note: str):
        self.decisions, self.records, self.verify = decisions, records, verify
        self.stats, self.capture, self.note = stats, capture, note

    def __call__(self, name: str, values: np.ndarray) -> np.ndarray:
        d = self.decisions[name]
        if name not in self.records:  # unprotected pixels: this decoder's own rounding
            try:
                indices = d.quantizer.index(numerics.perturb(name, values, d.bound))
            except SafeguardError as exc:  # an encoder's latents never synthesize NaN / inf
                raise ContainerError(f"malformed bitstream: its latents decode to {exc}") from exc
        else:
            try:
                indices = d.resolve(self.records[name], values, self.verify, self.stats)
            except VerificationError as exc:
                if not self.note:
                    raise
                raise VerificationError(f"{exc} ({self.note})") from exc
        _capture(self.capture, **{name: values, f"{name}_indices": indices})
        return indices


def _capture(capture: dict | None, **items: Any) -> None:
    if capture is not None:
        capture.update(items)


def _numpy64(t: Any) -> np.ndarray:
    import torch

    return to_host(t, torch.float64)


def _tiles(h: int, w: int, step: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) latent tiles of at most step x step covering h x w, row-major; one
    tile when the whole fits in twice a tile's area."""
    if h * w <= 2 * step * step:
        return [(0, h, 0, w)]
    return [(r, min(h, r + step), c, min(w, c + step))
            for r in range(0, h, step) for c in range(0, w, step)]


def _input_tile(pixels: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> Any:
    """Rows y0:y1, columns x0:x1 of the image replicate-padded to any size (replicate padding
    codes cheaper than zeros: no artificial edge; it is cropped away after decoding), as the
    networks' 1 x 3 x h x w float32 input pixels / 255."""
    import torch

    height, width, channels = pixels.shape
    if y1 <= height and x1 <= width:
        tile = pixels[y0:y1, x0:x1]
    else:
        rows = np.minimum(np.arange(y0, y1), height - 1)
        cols = np.minimum(np.arange(x0, x1), width - 1)
        tile = pixels[rows[:, None], cols[None, :]]
    # np.array copies (a whole-image tile of a read-only input would be a view torch warns
    # about: "The given NumPy array is not writable").
    x = torch.from_numpy(np.array(tile, order="C")).permute(2, 0, 1)[None].float() / 255.0
    return x.expand(1, 3, y1 - y0, x1 - x0) if channels == 1 else x


def _to_uint8(indices: np.ndarray) -> np.ndarray:
    """Pixel indices (int64; the noise profile can step outside 0..255) clipped to uint8, a
    few rows at a time (no full-size int64 temporary)."""
    out = np.empty(indices.shape, dtype=np.uint8)
    for r in range(0, indices.shape[0], _ROWS_PER_CHUNK):
        out[r:r + _ROWS_PER_CHUNK] = np.clip(indices[r:r + _ROWS_PER_CHUNK], 0, 255)
    return out


def pixel_checksum(pixels: np.ndarray) -> int:
    """reprocodec.checksum.checksum(pixels) for uint8 H x W x C pixels, equal to it bit for bit
    (the same xxHash3 stream: shape, dtype, then the values as little-endian int64), fed a
    few rows at a time instead of from one 8-bytes-per-value copy of the image."""
    import xxhash

    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.size == 0:
        return checksum(pixels)
    h = xxhash.xxh3_64()
    h.update(np.asarray(pixels.shape, dtype="<u8").tobytes())
    h.update(np.dtype("<i8").str.encode())
    for r in range(0, pixels.shape[0], _ROWS_PER_CHUNK):
        h.update(np.ascontiguousarray(pixels[r:r + _ROWS_PER_CHUNK], dtype="<i8").tobytes())
    return h.intdigest()


def _padded(n: int) -> int:
    """Height/width padded to the models' 2^6 = 64 downsampling factor."""
    return (n + 63) // 64 * 64


def _payloads(msg: pb.Bitstream, shapes: dict[str, list[int]]) -> dict[str, pb.Payload]:
    """The payload records, exactly the named ones, after checking their shapes against the
    header (their CRC-32 was checked by container.validate)."""
    found = {p.name: p for p in msg.payloads}
    if found.keys() != shapes.keys() or len(msg.payloads) != len(shapes):
        names = " and ".join(repr(n) for n in shapes)
        raise ContainerError(f"image bitstream must carry payloads {names} once each")
    for name, shape in shapes.items():
        p = found[name]
        if list(p.shape) != shape:
            raise ContainerError(
                f"payload {name!r} has shape {list(p.shape)}, header implies {shape}")
    return found


def _check_symbols(p: pb.Payload, symbols: np.ndarray, verify: bool) -> None:
    """The entropy decoder's integers against the encoder's: a stream whose framing and rANS
    state check out can still carry other symbols only if it was crafted or corrupted."""
    if verify and checksum(symbols) != p.symbols_checksum:
        raise ContainerError(f"malformed bitstream: payload {p.name!r} decodes to symbols "
                             "that fail their checksum")


def _records(msg: pb.Bitstream, need: set[str]) -> dict[str, pb.ProtectedTensor]:
    records = {t.name: t for t in msg.protected}
    if not need <= records.keys() or not records.keys() <= need | {"pixels"}:
        raise ContainerError(
            f"image bitstream protects {sorted(records)}, expected {sorted(need)} (+ pixels)")
    return records
