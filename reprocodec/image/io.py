"""Reading images into the codec's uint8 HxWxC form, and writing its output as PNG."""

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
