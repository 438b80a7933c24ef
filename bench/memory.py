"""Peak memory of one image encode and one decode, per image size: extra RSS over the
process's resident size just before the call (model loaded, kernels warm, input in memory),
each measurement in a fresh subprocess (getrusage's ru_maxrss is a process-lifetime peak).

    python bench/memory.py                          # 0.25, 1, 4, 12, 24 MP
    python bench/memory.py --sizes 6000x4000 --json out.json
    python bench/memory.py --budget                 # also the services' per-request
                                                    # estimate (server.core.request_memory)
    python bench/memory.py --service --budget       # through the services' request
                                                    # handling (PNG in and out)
    python bench/memory.py --sizes --clouds 100000 1000000 --budget
    python bench/memory.py --sizes --clouds 1000000 --depth 16 --smallest --budget

Images are a shipped sample photo resized (bicubic) to each size, so the entropy coder sees
photo-like statistics; point clouds are N points on a sphere and a plane (distinct voxels at
the depth given; --smallest encodes them with coders="smallest", mixed probabilities
included). Numbers are MB (10^6 bytes) of extra peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "reprocodec" / "samples" / "astronaut.png"
DEFAULT_SIZES = ["512x512", "1024x1024", "2048x2048", "4000x3000", "6000x4000"]


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _image(width: int, height: int, channels: int):
    import numpy as np
    from PIL import Image

    img = Image.open(SAMPLE).convert("RGB" if channels == 3 else "L")
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    px = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(px if channels == 3 else px[:, :, None])


def worker(args: argparse.Namespace) -> None:
    import numpy as np

    from reprocodec import container, numerics
    from reprocodec.image import ImageCodec
    from reprocodec.safeguard.modes import warm_up

    numerics.apply_profile(args.profile)
    if args.cloud:
        return cloud_worker(args)
    codec = ImageCodec.load(args.model)
    warm_up()
    codec.decode(codec.encode(np.full((64, 64, 3), 128, np.uint8), args.mode, args.level))
    if args.service:
        return service_worker(args, codec)
    if args.op == "encode":
        width, height = (int(v) for v in args.size.split("x"))
        pixels = _image(width, height, args.channels)
        base = _rss_now()
        started = time.perf_counter()
        msg = codec.encode(pixels, args.mode, args.level)
        seconds = time.perf_counter() - started
        Path(args.stream).write_bytes(container.pack(msg))
    else:
        msg = container.unpack(Path(args.stream).read_bytes())
        base = _rss_now()
        started = time.perf_counter()
        out = codec.decode(msg)
        seconds = time.perf_counter() - started
        if not out.bit_exact and args.level != "decoding":
            raise SystemExit("decode not bit-exact")
    print(json.dumps({"base": base, "peak": _peak(), "seconds": seconds}))


def service_worker(args: argparse.Namespace, codec) -> None:
    """What a service does with one request beyond the codec: the PNG file decoded to pixels
    (encode), the PNG written (decode), the response serialized."""
    from reprocodec import container, options
    from reprocodec.image.io import encode_png
    from reprocodec.server import backend
    from reprocodec.v1 import service_pb2

    codecs = backend.Codecs()
    codecs._loaded[args.model] = codec
    if args.op == "encode":
        width, height = (int(v) for v in args.size.split("x"))
        request = service_pb2.EncodeImageRequest(
            image_file=encode_png(_image(width, height, args.channels)), model=args.model,
            safeguard_mode=options.mode_proto(args.mode), level=options.level_proto(args.level))
        base = _rss_now()
        started = time.perf_counter()
        pixels = backend.image_pixels(request, 10**9)
        response = backend.encode_image(codecs, request, pixels, args.profile)
        del pixels
        size = len(response.SerializeToString())
        seconds = time.perf_counter() - started
        Path(args.stream).write_bytes(container.pack(response.bitstream))
    else:
        msg = container.unpack(Path(args.stream).read_bytes())
        base = _rss_now()
        started = time.perf_counter()
        response = backend.decode_image(codecs, msg, service_pb2.OUTPUT_FORMAT_ENCODED,
                                        args.profile)
        size = len(response.SerializeToString())
        seconds = time.perf_counter() - started
        if not response.bit_exact and args.level != "decoding":
            raise SystemExit("decode not bit-exact")
    print(json.dumps({"base": base, "peak": _peak(), "seconds": seconds, "bytes": size}))


def _cloud(n: int):
    import numpy as np

    rng = np.random.default_rng(n)
    v = rng.normal(size=(n - n // 2, 3))
    sphere = v / np.linalg.norm(v, axis=1, keepdims=True)
    plane = np.c_[rng.uniform(-1, 1, size=(n // 2, 2)), np.full(n // 2, -1.0)]
    return np.concatenate([sphere, plane]).astype(np.float32)


def cloud_worker(args: argparse.Namespace) -> None:
    from reprocodec import container
    from reprocodec.pointcloud import load_codec
    from reprocodec.safeguard.modes import warm_up

    codec = load_codec(args.cloud_model)
    warm_up()
    codec.decode(codec.encode(_cloud(1000), args.mode, depth=8))
    if args.op == "encode":
        points = _cloud(int(args.size))
        base = _rss_now()
        started = time.perf_counter()
        msg = codec.encode(points, args.mode, depth=args.depth,
                           coders="smallest" if args.smallest else "auto")
        seconds = time.perf_counter() - started
        Path(args.stream).write_bytes(container.pack(msg))
    else:
        msg = container.unpack(Path(args.stream).read_bytes())
        base = _rss_now()
        started = time.perf_counter()
        codec.decode(msg)
        seconds = time.perf_counter() - started
    print(json.dumps({"base": base, "peak": _peak(), "seconds": seconds,
                      "voxels": int(msg.point_cloud.num_points)}))


def measure(size: str, args: argparse.Namespace, work: Path, cloud: bool = False) -> dict:
    stream = work / f"{size}.rpc"
    row: dict = {"size": size}
    for op in ("encode", "decode"):
        cmd = [sys.executable, __file__, "--worker", op, "--size", size, "--stream", str(stream),
               "--model", args.model, "--profile", args.profile, "--mode", args.mode,
               "--level", args.level, "--channels", str(args.channels),
               "--depth", str(args.depth), "--cloud-model", args.cloud_model]
        if cloud:
            cmd.append("--cloud")
        if args.smallest:
            cmd.append("--smallest")
        if args.service:
            cmd.append("--service")
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"{op} {size} failed:\n{res.stderr[-2000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {op} {size}: {json.dumps(r)}", file=sys.stderr, flush=True)
        row[op] = {"extra_mb": (r["peak"] - r["base"]) / 1e6, "base_mb": r["base"] / 1e6,
                   "seconds": r["seconds"]}
        if "voxels" in r:
            row["voxels"] = r["voxels"]
    row["stream_bytes"] = stream.stat().st_size
    if args.budget:
        from server.core import request_memory

        if cloud:
            elements, kind = int(size), "PointCloud"
        else:
            w, h = (int(v) for v in size.split("x"))
            elements, kind = w * h, "Image"
        row["budget_mb"] = {op: request_memory(f"{op.capitalize()}{kind}", elements) / 1e6
                            for op in ("encode", "decode")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="WIDTHxHEIGHT ...")
    ap.add_argument("--model", default="bmshj2018-hyperprior-q3")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--mode", default="syndrome")
    ap.add_argument("--level", default="both")
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--clouds", nargs="*", default=[], help="point counts to measure")
    ap.add_argument("--depth", type=int, default=10, help="octree depth of the clouds")
    from reprocodec.pointcloud.models import DEFAULT_MODEL

    ap.add_argument("--cloud-model", default=DEFAULT_MODEL,
                    help="point-cloud model (default: %(default)s, the default model)")
    ap.add_argument("--cloud", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smallest", action="store_true",
                    help="point clouds: coders=\"smallest\" (mixed probabilities too)")
    ap.add_argument("--budget", action="store_true",
                    help="compare with the services' estimate (server.core.request_memory)")
    ap.add_argument("--service", action="store_true",
                    help="images as a service handles them: PNG file in (decoded to pixels), "
                         "PNG out, the response serialized")
    ap.add_argument("--json")
    ap.add_argument("--worker", choices=("encode", "decode"), help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--stream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.op = args.worker
        worker(args)
        return
    rows = []
    print(f"model {args.model}, profile {args.profile}, mode {args.mode}, level {args.level}, "
          f"{args.channels} channel(s){', as a service (PNG in/out)' if args.service else ''}; "
          "extra peak RSS in MB")
    head = f"{'size':>10} {'MP':>6} {'enc MB':>8} {'dec MB':>8} {'enc s':>7} {'dec s':>7}"
    print(head + ("  budget enc/dec MB" if args.budget else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            row = measure(size, args, Path(tmp))
            rows.append(row)
            w, h = (int(v) for v in size.split("x"))
            print(f"{size:>10} {w * h / 1e6:6.2f} " + _columns(row, args.budget), flush=True)
        if args.clouds:
            print(f"point clouds, depth {args.depth}, model {args.cloud_model}"
                  + (", smallest" if args.smallest else ""))
            print(f"{'points':>10} {'voxels':>9} {'enc MB':>8} {'dec MB':>8} {'enc s':>7} "
                  f"{'dec s':>7}" + ("  budget enc/dec MB" if args.budget else ""))
        for n in args.clouds:
            row = measure(n, args, Path(tmp), cloud=True)
            rows.append(row)
            print(f"{int(n):>10} {row['voxels']:>9} " + _columns(row, args.budget), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def _columns(row: dict, budget: bool) -> str:
    """enc/dec extra MB and seconds (and the budget's estimates) of one measured row."""
    line = (f"{row['encode']['extra_mb']:8.0f} {row['decode']['extra_mb']:8.0f} "
            f"{row['encode']['seconds']:7.1f} {row['decode']['seconds']:7.1f}")
    if budget:
        line += f"  {row['budget_mb']['encode']:8.0f} {row['budget_mb']['decode']:8.0f}"
    return line


if __name__ == "__main__":
    main()
