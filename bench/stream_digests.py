"""The size and SHA-256 of every benchmark cloud's stream, to compare two trees or formats.

    python bench/stream_digests.py [--bitstream-format N] [--real data/real]
        [--held-out data/pc/test]

The synthetic clouds of bench/pointcloud.py (--clouds), and the PLY files of the folders
given (real scans at depths 10 and 12, held-out meshes at depth 10), each encoded with
coders auto and smallest; one line each: cloud, coders, bytes, the first 16 hex digits of
the SHA-256. Run it in two checkouts (or at two formats) and diff the output: the lines
that differ are the streams a change touched.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pointcloud import synthetic_clouds  # noqa: E402

from reprocodec import container  # noqa: E402
from reprocodec.pointcloud import ply  # noqa: E402
from reprocodec.pointcloud.codec import PointCloudCodec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bitstream-format", type=int, default=None)
    ap.add_argument("--real", type=Path, help="real scans (depths 10 and 12)")
    ap.add_argument("--held-out", type=Path, help="held-out meshes (depth 10)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    codec = PointCloudCodec.load(threads=args.threads)
    clouds = list(synthetic_clouds())
    for folder, depths in ((args.real, (10, 12)), (args.held_out, (10,))):
        for path in sorted(folder.glob("*.ply")) if folder else []:
            points = ply.read_ply(path)
            clouds += [(f"{path.name} d{d}", points, d) for d in depths]
    formats = {"bitstream_format": args.bitstream_format} if args.bitstream_format else {}
    for name, points, depth in clouds:
        for coders in ("auto", "smallest"):
            data = container.pack(codec.encode(points, depth=depth, coders=coders, **formats))
            print(name, coders, len(data), hashlib.sha256(data).hexdigest()[:16], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
