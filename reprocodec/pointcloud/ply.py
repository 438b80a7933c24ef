"""PLY point reader and writer (numpy only).

Reads the `vertex` element of ASCII, binary_little_endian and binary_big_endian PLY files and
returns its x, y, z as an (N, 3) array; every other property and element is skipped (list
properties included, so faces after the vertices are fine). Writes x, y, z only, as integers
(voxel coordinates) or float64 (world coordinates). Anything malformed raises InputError, and
so do coordinates the codec cannot represent faithfully: NaN or infinite, beyond
+-MAX_ABS_COORDINATE (the voxel scale or the decoder's float32 output would overflow), or
integers outside their declared PLY type.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError

__all__ = ["read_ply", "write_ply", "parse_ply", "vertex_count", "check_coordinates",
           "MAX_ABS_COORDINATE"]

# PLY scalar type names (both spellings) -> numpy type codes (endianness added later).
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
MAX_HEADER_BYTES = 1 << 16
MAX_POINTS = 1 << 28
# Coordinates beyond this magnitude are refused: the decoder returns float32 world points
# (max 3.4e38) and the voxel scale (extent / (2^depth - 1)) must stay finite; 1e30 leaves
# room for both while being far beyond any physical unit (the observable universe is 9e26 m).
MAX_ABS_COORDINATE = 1e30


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """The vertex x, y, z of a PLY file as an (N, 3) array (float64 or int64)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read PLY file {path}: {exc.strerror}") from exc
    return parse_ply(data, str(path))


def _bad(where: str, what: str) -> InputError:
    return InputError(f"{where} is not a valid PLY file: {what}")


