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


# Modes Pillow decodes to that hold 8-bit samples the codec represents exactly once converted
# (-> "L" or "RGB"); alpha modes are accepted only when the alpha is fully opaque.
_GREY_MODES = {"1", "L", "LA", "La"}
_EXACT_MODES = _GREY_MODES | {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# Pillow's text-chunk limits (zTXt/iTXt/iCCP bombs) raise ValueError with these messages.
_PILLOW_BOMB_MESSAGES = ("decompressed data too large", "too much memory used in text chunks")
_HDR_SIGNATURES = {
    b"#?RADIANCE": "Radiance HDR", b"#?RGBE": "Radiance HDR", b"v/1\x01": "OpenEXR",
}


def _refuse(what: str) -> InputError:
    return InputError(
        f"{what}: the codec codes 8-bit greyscale or RGB pixels and would change this image "
        "silently; convert it to 8-bit RGB or greyscale yourself (tone-map HDR, flatten "
        "transparency onto a background) and send that"
    )


def _tile_rawmodes(img) -> list[tuple[str, object]]:
    out = []
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, str):
            out.append((args, None))
        elif isinstance(args, tuple) and args and isinstance(args[0], str):
            out.append((args[0], args[1] if len(args) > 1 else None))
    return out


def _sample_bits(img, data: bytes) -> tuple[int, bool]:
    """(bits per sample the file stores, whether they are floating point), from the header
    only; 8 when nothing says more."""
    bits, floating = 8, img.mode == "F"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        bits = max(bits, data[24])
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        per_sample = tags.get(258, (8,))
        per_sample = per_sample if isinstance(per_sample, tuple) else (per_sample,)
        bits = max(bits, *(int(b) for b in per_sample))
        fmt = tags.get(339, (1,))
        floating = floating or 3 in (fmt if isinstance(fmt, tuple) else (fmt,))  # IEEE
    if img.format == "AVIF":  # the 'pixi' box lists bits per channel
        at = data.find(b"pixi", 0, 1 << 16)
        if at >= 0 and len(data) > at + 9:
            channels = data[at + 8]
            bits = max(bits, *data[at + 9:at + 9 + channels], 8)
    if img.format == "JPEG2000":  # SIZ marker: per component Ssiz = bit depth - 1 (+ sign)
        at = data.find(b"\xff\x51", 0, 1 << 16)
        if at >= 0 and len(data) > at + 42:
            count = int.from_bytes(data[at + 38:at + 40], "big")
            ssiz = data[at + 40:at + 40 + 3 * count:3]
            bits = max(bits, *((b & 0x7F) + 1 for b in ssiz), 8)
    for rawmode, extra in _tile_rawmodes(img):
        if img.format == "PPM" and isinstance(extra, int) and extra > 255:
            bits = max(bits, 16)  # maxval over 255: 16-bit samples
        if ";16" in rawmode or ";32" in rawmode or rawmode.startswith(("F", "I;16", "I;32")):
            bits = max(bits, 16)
    return bits, floating


def _open_checked(data: bytes, max_pixels: int):
    """Image.open + every check that needs only the header: format, size, bit depth, mode."""
    from PIL import Image

    if not data:
        raise InputError("image file is empty")
    for signature, name in _HDR_SIGNATURES.items():
        if data.startswith(signature):
            raise _refuse(f"this is a {name} (high dynamic range) image")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooLargeError(
            f"image declares a size far above the limit of {max_pixels / 1e6:.1f} MP "
            f"(decompression bomb: {exc}); downscale or tile it"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError("not an image format Pillow can read (PNG, JPEG, WebP, ...)") from exc
    except ValueError as exc:
        if any(m in str(exc).lower() for m in _PILLOW_BOMB_MESSAGES):
            raise TooLargeError(f"image metadata decompresses too large ({exc})") from exc
        raise InputError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # Pillow raises many exception types for corrupt files
        raise InputError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise TooLargeError(
                f"image is {w} x {h} ({w * h / 1e6:.1f} MP), above the limit of "
                f"{max_pixels / 1e6:.1f} MP: downscale or tile it"
            )
        bits, floating = _sample_bits(img, data)
        if floating:
            raise _refuse(f"{img.format} image has floating-point samples (mode {img.mode})")
        if bits > 8 or img.mode.startswith("I"):
            depth = f"{bits}-bit" if bits > 8 else "16/32-bit integer"
            raise _refuse(f"{img.format} image has {depth} samples (mode {img.mode})")
        if img.mode not in _EXACT_MODES:
            raise _refuse(f"{img.format} image in mode {img.mode} (e.g. CMYK or Lab) is not "
                          "greyscale or RGB")
    except BaseException:
        img.close()
        raise
    return img


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of an image file after the checks that need no pixels (size limit,
    decompression bombs, bit depth, colour mode): cheap, for admission before decoding."""
    with _open_checked(data, max_pixels) as img:
        w, h = img.size
    return h, w


def _opaque(alpha) -> bool:
    lo, _ = alpha.getextrema()
    return lo == 255


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any 8-bit format Pillow reads -> uint8 HxWx1 (greyscale) or HxWx3 (everything else).

    Refused, never silently converted: more than 8 bits per sample (16-bit PNG/TIFF/PPM,
    10/12-bit AVIF or JPEG 2000), floating point and HDR (float TIFF, PFM, Radiance, OpenEXR),
    modes other than greyscale/RGB (CMYK, Lab, ...) and transparency that is not fully opaque
    (InputError, INVALID_ARGUMENT). A fully opaque alpha channel is dropped. A declared size
    over `max_pixels`, and decompression bombs, are TooLargeError (RESOURCE_EXHAUSTED) before
    any pixel is decoded.
    """
    from PIL import Image

    img = _open_checked(data, max_pixels)
    try:
        with img:
            img.load()
            mode = img.mode
            transparent = mode in _ALPHA_MODES or "transparency" in img.info
            if transparent:
                rgba = img.convert("LA" if mode in _GREY_MODES else "RGBA")
                if not _opaque(rgba.getchannel("A")):
                    raise _refuse(f"{img.format} image has transparent pixels (alpha below "
                                  "255)")
                img = rgba
            img = img.convert("L" if mode in _GREY_MODES else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (TooLargeError, InputError):
        raise
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"image is a decompression bomb ({exc})") from exc
    except ValueError as exc:
        if any(m in str(exc).lower() for m in _PILLOW_BOMB_MESSAGES):
            raise TooLargeError(f"image metadata decompresses too large ({exc})") from exc
        raise InputError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
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


def check_raw(height: int, width: int, channels: int, nbytes: int,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The checks of raw_to_pixels that need no pixels (cheap, for admission)."""
    if channels not in (1, 3):
        raise InputError(f"raw image has {channels} channels; send 1 (grey) or 3 (RGB)")
    if height == 0 or width == 0:
        raise InputError(f"image is empty ({height} x {width})")
    if height * width > max_pixels:
        raise TooLargeError(
            f"image has {height * width / 1e6:.1f} MP, above the limit of "
            f"{max_pixels / 1e6:.1f} MP: downscale or tile it"
        )
    expected = height * width * channels
    if nbytes != expected:
        raise InputError(
            f"raw image of {height}x{width}x{channels} needs {expected} bytes, got {nbytes}; "
            "send row-major uint8 pixels"
        )


def raw_to_pixels(height: int, width: int, channels: int, data: bytes,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check and reshape raw row-major 8-bit pixels (the services' RawImage)."""
    check_raw(height, width, channels, len(data), max_pixels)
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
