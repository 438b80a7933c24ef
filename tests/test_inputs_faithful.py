"""Inputs the codecs cannot represent faithfully are refused with a clear InputError, never
silently converted; decompression bombs are TooLargeError before any pixel is decoded; PLY
coordinates that would overflow are refused at parse (no torch, no server)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from reprocodec.errors import InputError, TooLargeError
from reprocodec.image.io import decode_image_bytes, encode_png, probe_image
from reprocodec.pointcloud.ply import (
    MAX_ABS_COORDINATE,
    check_coordinates,
    parse_ply,
    vertex_count,
)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, colour: int, rows: bytes | None = None,
         extra: bytes = b"") -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB)."""
    if rows is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        rows = b"".join(b"\x00" + bytes(width * channels * depth // 8) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _ramp(h: int = 16, w: int = 24) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 10, y * 15, (x + y) * 5], axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------- refused


def test_16_bit_greyscale_png_is_refused_not_clipped():
    # Values far above 255: the old path decoded this clipped to 255 and answered OK.
    data = _save(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG")
    with pytest.raises(InputError, match="16-bit") as info:
        decode_image_bytes(data)
    assert "convert it to 8-bit" in str(info.value)
    with pytest.raises(InputError, match="16-bit"):
        probe_image(data)  # refused from the header, before pixels


@pytest.mark.parametrize("colour", [2, 4, 6], ids=["rgb", "grey+alpha", "rgba"])
def test_16_bit_colour_png_is_refused(colour):
    # Pillow itself would hand these over as 8-bit RGB/RGBA, dropping the low bytes.
    with pytest.raises(InputError, match="16-bit"):
        decode_image_bytes(_png(4, 4, 16, colour))


def test_float_tiff_and_pfm_are_refused():
    ones = np.linspace(0, 4, 16, dtype=np.float32).reshape(4, 4)  # HDR: values above 1.0
    with pytest.raises(InputError, match="floating-point"):
        decode_image_bytes(_save(Image.fromarray(ones), "TIFF"))
    pfm = b"Pf\n4 4\n-1.0\n" + ones.astype("<f4").tobytes()
    with pytest.raises(InputError, match="floating-point"):
        decode_image_bytes(pfm)


def test_16_bit_tiff_and_ppm_are_refused():
    with pytest.raises(InputError, match="16-bit"):
        decode_image_bytes(_save(Image.fromarray(np.full((4, 4), 999, np.uint16)), "TIFF"))
    ppm = b"P6 4 4 65535\n" + np.full(48, 1000, ">u2").tobytes()  # Pillow: 8-bit RGB
    with pytest.raises(InputError, match="16-bit"):
        decode_image_bytes(ppm)


@pytest.mark.parametrize("signature", [b"#?RADIANCE\n", b"#?RGBE\n", b"v/1\x01\x02\x00\x00\x00"])
def test_hdr_formats_are_named(signature):
    with pytest.raises(InputError, match="high dynamic range"):
        decode_image_bytes(signature + bytes(100))


def test_transparent_pixels_are_refused_opaque_alpha_is_dropped():
    rgb = _ramp()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    opaque = decode_image_bytes(encode_png_rgba(rgba))
    assert np.array_equal(opaque, rgb)  # fully opaque: same pixels, alpha dropped
    rgba[3, 5, 3] = 254  # one pixel slightly transparent
    with pytest.raises(InputError, match="transparent"):
        decode_image_bytes(encode_png_rgba(rgba))
    grey_alpha = np.dstack([rgb[:, :, 0], np.full(rgb.shape[:2], 255, np.uint8)])
    assert decode_image_bytes(_save(Image.fromarray(grey_alpha, "LA"), "PNG")).shape == (
        16, 24, 1)
    grey_alpha[0, 0, 1] = 0
    with pytest.raises(InputError, match="transparent"):
        decode_image_bytes(_save(Image.fromarray(grey_alpha, "LA"), "PNG"))


def encode_png_rgba(rgba: np.ndarray) -> bytes:
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def test_palette_transparency_counts_only_when_used():
    pal = Image.fromarray(_ramp()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    used = int(np.asarray(pal)[0, 0])
    unused = next(i for i in range(256) if i not in set(np.asarray(pal).ravel().tolist()))
    kept = decode_image_bytes(_save(pal, "PNG", transparency=unused))
    assert np.array_equal(kept, np.asarray(pal.convert("RGB")))
    with pytest.raises(InputError, match="transparent"):
        decode_image_bytes(_save(pal, "PNG", transparency=used))


def test_cmyk_is_refused():
    with pytest.raises(InputError, match="CMYK"):
        decode_image_bytes(_save(Image.new("CMYK", (8, 8), (10, 20, 30, 40)), "JPEG"))


# ------------------------------------------------------------------------------ bombs


def test_png_bomb_is_too_large_before_decoding_pixels():
    # 20000 x 20000 declared, no valid pixel data at all: Pillow's own guard fires at open.
    bomb = _png(20000, 20000, 8, 0, rows=b"")
    with pytest.raises(TooLargeError, match="MP"):
        decode_image_bytes(bomb)
    # 9000 x 9000 (81 MP) with a corrupt IDAT: refused on the declared size, so the (broken)
    # pixel data is never read: a decode would have raised InputError instead.
    header_only = _png(9000, 9000, 8, 0, rows=b"")[:33] + _chunk(b"IDAT", b"garbage")
    with pytest.raises(TooLargeError, match="81.0 MP"):
        decode_image_bytes(header_only)
    with pytest.raises(TooLargeError):
        probe_image(header_only)
    # Under the caller's limit the same size is only a corrupt file.
    with pytest.raises(InputError) as info:
        decode_image_bytes(header_only, max_pixels=100_000_000)
    assert not isinstance(info.value, TooLargeError)


def test_compressed_text_chunk_bomb_is_too_large():
    text = zlib.compress(b"A" * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    bomb = _png(4, 4, 8, 0, extra=_chunk(b"zTXt", b"Comment\x00\x00" + text))
    with pytest.raises(TooLargeError, match="decompresses too large"):
        decode_image_bytes(bomb)


# ------------------------------------------------------------------------- still accepted


def test_plain_8_bit_inputs_still_decode_exactly():
    rgb = _ramp()
    assert np.array_equal(decode_image_bytes(encode_png(rgb)), rgb)
    assert np.array_equal(decode_image_bytes(_save(Image.fromarray(rgb), "TIFF")), rgb)
    assert np.array_equal(decode_image_bytes(_save(Image.fromarray(rgb), "PPM")), rgb)
    grey = rgb[:, :, :1]
    assert np.array_equal(decode_image_bytes(encode_png(grey)), grey)
    bilevel = _save(Image.fromarray(rgb[:, :, 0] > 100).convert("1"), "PNG")
    assert set(np.unique(decode_image_bytes(bilevel))) <= {0, 255}
    assert probe_image(encode_png(rgb)) == (16, 24)


# ------------------------------------------------------------------------------- PLY


def _ascii_ply(rows: list[str], kind: str = "double") -> bytes:
    header = (f"ply\nformat ascii 1.0\nelement vertex {len(rows)}\n"
              + "".join(f"property {kind} {a}\n" for a in "xyz") + "end_header\n")
    return (header + "\n".join(rows) + "\n").encode()


def _binary_ply(points: np.ndarray) -> bytes:
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
              "property double x\nproperty double y\nproperty double z\nend_header\n")
    return header.encode() + np.asarray(points, "<f8").tobytes()


@pytest.mark.parametrize("rows", [
    ["1e308 0 0", "-1e308 1 1"],  # the extent (2e308) overflows: scale would be inf
    ["0 0 0", "1e31 0 0"],  # beyond the float32 range the decoder returns
    ["nan 0 0", "1 1 1"],
    ["inf 0 0", "1 1 1"],
])
def test_ply_with_unrepresentable_coordinates_is_refused(rows):
    with pytest.raises(InputError, match="NaN or infinite|magnitude"):
        parse_ply(_ascii_ply(rows))
    points = np.array([[float(v) for v in r.split()] for r in rows])
    with pytest.raises(InputError, match="NaN or infinite|magnitude"):
        parse_ply(_binary_ply(points))
    with pytest.raises(InputError):
        check_coordinates(points)


def test_ply_integer_out_of_its_declared_type_is_refused():
    with pytest.raises(InputError, match="int32"):
        parse_ply(_ascii_ply(["1 2 3", "1e30 2 3"], kind="int"))
    with pytest.raises(InputError, match="uint8"):
        parse_ply(_ascii_ply(["1 2 3", "256 2 3"], kind="uchar"))
    with pytest.raises(InputError, match="not an integer"):
        parse_ply(_ascii_ply(["1.5 2 3"], kind="int"))


def test_ply_bounds_and_header_count():
    edge = np.array([[-MAX_ABS_COORDINATE, 0, 0], [MAX_ABS_COORDINATE, 1, 2]])
    assert np.array_equal(parse_ply(_binary_ply(edge)), edge)  # inclusive bound
    data = _ascii_ply(["1 2 3", "4 5 6", "7 8 9"], kind="int")
    assert vertex_count(data) == 3
    with pytest.raises(InputError, match="no 'vertex'"):
        vertex_count(b"ply\nformat ascii 1.0\nelement face 0\nend_header\n")
