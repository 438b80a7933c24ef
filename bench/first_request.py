"""The first requests of fresh services: time to READY, then each kind's first and second request.

    python bench/first_request.py [--runs 3] [--empty-cache] [--preload default|none]

Starts an encoder and a decoder process (default flags, shipped weights) `--runs` times, and
times how long each takes to print its READY line (both start together, as in a deployment),
then two requests of each kind through them, one at a time: EncodePointCloud and
DecodePointCloud of the 1/20 sampling of bench/pointcloud.py (29,941 points at depth 10), and
EncodeImage and DecodeImage of the shipped astronaut sample (512 x 512); and each service's
RSS when it is READY (Linux). Printed: the median over the runs of each. The first request
pays whatever the service did not do before READY: with --preload default (the services' own
default) each model is loaded and warmed up first (its kernels and first inference run
once); with --preload none nothing is: the first request loads its model and its kernels
(0.7.3's default loaded the models before READY, not the kernels). --empty-cache gives each
run an empty numba cache (a new container's: every kernel is compiled, not loaded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pointcloud import synthetic_clouds  # noqa: E402

from reprocodec.client import DecoderClient, EncoderClient  # noqa: E402
from reprocodec.server.testing import ServerProcess  # noqa: E402

SAMPLE = REPO / "reprocodec" / "samples" / "astronaut.png"


def timed(times: dict[str, float], key: str, call):
    t = time.perf_counter()
    result = call()
    times[key] = time.perf_counter() - t
    return result


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(points, depth: int, image: bytes, preload: str, cache: str | None) -> dict:
    env = {"NUMBA_CACHE_DIR": cache} if cache else None
    started = time.perf_counter()
    servers = [ServerProcess(name, "--preload", preload, env=env)
               for name in ("encoder", "decoder")]
    times: dict[str, float] = {}
    try:
        for s in servers:
            s.ready(timeout=600)
        times["READY"] = time.perf_counter() - started
        for s in servers:  # the idle services' memory (printed in MB)
            times[f"{s.service} MB at READY"] = _rss_mb(s.proc.pid) / 1e3
        with EncoderClient(servers[0].target, timeout=600) as enc, \
                DecoderClient(servers[1].target, timeout=600) as dec:
            for n in ("first", "second"):
                cloud = timed(times, f"{n} EncodePointCloud",
                              partial(enc.encode_point_cloud, points, depth=depth)).bitstream
                timed(times, f"{n} DecodePointCloud", partial(dec.decode_point_cloud, cloud))
                picture = timed(times, f"{n} EncodeImage",
                                partial(enc.encode_image, image)).bitstream
                timed(times, f"{n} DecodeImage", partial(dec.decode_image, picture))
    finally:
        for s in servers:
            s.stop()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--preload", choices=("default", "none"), default="default")
    ap.add_argument("--empty-cache", action="store_true",
                    help="an empty numba cache for each run (every kernel compiled)")
    args = ap.parse_args()
    points, depth = next((p, d) for n, p, d in synthetic_clouds() if n == "surface 1/20 sampled")
    image = SAMPLE.read_bytes()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            runs.append(one_run(points, depth, image, args.preload,
                                cache if args.empty_cache else None))
    print(f"--preload {args.preload}{', empty numba cache' if args.empty_cache else ''}: "
          f"medians of {args.runs} runs, ms (the services' RSS at READY: MB)")
    for key in runs[0]:
        values = [r[key] * 1e3 for r in runs]
        print(f"  {key:24s} {statistics.median(values):8.0f}   "
              f"({' '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
