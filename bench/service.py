"""Service benchmark: encode/decode throughput and latency through the real gRPC services.

    .venv/bin/python bench/service.py                      # table
    .venv/bin/python bench/service.py --json out.json      # also machine-readable

Starts one encoder and one decoder process on loopback (profiles --encoder-profile /
--decoder-profile), then on 768x512 images (Kodak from --images if present, else generated):

  overhead     (measured first, on a quiet server) the service at 1 client vs the same work
               in this process (PNG read + encode + serialize; parse + validate + decode + PNG
               write), median over the same images, interleaved so that machine load hits
               both alike: (service - in-process) / in-process. Floor: at most 10 %.
  latency      for 1, 4 and 16 concurrent clients (one channel each): requests/s, p50 and
               p99 latency of EncodeImage (PNG in, Bitstream out) and DecodeImage (stream in,
               PNG out); every decode is checked bit-exact.
  memory       RSS of both server processes after warm-up and after --rss-requests more
               requests of each kind (4 clients).

Without shipped weights it falls back to a small random model (then the times say nothing about
the real networks) and says so in the output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KODAK = Path("/work/shared/data/kodak")
WIDTH, HEIGHT = 768, 512


def load_images(folder: Path | None, count: int) -> tuple[list[bytes], str]:
    """PNG bytes of `count` 768x512 images (landscape; portrait ones are rotated)."""
    from PIL import Image

    from reprocodec.image.io import decode_image_bytes, encode_png

    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))
        out = []
        for path in files[:count]:
            pixels = decode_image_bytes(path.read_bytes())
            if pixels.shape[0] > pixels.shape[1]:
                pixels = np.ascontiguousarray(np.rot90(pixels))
            image = Image.fromarray(pixels).resize((WIDTH, HEIGHT), Image.BICUBIC)
            out.append(encode_png(np.asarray(image)))
        if out:
            return out, str(folder)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = []
    for i in range(count):  # smooth gradients + texture: codes like a photo, not like noise
        base = np.stack([(x * (i + 1) + y) % 256, (y * 2 + i * 40) % 256, (x + y) // 6 % 256], -1)
        noise = rng.normal(0, 6, size=base.shape)
        out.append(encode_png(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out, "generated"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_load(make_client, call, items: list, clients: int, requests: int) -> dict:
    """`requests` calls spread over `clients` threads, each with its own channel."""
    latencies: list[float] = []
    pool_clients = [make_client() for _ in range(clients)]

    def worker(k: int) -> list[float]:
        client, times = pool_clients[k], []
        for j in range(k, requests, clients):
            started = time.perf_counter()
            call(client, items[j % len(items)])
            times.append(time.perf_counter() - started)
        return times

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for times in pool.map(worker, range(clients)):
            latencies.extend(times)
    wall = time.perf_counter() - started
    for c in pool_clients:
        c.close()
    return {
        "clients": clients, "requests": requests, "seconds": wall,
        "throughput_rps": requests / wall,
        "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
    }


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=KODAK, help="folder of photos (default Kodak)")
    p.add_argument("--count", type=int, default=8, help="distinct images used (default 8)")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--weights-dir", type=Path, help="weights folder (default: shipped)")
    p.add_argument("--encoder-profile", default="cpu")
    # Same profile by default: the overhead compares the decoder service with an in-process
    # decode, which runs under the encoder's profile (one profile per process).
    p.add_argument("--decoder-profile", default="cpu")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--overhead-requests", type=int, default=16)
    p.add_argument("--rss-requests", type=int, default=500)
    p.add_argument("--sections", default="overhead,latency,memory",
                   help="comma-separated subset of overhead,latency,memory")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    args = p.parse_args()
    sections = set(args.sections.split(","))

    from reprocodec import container
    from reprocodec.client import DecoderClient, EncoderClient
    from reprocodec.image import list_models
    from reprocodec.image.io import decode_image_bytes, encode_png
    from reprocodec.server.testing import ServerProcess

    weights_dir, note = args.weights_dir, "shipped weights"
    if weights_dir is None and not list_models():
        from reprocodec.image.testing import write_random_model

        weights_dir = Path(tempfile.mkdtemp(prefix="reprocodec-bench-"))
        write_random_model(weights_dir)
        note = "NO shipped weights: small random model (times say nothing about real models)"
    wflags = ["--weights-dir", str(weights_dir)] if weights_dir else []
    levels = [int(c) for c in args.concurrency.split(",")]
    top = str(max(levels))
    images, source = load_images(args.images, args.count)
    print(f"images: {len(images)} x {WIDTH}x{HEIGHT} from {source}; {note}", flush=True)

    enc_proc = ServerProcess("encoder", "--profile", args.encoder_profile,
                             "--max-concurrency", top, *wflags)
    dec_proc = ServerProcess("decoder", "--profile", args.decoder_profile,
                             "--max-concurrency", top, *wflags)
    results: dict = {"images": source, "weights": note, "width": WIDTH, "height": HEIGHT}
    try:
        enc_proc.ready()
        dec_proc.ready()

        def new_encoder():
            return EncoderClient(enc_proc.target, timeout=600)

        def new_decoder():
            return DecoderClient(dec_proc.target, timeout=600)

        with new_encoder() as enc:
            model = args.model or next(m.name for m in enc.list_models().models if m.is_default)
            streams = [enc.encode_image(png, model=model).bitstream for png in images]
        results["model"] = model
        files = [s.SerializeToString(deterministic=True) for s in streams]

        def encode(client, png):
            client.encode_image(png, model=model)

        def decode(client, data):
            if not client.decode_image(data).bit_exact:
                raise RuntimeError("decode was not bit-exact")

        # Warm-up: first calls pay for lazy initialisation on both sides.
        run_load(new_encoder, encode, images, 1, 2)
        run_load(new_decoder, decode, files, 1, 2)

        if "overhead" in sections:  # first: a quiet server, as a single client sees it
            results["overhead"] = overhead(args, model, weights_dir, images, files,
                                           new_encoder, new_decoder, encode, decode,
                                           container, decode_image_bytes, encode_png)
        if "latency" in sections:
            rows = []
            for clients in levels:
                for op, make, call, items in (("encode", new_encoder, encode, images),
                                              ("decode", new_decoder, decode, files)):
                    row = {"op": op, **run_load(make, call, items, clients,
                                                max(args.requests, clients))}
                    rows.append(row)
                    print(f"  {op} x{clients}: {row['throughput_rps']:.2f} req/s "
                          f"p50 {row['p50_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms", flush=True)
            results["latency"] = rows
        if "memory" in sections:
            # Warm at the measuring concurrency first (the allocator's arenas grow to their
            # working size), then RSS before vs after many more requests.
            run_load(new_encoder, encode, images, 4, 8)
            run_load(new_decoder, decode, files, 4, 8)
            pids = {"encoder": enc_proc.proc.pid, "decoder": dec_proc.proc.pid}
            series = {k: [rss_mb(pid)] for k, pid in pids.items()}
            step = 100  # RSS sampled every `step` requests: a leak shows as a steady climb
            for done in range(0, args.rss_requests, step):
                n = min(step, args.rss_requests - done)
                run_load(new_encoder, encode, images, 4, n)
                run_load(new_decoder, decode, files, 4, n)
                for k, pid in pids.items():
                    series[k].append(rss_mb(pid))
            results["memory"] = {
                "requests_each": args.rss_requests, "sample_every": step,
                "rss_mb_before": {k: v[0] for k, v in series.items()},
                "rss_mb_after": {k: v[-1] for k, v in series.items()},
                "rss_mb_series": series,
            }
    finally:
        enc_proc.stop()
        dec_proc.stop()

    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def overhead(args, model, weights_dir, images, files, new_encoder, new_decoder, encode, decode,
             container, decode_image_bytes, encode_png) -> dict:
    """Median seconds per request: service at 1 client vs the same work in this process."""
    from reprocodec.image import ImageCodec
    from reprocodec.numerics import apply_profile

    apply_profile(args.encoder_profile)  # in-process encode runs as the encoder service does
    codec = ImageCodec.load(model, weights_dir=str(weights_dir) if weights_dir else None)
    n = args.overhead_requests

    def local_encode(png):
        codec.encode(decode_image_bytes(png)).SerializeToString(deterministic=True)

    def local_decode(data):
        encode_png(codec.decode(container.unpack(data)).pixels)

    # The service runs the codec on a worker thread; torch is measurably faster there than on
    # the main thread on this machine (its OpenMP team), so the in-process baseline does too.
    worker = concurrent.futures.ThreadPoolExecutor(1)

    def on_worker(fn):
        return lambda item: worker.submit(fn, item).result()

    local_encode, local_decode = on_worker(local_encode), on_worker(local_decode)
    out: dict = {}
    if args.decoder_profile != args.encoder_profile:
        out["note"] = (f"decode overhead compares the {args.decoder_profile} service with an "
                       f"in-process decode under {args.encoder_profile}")
    for op, local, make, call, items in (("encode", local_encode, new_encoder, encode, images),
                                         ("decode", local_decode, new_decoder, decode, files)):
        local(items[0])  # warm-up
        local_times, service_times = [], []
        client = make()
        for j in range(n):  # interleaved, so machine load hits both alike
            item = items[j % len(items)]
            started = time.perf_counter()
            local(item)
            local_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            call(client, item)
            service_times.append(time.perf_counter() - started)
        client.close()
        in_process, service = statistics.median(local_times), statistics.median(service_times)
        out[op] = {"in_process_ms": 1000 * in_process, "service_ms": 1000 * service,
                   "overhead": (service - in_process) / in_process, "requests": n}
    worker.shutdown()
    return out


def print_tables(results: dict) -> None:
    print(f"\nmodel {results['model']}, {results['width']}x{results['height']}, "
          f"images: {results['images']}; {results['weights']}")
    if "latency" in results:
        print(f"{'op':8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results.get("latency", []):
        print(f"{r['op']:8} {r['clients']:7d} {r['throughput_rps']:8.2f} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")
    if "overhead" in results:
        print(f"\n{'op':8} {'in-process ms':>14} {'service ms':>11} {'overhead':>9}  (1 client)")
    for op, r in results.get("overhead", {}).items():
        if op == "note":
            print(f"  note: {r}")
            continue
        print(f"{op:8} {r['in_process_ms']:14.1f} {r['service_ms']:11.1f} "
              f"{100 * r['overhead']:8.1f}%")
    if "memory" not in results:
        return
    m = results["memory"]
    print(f"\nRSS MB over {m['requests_each']} requests each (4 clients), "
          f"every {m['sample_every']}:")
    for service in ("encoder", "decoder"):
        trail = " ".join(f"{x:.0f}" for x in m["rss_mb_series"][service])
        print(f"  {service}: {trail}  (before -> after: {m['rss_mb_before'][service]:.0f} -> "
              f"{m['rss_mb_after'][service]:.0f})")


if __name__ == "__main__":
    sys.exit(main())