def _parse_header(data: bytes, where: str):
    if not data.startswith(b"ply"):
        raise _bad(where, "it does not start with 'ply'")
    end = data.find(b"end_header", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise _bad(where, "no 'end_header' line in the first 64 KiB")
    body_start = data.find(b"\n", end)
    if body_start < 0:
        raise _bad(where, "nothing after 'end_header'")
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise _bad(where, "the header is not ASCII") from exc
    fmt = None
    elements: list[list] = []  # [name, count, [(prop name, type code | ("list", cnt, item))]]
    for raw in lines[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise _bad(where, f"unsupported format line {raw!r}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise _bad(where, f"bad element line {raw!r}")
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property":
            if not elements:
                raise _bad(where, "a property comes before any element")
            if len(words) == 5 and words[1] == "list":
                if words[2] not in _TYPES or words[3] not in _TYPES:
                    raise _bad(where, f"unknown list types in {raw!r}")
                elements[-1][2].append((words[4], ("list", _TYPES[words[2]], _TYPES[words[3]])))
            elif len(words) == 3 and words[1] in _TYPES:
                elements[-1][2].append((words[2], _TYPES[words[1]]))
            else:
                raise _bad(where, f"bad property line {raw!r}")
        else:
            raise _bad(where, f"unknown header line {raw!r}")
    if fmt is None:
        raise _bad(where, "no format line")
    return fmt, elements, body_start + 1


def _vertex_header(data: bytes, where: str):
    fmt, elements, pos = _parse_header(data, where)
    vertex = next((e for e in elements if e[0] == "vertex"), None)
    if vertex is None:
        raise _bad(where, "no 'vertex' element")
    names = [p[0] for p in vertex[2]]
    for axis in "xyz":
        if axis not in names:
            raise _bad(where, f"the vertex element has no '{axis}' property")
        if isinstance(dict(vertex[2])[axis], tuple):
            raise _bad(where, f"the vertex property '{axis}' is a list, not a number")
    if vertex[1] > MAX_POINTS:
        raise _bad(where, f"{vertex[1]} vertices is more than this reader accepts")
    return fmt, elements, pos, vertex


def vertex_count(data: bytes, where: str = "input") -> int:
    """The number of vertices the header declares, after the header's checks (cheap: reads
    no vertex data; parse_ply still checks the body)."""
    return int(_vertex_header(data, where)[3][1])


def parse_ply(data: bytes, where: str = "input") -> np.ndarray:
    """Parse PLY bytes; see read_ply."""
    fmt, elements, pos, _ = _vertex_header(data, where)
    if fmt == "ascii":
        return _parse_ascii(data[pos:], elements, where)
    return _parse_binary(data, pos, elements, _FORMATS[fmt], where)


def _parse_ascii(body: bytes, elements, where: str) -> np.ndarray:
    lines = body.split(b"\n")
    row = 0
    for name, count, props in elements:
        if name != "vertex":
            row += count  # one line per item in ASCII PLY, list properties included
            continue
        if row + count > len(lines):
            raise _bad(where, f"it declares {count} vertices but has fewer lines")
        columns = [p[0] for p in props]
        if any(isinstance(t, tuple) for _, t in props):
            raise _bad(where, "list properties inside the vertex element are not supported")
        try:
            table = np.array(
                [ln.split() for ln in lines[row:row + count]], dtype=np.float64
            ).reshape(count, len(columns))
        except ValueError as exc:
            raise _bad(where, "a vertex line does not hold one number per property") from exc
        xyz = table[:, [columns.index(a) for a in "xyz"]]
        types = [np.dtype(dict(props)[a]) for a in "xyz"]
        integer = all(t.kind in "iu" for t in types)
        if integer:  # ASCII integers are parsed as floats: hold them to their declared type
            for axis, t in zip("xyz", types, strict=True):
                column = xyz[:, "xyz".index(axis)]
                info = np.iinfo(t)
                if column.size and (not np.all(np.isfinite(column))
                                    or column.min() < info.min or column.max() > info.max
                                    or np.any(column != np.floor(column))):
                    raise _bad(where, f"a vertex '{axis}' is not an integer of its declared "
                                      f"type {t.name} ({info.min}..{info.max})")
        return _finish(xyz, integer, where)
    raise _bad(where, "no vertex element")  # unreachable: checked by the caller


def _parse_binary(data: bytes, pos: int, elements, endian: str, where: str) -> np.ndarray:
    for name, count, props in elements:
        if any(isinstance(t, tuple) for _, t in props):
            if name == "vertex":
                raise _bad(where, "list properties inside the vertex element are not supported")
            pos = _skip_list_element(data, pos, count, props, endian, where)
            continue
        dtype = np.dtype([(p, endian + t) for p, t in props])
        size = dtype.itemsize * count
        if pos + size > len(data):
            raise _bad(where, f"element '{name}' is truncated")
        if name == "vertex":
            table = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            xyz = np.stack([table[a].astype(np.float64) for a in "xyz"], axis=1)
            integer = all(dtype[a].kind in "iu" for a in "xyz")
            return _finish(xyz, integer, where)
        pos += size
    raise _bad(where, "no vertex element")


def _skip_list_element(data: bytes, pos: int, count: int, props, endian: str, where: str) -> int:
    """Walk past an element with list properties (e.g. faces) in a binary file."""
    for _ in range(count):
        for _, t in props:
            if isinstance(t, tuple):
                count_type = np.dtype(endian + t[1])
                if pos + count_type.itemsize > len(data):
                    raise _bad(where, "a list element is truncated")
                n = int(np.frombuffer(data, count_type, 1, pos)[0])
                pos += count_type.itemsize + n * np.dtype(t[2]).itemsize
            else:
                pos += np.dtype(t).itemsize
        if pos > len(data):
            raise _bad(where, "a list element is truncated")
    return pos


def _finish(xyz: np.ndarray, integer: bool, where: str) -> np.ndarray:
    check_coordinates(xyz, where)
    if integer:
        return xyz.astype(np.int64)
    return xyz


def check_coordinates(points: np.ndarray, where: str = "input") -> np.ndarray:
    """Refuse (InputError) coordinates the codec cannot represent faithfully: NaN, infinite,
    or beyond +-MAX_ABS_COORDINATE. Returns `points` unchanged."""
    pts = np.asarray(points)
    if pts.size == 0 or pts.dtype.kind in "iub":
        return points  # PLY integers are at most 32-bit: far inside the bound
    finite = np.isfinite(pts)
    if not np.all(finite):
        row = int(np.argwhere(~finite)[0][0])
        raise InputError(f"{where}: point {row} has a NaN or infinite coordinate "
                         f"({pts[row].tolist()}); remove or fix it")
    magnitude = np.abs(pts).max(axis=1)
    if magnitude.max() > MAX_ABS_COORDINATE:
        row = int(np.argmax(magnitude))
        raise InputError(
            f"{where}: point {row} has a coordinate of magnitude {magnitude[row]:.3g}, beyond "
            f"+-{MAX_ABS_COORDINATE:.0e}: the voxel scale or the decoded float32 points would "
            "overflow; rescale the cloud (e.g. to metres) first"
        )
    return points


def write_ply(path: str | os.PathLike, points: np.ndarray, binary: bool = True) -> None:
    """Write (N, 3) points: integer arrays as uchar/ushort/int x/y/z, others as float64."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array, got shape {points.shape}")
    integer = points.dtype.kind in "iu"
    ply_type, np_type = ("double", "<f8")
    if integer:
        # The smallest type that holds the values: voxel files of depth <= 8 take 3 B/point.
        low, high = (int(points.min()), int(points.max())) if points.size else (0, 0)
        ply_type, np_type = (("uchar", "u1") if low >= 0 and high < 1 << 8 else
                             ("ushort", "<u2") if low >= 0 and high < 1 << 16 else ("int", "<i4"))
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment written by reprocodec\n"
        f"element vertex {points.shape[0]}\n"
        + "".join(f"property {ply_type} {a}\n" for a in "xyz")
        + "end_header\n"
    ).encode("ascii")
    with open(path, "wb") as f:
        f.write(header)
        if binary:
            f.write(np.ascontiguousarray(points, dtype=np_type).tobytes())
        else:
            row = "%d %d %d" if integer else "%.17g %.17g %.17g"
            np.savetxt(f, points, fmt=row)
