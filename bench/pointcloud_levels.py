"""Per octree level: what the learned model saves over the adaptive coder, per network row.

    python bench/pointcloud_levels.py [--real DIR --real-depths 10]

The numbers behind the encoder's row price (codec.ROW_PRICE: a level goes learned only where
the model saves more than that per row). For each cloud of bench/pointcloud.py --clouds (or
every DIR/*.ply), each level's nodes, occupied children per node, network rows per point,
the adaptive coder's and the learned model's exact code lengths (bits per point, refined
probabilities priced as the encoder prices them) and the learned model's saving per network
row, in bits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from pointcloud import real_clouds, synthetic_clouds  # noqa: E402

from reprocodec import entropy  # noqa: E402
from reprocodec.pointcloud import codec as codec_module  # noqa: E402
from reprocodec.pointcloud import octree  # noqa: E402
from reprocodec.pointcloud.codec import PointCloudCodec  # noqa: E402
from reprocodec.safeguard import Mode  # noqa: E402

UNIT = 1 << entropy.COST_FRACTION  # code-length units per bit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", help="every .ply of this folder instead of the synthetic clouds")
    ap.add_argument("--real-depths", default="10")
    args = ap.parse_args()
    clouds = (real_clouds(Path(args.real), [int(d) for d in args.real_depths.split(",")])
              if args.real else synthetic_clouds())
    codec = PointCloudCodec.load(threads=1)
    print(f"model {codec.info.name}; row price {codec_module.ROW_PRICE[0]}/"
          f"{codec_module.ROW_PRICE[1]} bit")
    for name, points, depth in clouds:
        voxels = octree.voxelize(points, depth).voxels
        n = voxels.shape[0]
        codes, bits = octree.build_levels(voxels, depth)
        # the encoder's own costs (its private steps: this is what its choice compares)
        adaptive_cost = codec_module._adaptive_costs(bits)
        # (_learned_levels empties the list of codes it is given as it walks the levels)
        learned = codec._learned_levels(list(codes), bits, adaptive_cost, Mode.SYNDROME, "learned",
                                        (0, 1)).learned
        print(f"{name}: {n} points, depth {depth}")
        print("  level    nodes  children  rows/pt  adaptive  learned  saved bits/row")
        for level in range(depth):
            rows = bits[level].size
            saved = (adaptive_cost[level] - learned[level].cost) / UNIT / rows
            children = np.count_nonzero(bits[level]) / codes[level].size
            print(f"  {level:5d} {codes[level].size:8d} {children:9.2f} {rows / n:8.2f} "
                  f"{adaptive_cost[level] / UNIT / n:9.3f} {learned[level].cost / UNIT / n:8.3f} "
                  f"{saved:15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
