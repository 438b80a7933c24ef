"""Images <-> the codec's uint8 HxWxC pixels (Pillow + numpy only, no torch).

Shared by the codec, the CLI, the services and the light client. PNG output is written with
fixed settings, so equal pixels always give equal file bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from reprocodec.errors import InputError, TooLargeError

# 50 megapixels: larger than any camera photo the service expects, small enough that the
# networks' activations (about 1 KB per pixel for N=192 at full resolution) fit in memory.
DEFAULT_MAX_PIXELS = 50_000_000


def check_pixels(pixels: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Validate a uint8 HxWxC (C = 1 or 3) or HxW array; returns it as HxWxC."""
    if not isinstance(pixels, np.ndarray):
        raise InputError("image pixels must be a numpy array of uint8 (H, W, C)")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise InputError(
            f"image must be H x W x C with C = 1 (greyscale) or 3 (RGB), got shape {pixels.shape}"
        )
    if pixels.dtype != np.uint8:
        raise InputError(f"image pixels must be uint8, got {pixels.dtype}")
    h, w, _ = pixels.shape
    if h == 0 or w == 0:
        raise InputError(f"image is empty ({h} x {w})")
    if h * w > max_pixels:
        raise TooLargeError(
            f"image has {h * w / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:.1f} MP: "
            "downscale or tile it"
        )
    return np.ascontiguousarray(pixels)


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any format Pillow reads -> uint8 HxWx1 (greyscale) or HxWx3 (everything else)."""
    from PIL import Image

    if not data:
        raise InputError("image file is empty")
    # Pillow's own decompression-bomb guard would raise a warning/error of its own type;
    # check the declared size ourselves before decoding any pixels.
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise TooLargeError(
                    f"image is {w} x {h} ({w * h / 1e6:.1f} MP), above the limit of "
                    f"{max_pixels / 1e6:.1f} MP: downscale or tile it"
                )
            img.load()
            grey = img.mode in ("1", "L", "I", "I;16", "F", "LA")
            img = img.convert("L" if grey else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (TooLargeError, InputError):
        raise
    except Image.UnidentifiedImageError as exc:
        raise InputError("not an image format Pillow can read (PNG, JPEG, WebP, ...)") from exc
    except Exception as exc:  # Pillow raises many exception types for corrupt files
        raise InputError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
    return check_pixels(pixels, max_pixels)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        return decode_image_bytes(data, max_pixels)
    except InputError as exc:
        raise type(exc)(f"{p}: {exc}") from exc


def encode_png(pixels: np.ndarray) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks) for a uint8 HxWxC array."""
    from PIL import Image

    arr = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(pixels))


def raw_to_pixels(height: int, width: int, channels: int, data: bytes,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check and reshape raw row-major 8-bit pixels (the services' RawImage)."""
    if channels not in (1, 3):
        raise InputError(f"raw image has {channels} channels; send 1 (grey) or 3 (RGB)")
    expected = height * width * channels
    if len(data) != expected:
        raise InputError(
            f"raw image of {height}x{width}x{channels} needs {expected} bytes, got {len(data)}; "
            "send row-major uint8 pixels"
        )
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    return check_pixels(pixels.copy(), max_pixels)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of 8-bit images (inf when identical)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(decoded, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
