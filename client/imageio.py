"""Image bytes <-> 8-bit pixel arrays, shared by the client and the services (Pillow + numpy only).

PNG output is written with fixed settings so equal pixels always give equal file bytes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from reprocodec.errors import InputError, TooLargeError

# 50 megapixels: far above any photo we serve, far below what exhausts a server's memory.
DEFAULT_MAX_PIXELS = 50_000_000


def read_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/... bytes to uint8 H x W x C with C = 1 (greyscale) or 3 (RGB)."""
    if not data:
        raise InputError("the image is empty (0 bytes); send the bytes of a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise TooLargeError(
                    f"image of {width}x{height} = {width * height} pixels exceeds the server's "
                    f"limit of {max_pixels} pixels; downscale or tile it"
                )
            image.load()
    except TooLargeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"cannot read the image ({exc}); send a PNG, JPEG or other file Pillow can open"
        ) from exc
    return to_pixels(image)


def to_pixels(image: Image.Image) -> np.ndarray:
    """Pillow image -> uint8 H x W x C; greyscale stays 1 channel, anything else becomes RGB."""
    if image.mode in ("L", "I;16", "I", "F", "1", "LA"):
        image = image.convert("L")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.size == 0:
        raise InputError("the image has no pixels; send a non-empty image")
    return np.ascontiguousarray(pixels)


def raw_to_pixels(height: int, width: int, channels: int, data: bytes,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check and reshape raw row-major 8-bit pixels."""
    if channels not in (1, 3):
        raise InputError(f"raw image has {channels} channels; send 1 (grey) or 3 (RGB)")
    if height == 0 or width == 0:
        raise InputError("raw image has a zero dimension; send at least 1x1 pixels")
    if height * width > max_pixels:
        raise TooLargeError(
            f"image of {width}x{height} pixels exceeds the server's limit of {max_pixels} "
            "pixels; downscale or tile it"
        )
    expected = height * width * channels
    if len(data) != expected:
        raise InputError(
            f"raw image of {height}x{width}x{channels} needs {expected} bytes, got {len(data)}; "
            "send row-major uint8 pixels"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels).copy()


def write_png(pixels: np.ndarray) -> bytes:
    """uint8 H x W x C (C = 1 or 3) -> PNG bytes (deterministic for equal pixels)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"expected uint8 HxWx1 or HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of 8-bit images (inf when identical)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(decoded, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
