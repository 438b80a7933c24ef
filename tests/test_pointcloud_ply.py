"""PLY reading/writing and the octree (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from reprocodec.errors import InputError
from reprocodec.pointcloud import octree
from reprocodec.pointcloud.ply import parse_ply, read_ply, write_ply


def _cloud(n: int = 200, side: int = 64, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return octree.sort_voxels(rng.integers(0, side, size=(n, 3)))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("values", ["uchar", "int", "float"])
def test_ply_round_trip(tmp_path, binary, values):
    pts = _cloud()
    if values == "int":
        pts = pts * 1000 - 5000  # negative and beyond 16 bits: int32
    if values == "float":
        pts = pts * 0.37 + 0.001
    path = tmp_path / "c.ply"
    write_ply(path, pts, binary=binary)
    back = read_ply(path)
    assert back.dtype.kind == ("f" if values == "float" else "i")
    np.testing.assert_array_equal(back, pts)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_binary_ply_with_extra_properties_and_faces(endian):
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment x\nelement vertex 3\nproperty float x\n"
        "property uchar red\nproperty float y\nproperty float z\nproperty double nx\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    rows = np.zeros(3, dtype=[("x", endian + "f4"), ("red", "u1"), ("y", endian + "f4"),
                              ("z", endian + "f4"), ("nx", endian + "f8")])
    rows["x"], rows["y"], rows["z"] = [1.5, 2, 3], [4, 5, 6], [7, 8, 9.25]
    face = bytes([3]) + np.array([0, 1, 2], endian + "i4").tobytes()
    pts = parse_ply(header + rows.tobytes() + face)
    np.testing.assert_array_equal(pts, [[1.5, 4, 7], [2, 5, 8], [3, 6, 9.25]])


def test_ascii_ply_with_an_element_before_the_vertices():
    data = (b"ply\nformat ascii 1.0\nelement camera 1\nproperty float f\n"
            b"element vertex 2\nproperty int x\nproperty int y\nproperty int z\nend_header\n"
            b"0.5\n1 2 3\n4 5 6\n")
    np.testing.assert_array_equal(parse_ply(data), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("data", [
    b"",
    b"not a ply",
    b"ply\nformat ascii 1.0\nelement vertex 2\nproperty int x\nproperty int y\n",  # no end
    b"ply\nformat ascii 1.0\nelement vertex 1\nproperty int x\nproperty int y\nend_header\n1 2\n",
    b"ply\nformat ascii 1.0\nelement vertex 2\nproperty int x\nproperty int y\nproperty int z\n"
    b"end_header\n1 2 3\n",  # one line short
    b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
    b"property float z\nend_header\n1 nan 3\n",
    b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\n"
    b"property float y\nproperty float z\nend_header\n\x00\x00",  # truncated
    b"ply\nformat weird 1.0\nelement vertex 1\nproperty float x\nend_header\n",
    b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n",
    b"ply\nformat ascii 1.0\nelement vertex 1\nproperty int x\nproperty int y\n"
    b"property int z\nend_header\n1 2 three\n",
])
def test_malformed_ply_is_an_input_error(data):
    with pytest.raises(InputError):
        parse_ply(data)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        read_ply(tmp_path / "absent.ply")


def test_morton_round_trip():
    coords = np.random.default_rng(0).integers(0, 1 << 16, size=(1000, 3))
    np.testing.assert_array_equal(octree.morton_decode(octree.morton_encode(coords)), coords)


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_octree_build_and_inverse(depth):
    vox = _cloud(n=300, side=1 << depth, seed=depth)
    codes, bits = octree.build_levels(vox, depth)
    assert len(codes) == depth and codes[0].tolist() == [0]
    rebuilt = np.zeros(1, np.int64)
    for level in range(depth):
        np.testing.assert_array_equal(rebuilt, codes[level])
        assert bits[level].any(axis=1).all()  # every listed node has a child
        rebuilt = octree.children(rebuilt, bits[level])
    np.testing.assert_array_equal(octree.sort_voxels(octree.morton_decode(rebuilt)), vox)


def test_neighbour_table_finds_exactly_the_occupied_neighbours():
    vox = _cloud(n=400, side=16, seed=3)
    codes = np.unique(octree.morton_encode(vox))
    table = octree.neighbour_table(codes, 4)
    coords = octree.morton_decode(codes)
    occupied = {tuple(c) for c in coords}
    for i in range(0, codes.size, 37):
        for j, off in enumerate(octree.NEIGHBOUR_OFFSETS):
            q = tuple(coords[i] + off)
            if q in occupied:
                assert tuple(coords[table[i, j]]) == q
            else:
                assert table[i, j] == codes.size


def test_voxelize_keeps_in_range_integers_and_scales_floats():
    ints = _cloud(side=1024)
    v = octree.voxelize(ints, 10)
    np.testing.assert_array_equal(v.voxels, ints)
    assert v.origin == (0.0, 0.0, 0.0) and v.scale == 1.0
    floats = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    v = octree.voxelize(floats, 8)
    assert v.voxels.max() == 255 and v.voxels.min() == 0
    np.testing.assert_allclose(np.asarray(v.origin) + v.voxels * v.scale,
                               octree.sort_voxels(np.rint(floats / v.scale).astype(int)) * v.scale)
    with pytest.raises(InputError):
        octree.voxelize(np.zeros((3, 2)), 8)
    with pytest.raises(InputError):
        octree.voxelize(floats, 0)
    with pytest.raises(InputError):
        octree.voxelize(np.array([[np.nan, 0, 0], [1, 1, 1]]), 8)
