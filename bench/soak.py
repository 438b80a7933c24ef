"""Soak test: N clients x M minutes of mixed traffic against real encoder and decoder services.

    python bench/soak.py --clients 16 --minutes 10                  # the full soak (not in CI)
    python bench/soak.py --clients 4 --minutes 1 --json soak.json   # a short check

Starts one encoder (--encoder-profile, default cpu) and one decoder (--decoder-profile,
default cpu-nomkldnn) as subprocesses on loopback with their default flags (4 workers, queue
of 16) plus --encoder-flags / --decoder-flags, then runs `--clients` client threads (one
channel each), each looping until the time is up over a weighted mix (--mix):

  image     encode a PNG (256x256, 768x512 or 1536x1024, Kodak from --images if present,
            else crops of the shipped samples), decode its stream, check bit_exact and the
            output checksum against the stream's (a mismatch counts as WRONG)
  cloud     encode a point cloud (shipped samples or a generated sphere), decode it, check
            the voxels equal the locally voxelized input (a mismatch counts as WRONG)
  bad       one bad input, each with the status it must get: garbage, 16-bit, transparent
            and bomb images, truncated and bit-flipped streams, a chunk missing, an oversize
            chunk, a PLY at +-1e308
  cancel    a large encode cancelled by the client after 0.05-0.5 s, or a large decode with a
            0.05-0.3 s deadline (must end CANCELLED / DEADLINE_EXCEEDED)

Reports: calls and throughput, p50/p99 latency per call kind, client-side status counts, the
servers' own requests_total by code (to compare), and every call that ended otherwise than
expected: LOST (an unexpected status: INTERNAL, UNKNOWN, UNAVAILABLE, a RESOURCE_EXHAUSTED or
DEADLINE_EXCEEDED for a good request within its deadline) and WRONG (OK with a wrong result).
RSS of both servers every --rss-interval seconds (10) with the least-squares slope in MB/min
over the whole run and over its second half (after the allocator's warm-up). Those samples
include whatever is in flight (a large encode holds hundreds of MB), so every --rest-every
seconds (60) the clients also pause between calls until nothing runs, and both servers' RSS
is sampled at rest: the slope of those samples is the memory the services keep. At the end both
services get SIGTERM; their exit status and time to exit are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KODAK = Path("/work/shared/data/kodak")
SIZES = {"small": (256, 256), "medium": (512, 768), "large": (1024, 1536)}  # (h, w)
MIB = 1 << 20


# ---------------------------------------------------------------------------- inputs


def load_images(folder: Path | None) -> tuple[dict[str, list[bytes]], str]:
    """PNG bytes per size class: photos resized/cropped to each size."""
    from PIL import Image

    from reprocodec.image.io import decode_image_bytes, encode_png

    photos, source = [], "shipped samples"
    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:6]
        photos = [decode_image_bytes(p.read_bytes()) for p in files]
        source = str(folder) if photos else source
    if not photos:
        samples = REPO / "reprocodec" / "samples"
        photos = [decode_image_bytes(p.read_bytes()) for p in sorted(samples.glob("*.png"))]
    out: dict[str, list[bytes]] = {}
    for name, (h, w) in SIZES.items():
        out[name] = []
        for pixels in photos:
            if pixels.shape[2] == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            img = Image.fromarray(pixels)
            scale = max(h / img.height, w / img.width)
            img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))),
                             Image.BICUBIC)
            out[name].append(encode_png(np.asarray(img)[:h, :w]))
    return out, source


def load_clouds(seed: int) -> list[tuple[object, int, np.ndarray]]:
    """(PLY bytes or float32 points, depth, expected voxels) triples."""
    from reprocodec.pointcloud import octree, ply

    out = []
    for path, depth in ((REPO / "reprocodec/samples/camel_d6.ply", 6),
                        (REPO / "reprocodec/samples/elephant_d7.ply", 7)):
        if path.exists():
            data = path.read_bytes()
            out.append((data, depth, octree.voxelize(ply.parse_ply(data), depth).voxels))
    v = np.random.default_rng(seed).normal(size=(20000, 3))
    sphere = (5.0 + 3.0 * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    out.append((sphere, 8, octree.voxelize(sphere.astype(np.float64), 8).voxels))
    return out


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                               0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def bad_inputs(stream_bytes: bytes) -> list[tuple[str, str, object, str]]:
    """(name, service, payload, expected status) of the bad requests."""
    from PIL import Image

    def save(img, fmt="PNG") -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    rng = np.random.default_rng(1)
    flipped = bytearray(stream_bytes)
    flipped[len(flipped) // 2] ^= 0x10
    rgba = np.dstack([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                      np.full((64, 64), 100, np.uint8)])
    ply_bytes = (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\n"
                 b"property double y\nproperty double z\nend_header\n1e308 0 0\n-1e308 1 1\n")
    return [
        ("garbage_image", "encode_image", rng.bytes(3000), "INVALID_ARGUMENT"),
        ("16bit_png", "encode_image",
         save(Image.fromarray(np.full((64, 64), 40000, np.uint16))), "INVALID_ARGUMENT"),
        ("transparent_png", "encode_image", save(Image.fromarray(rgba, "RGBA")),
         "INVALID_ARGUMENT"),
        ("png_bomb", "encode_image", _png_header_only(30000, 30000), "RESOURCE_EXHAUSTED"),
        ("truncated_stream", "decode_image", stream_bytes[: len(stream_bytes) // 2],
         "INVALID_ARGUMENT"),
        ("flipped_stream", "decode_image", bytes(flipped), "INVALID_ARGUMENT"),
        ("chunk_missing", "decode_stream", "missing", "INVALID_ARGUMENT"),
        ("oversize_chunk", "decode_stream", "oversize", "RESOURCE_EXHAUSTED"),
        ("ply_1e308", "encode_cloud", ply_bytes, "INVALID_ARGUMENT"),
    ]


# ---------------------------------------------------------------------------- the run


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: Counter = Counter()  # (service, code)
        self.kinds: Counter = Counter()  # (kind, code)
        self.unexpected: list[str] = []
        self.wrong: list[str] = []

    def record(self, kind: str, service: str, code: str, seconds: float,
               expected: tuple[str, ...] = ("OK",)) -> bool:
        with self.lock:
            self.latency[kind].append(seconds)
            self.status[(service, code)] += 1
            self.kinds[(kind, code)] += 1
            if code not in expected:
                self.unexpected.append(f"{kind}: {code} (expected {'/'.join(expected)})")
        return code in expected

    def mark_wrong(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)


def timed(fn):
    import grpc

    from reprocodec.client import ServiceError

    started = time.perf_counter()
    try:
        result, code = fn(), "OK"
    except ServiceError as exc:
        result, code = exc, exc.code.name
    except grpc.RpcError as exc:
        result, code = exc, exc.code().name
    return result, code, time.perf_counter() - started


def bad_call(where: str, payload, enc, dec, dec_stub, model: str, cloud_model: str,
             timeout: float):
    """(callable, service) of one bad request."""
    from reprocodec import chunking
    from reprocodec.v1 import service_pb2

    if where == "encode_image":
        return (lambda: enc.encode_image(payload, model=model)), "encoder"
    if where == "encode_cloud":
        return (lambda: enc.encode_point_cloud(payload, model=cloud_model)), "encoder"
    if where == "decode_image":
        return (lambda: dec.decode_image(payload)), "decoder"
    part = bytes(MIB)
    if payload == "missing":  # announces 3 MiB, sends 2
        chunks = [service_pb2.Chunk(data=part, total_bytes=3 * MIB), service_pb2.Chunk(data=part)]
    else:  # one chunk over the 4 MiB a chunk may carry
        size = chunking.MAX_CHUNK_BYTES + 1
        chunks = [service_pb2.Chunk(data=bytes(size), total_bytes=size)]
    return (lambda: list(dec_stub.DecodeImageStream(iter(chunks), timeout=timeout))), "decoder"


class RestGate:
    """Lets the monitor stop the clients between calls to sample RSS with nothing in flight."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.paused = False
        self.active = 0

    def enter(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.paused)
            self.active += 1

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def rest(self, sample, settle: float = 2.0) -> float:
        """Pause the clients, wait for running calls to end, sample; returns seconds paused."""
        started = time.monotonic()
        with self.cond:
            self.paused = True
            self.cond.wait_for(lambda: self.active == 0)
        time.sleep(settle)  # the servers finish their bookkeeping (and, idle 1 s, trim their heaps)
        sample()
        with self.cond:
            self.paused = False
            self.cond.notify_all()
        return time.monotonic() - started


def client_loop(k: int, args, targets, images, streams, clouds, bads, model, cloud_model,
                rec: Recorder, stop_at: float, gate: RestGate) -> None:
    from reprocodec.client import DecoderClient, EncoderClient
    from reprocodec.v1 import service_pb2_grpc

    rng = random.Random(args.seed * 1000 + k)
    mix = [(name, float(w)) for name, w in (p.split("=") for p in args.mix.split(","))]
    names, weights = zip(*mix, strict=True)
    enc = EncoderClient(targets[0], timeout=args.timeout, retries=0)
    dec = DecoderClient(targets[1], timeout=args.timeout, retries=0)
    dec_stub = service_pb2_grpc.DecoderStub(dec.channel)
    try:
        while time.monotonic() < stop_at:
            gate.enter()
            try:
                one_call(rng.choices(names, weights)[0], rng, args, images, streams, clouds,
                         bads, model, cloud_model, rec, enc, dec, dec_stub)
            finally:
                gate.leave()
    finally:
        enc.close()
        dec.close()


def one_call(op, rng, args, images, streams, clouds, bads, model, cloud_model, rec, enc, dec,
             dec_stub) -> None:
    """One call (or an encode + decode pair) of kind op, recorded in rec."""
    import grpc

    from reprocodec.client import cloud_voxels
    from reprocodec.v1 import service_pb2

    if op == "image":
        size = rng.choice(list(SIZES))
        png = rng.choice(images[size])
        r, code, t = timed(lambda png=png: enc.encode_image(png, model=model))
        if not rec.record(f"encode_{size}", "encoder", code, t):
            return
        stream = r.bitstream
        r, code, t = timed(lambda s=stream: dec.decode_image(s, raw=True))
        if rec.record(f"decode_{size}", "decoder", code, t):
            if not r.bit_exact or r.output_checksum != stream.output_checksum:
                rec.mark_wrong(f"decode_{size}: not bit-exact")
    elif op == "cloud":
        cloud, depth, expected = rng.choice(clouds)
        r, code, t = timed(lambda c=cloud, d=depth: enc.encode_point_cloud(
            c, model=cloud_model, depth=d))
        if not rec.record("encode_cloud", "encoder", code, t):
            return
        stream = r.bitstream
        r, code, t = timed(lambda s=stream: dec.decode_point_cloud(s, raw=True))
        if rec.record("decode_cloud", "decoder", code, t):
            if not r.bit_exact or not np.array_equal(cloud_voxels(r), expected):
                rec.mark_wrong("decode_cloud: voxels differ from the input's")
    elif op == "bad":
        name, where, payload, want = rng.choice(bads)
        call, service = bad_call(where, payload, enc, dec, dec_stub, model,
                                 cloud_model, args.timeout)
        _, code, t = timed(call)
        rec.record(f"bad_{name}", service, code, t, expected=(want,))
    elif op == "cancel":
        if rng.random() < 0.5:  # the client gives up on a large encode
            request = service_pb2.EncodeImageRequest(
                image_file=rng.choice(images["large"]), model=model)
            started = time.perf_counter()
            future = enc._stub.EncodeImage.future(request, timeout=args.timeout)
            time.sleep(rng.uniform(0.05, 0.5))
            future.cancel()
            try:
                future.result()
                code = "OK"  # finished before the cancel
            except grpc.FutureCancelledError:
                code = "CANCELLED"
            except grpc.RpcError as exc:
                code = exc.code().name
            rec.record("cancelled_encode", "encoder", code,
                       time.perf_counter() - started, expected=("CANCELLED", "OK"))
        else:  # a deadline too short for a large decode
            stream = rng.choice(streams)
            _, code, t = timed(lambda s=stream: dec.decode_image(
                s, timeout=rng.uniform(0.05, 0.3)))
            rec.record("short_deadline_decode", "decoder", code, t,
                       expected=("DEADLINE_EXCEEDED", "OK"))


def rss_now(pids: dict[str, int]) -> dict[str, float]:
    """RSS in MiB of each process (NaN when it is gone)."""
    import psutil

    row = {}
    for k, pid in pids.items():
        try:
            row[k] = psutil.Process(pid).memory_info().rss / MIB
        except psutil.Error:
            row[k] = float("nan")
    return row


def rss_sampler(pids: dict[str, int], interval: float, stop: threading.Event,
                samples: list) -> None:
    started = time.monotonic()
    while True:
        samples.append({"t": time.monotonic() - started, **rss_now(pids)})
        if stop.wait(interval):
            return


def slope_mb_per_min(samples: list[dict], key: str) -> float:
    pts = [(s["t"] / 60, s[key]) for s in samples if s[key] == s[key]]
    if len(pts) < 2:
        return float("nan")
    t, y = np.array(pts).T
    return float(np.polyfit(t, y, 1)[0])


def server_counts(proc) -> dict[str, float]:
    out: Counter = Counter()
    for (name, labels), value in proc.scrape().items():
        if name == "reprocodec_requests_total":
            labels = dict(labels)
            if labels["method"] not in ("ListModels", "GetServerInfo"):
                out[labels["code"]] += value
    return dict(out)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--mix", default="image=0.55,cloud=0.15,bad=0.15,cancel=0.15",
                   help="weights of the call kinds (default image=0.55,cloud=0.15,bad=0.15,"
                        "cancel=0.15)")
    p.add_argument("--images", type=Path, default=KODAK, help="photos (default Kodak)")
    p.add_argument("--weights-dir", type=Path, help="weights folder (default: shipped)")
    p.add_argument("--model", default="", help="image model (default: the server's default)")
    p.add_argument("--encoder-profile", default="cpu")
    p.add_argument("--decoder-profile", default="cpu-nomkldnn")
    p.add_argument("--encoder-flags", default="", help="extra flags, e.g. '--queue-length 32'")
    p.add_argument("--decoder-flags", default="")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of a call (s)")
    p.add_argument("--rss-interval", type=float, default=10.0)
    p.add_argument("--rest-every", type=float, default=60.0,
                   help="pause the clients this often to sample RSS at rest (0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    from reprocodec.client import DecoderClient, EncoderClient
    from reprocodec.image import list_models
    from reprocodec.server.testing import ServerProcess
    from reprocodec.v1 import bitstream_pb2

    weights_dir, note = args.weights_dir, "shipped weights"
    if weights_dir is None and not list_models():
        from reprocodec.image.testing import write_random_model

        weights_dir = Path(tempfile.mkdtemp(prefix="reprocodec-soak-"))
        write_random_model(weights_dir)
        note = "NO shipped weights: small random model (times say nothing about real models)"
    wflags = ["--weights-dir", str(weights_dir)] if weights_dir else []
    images, source = load_images(args.images)
    clouds = load_clouds(args.seed)
    print(f"images: {sum(map(len, images.values()))} ({', '.join(SIZES)}) from {source}; "
          f"{len(clouds)} point clouds; {note}", flush=True)

    enc_proc = ServerProcess("encoder", "--profile", args.encoder_profile, *wflags,
                             *args.encoder_flags.split())
    dec_proc = ServerProcess("decoder", "--profile", args.decoder_profile, *wflags,
                             *args.decoder_flags.split())
    results: dict = {"clients": args.clients, "minutes": args.minutes, "mix": args.mix,
                     "images": source, "weights": note}
    rss: list[dict] = []
    rest: list[dict] = []  # RSS with nothing in flight
    stop = threading.Event()
    try:
        enc_proc.ready()
        dec_proc.ready()
        targets = (enc_proc.target, dec_proc.target)
        with EncoderClient(targets[0], timeout=600) as enc, \
                DecoderClient(targets[1], timeout=600) as dec:
            infos = enc.list_models().models
            model = args.model or next(m.name for m in infos if m.is_default
                                       and m.codec == bitstream_pb2.CODEC_KIND_IMAGE)
            cloud_model = next(m.name for m in infos if m.is_default
                               and m.codec == bitstream_pb2.CODEC_KIND_POINT_CLOUD)
            # Warm-up (lazy initialisation on both sides), and the streams for bad/cancel.
            streams = [enc.encode_image(png, model=model).bitstream for png in images["large"]]
            for s in streams[:2]:
                dec.decode_image(s)
            warm_cloud = enc.encode_point_cloud(clouds[-1][0], model=cloud_model, depth=8)
            dec.decode_point_cloud(warm_cloud.bitstream)
        results["model"], results["cloud_model"] = model, cloud_model
        bads = bad_inputs(streams[0].SerializeToString())
        before = {"encoder": server_counts(enc_proc), "decoder": server_counts(dec_proc)}

        rec = Recorder()
        pids = {"encoder": enc_proc.proc.pid, "decoder": dec_proc.proc.pid}
        sampler = threading.Thread(target=rss_sampler, daemon=True,
                                   args=(pids, args.rss_interval, stop, rss))
        sampler.start()
        started = time.monotonic()
        stop_at = started + 60 * args.minutes
        gate = RestGate()

        def sample_at_rest() -> None:
            row = rss_now(pids)
            row["t"] = time.monotonic() - started
            rest.append(row)

        sample_at_rest()  # after the warm-up: models loaded, allocator primed
        threads = [threading.Thread(target=client_loop, args=(
            k, args, targets, images, streams, clouds, bads, model, cloud_model, rec, stop_at,
            gate)) for k in range(args.clients)]
        for t in threads:
            t.start()
        last = last_rest = started
        paused = 0.0
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            if args.rest_every > 0 and time.monotonic() - last_rest >= args.rest_every \
                    and time.monotonic() < stop_at:
                paused += gate.rest(sample_at_rest)
                last_rest = time.monotonic()
                print(f"  {last_rest - started:5.0f} s: at rest, RSS encoder "
                      f"{rest[-1]['encoder']:.0f} MB decoder {rest[-1]['decoder']:.0f} MB",
                      flush=True)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                done = sum(len(v) for v in rec.latency.values())
                mem = rss[-1] if rss else {}
                print(f"  {last - started:5.0f} s: {done} calls, "
                      f"RSS encoder {mem.get('encoder', 0):.0f} MB decoder "
                      f"{mem.get('decoder', 0):.0f} MB", flush=True)
        wall = time.monotonic() - started
        stop.set()
        sampler.join(5)
        gate.rest(sample_at_rest)

        after = {"encoder": server_counts(enc_proc), "decoder": server_counts(dec_proc)}
        server = {svc: {code: after[svc].get(code, 0) - before[svc].get(code, 0)
                        for code in sorted(set(after[svc]) | set(before[svc]))
                        if after[svc].get(code, 0) - before[svc].get(code, 0)}
                  for svc in after}
        health = []
        for proc in (enc_proc, dec_proc):
            with EncoderClient(proc.target, retries=0) as c:
                health.append(c.health())
    finally:
        stop.set()
        exits = {}
        for proc in (enc_proc, dec_proc):
            t0 = time.monotonic()
            code = proc.stop(signal.SIGTERM, timeout=90)
            exits[proc.service] = {"code": code, "seconds": round(time.monotonic() - t0, 2)}

    calls = sum(len(v) for v in rec.latency.values())
    kinds = {}
    for kind in sorted(rec.latency):
        lat = rec.latency[kind]
        kinds[kind] = {"calls": len(lat), "p50_ms": 1000 * percentile(lat, 50),
                       "p99_ms": 1000 * percentile(lat, 99),
                       "codes": {c: n for (k, c), n in rec.kinds.items() if k == kind}}
    client = {svc: {c: n for (s, c), n in sorted(rec.status.items()) if s == svc}
              for svc in ("encoder", "decoder")}
    good = [v for k, v in rec.latency.items() if k.startswith(("encode_", "decode_"))]
    all_good = [x for v in good for x in v]
    results.update({
        "seconds": wall, "calls": calls, "calls_per_s": calls / wall,
        "good_calls_p50_ms": 1000 * percentile(all_good, 50),
        "good_calls_p99_ms": 1000 * percentile(all_good, 99),
        "kinds": kinds, "client_status": client, "server_status": server,
        "lost": len(rec.unexpected), "lost_examples": sorted(Counter(rec.unexpected).items()),
        "wrong": len(rec.wrong), "wrong_examples": rec.wrong[:10],
        "rss": rss, "health_after": health, "exit": exits,
        "rss_slope_mb_per_min": {k: slope_mb_per_min(rss, k) for k in ("encoder", "decoder")},
        "rss_slope_second_half_mb_per_min": {
            k: slope_mb_per_min([s for s in rss if s["t"] >= wall / 2], k)
            for k in ("encoder", "decoder")},
        "rss_at_rest": rest, "paused_seconds": paused,
        "rss_at_rest_slope_mb_per_min": {k: slope_mb_per_min(rest, k)
                                         for k in ("encoder", "decoder")},
        # The first minute loads what is loaded lazily (the cloud model, kernels per size).
        "rss_at_rest_slope_after_first_pause_mb_per_min": {
            k: slope_mb_per_min(rest[1:], k) for k in ("encoder", "decoder")},
    })
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if results["lost"] == 0 and results["wrong"] == 0 else 1


def print_report(r: dict) -> None:
    print(f"\n{r['clients']} clients x {r['seconds'] / 60:.1f} min, mix {r['mix']}; model "
          f"{r['model']} / {r['cloud_model']} ({r['weights']})")
    print(f"calls {r['calls']}  throughput {r['calls_per_s']:.2f}/s  good calls p50 "
          f"{r['good_calls_p50_ms']:.0f} ms  p99 {r['good_calls_p99_ms']:.0f} ms")
    print(f"LOST (unexpected status) {r['lost']}  WRONG {r['wrong']}")
    for what, n in r["lost_examples"][:10]:
        print(f"    {n} x {what}")
    for what in r["wrong_examples"]:
        print(f"    wrong: {what}")
    print(f"\n{'call':<28}{'calls':>7}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for kind, k in r["kinds"].items():
        codes = " ".join(f"{c}={n}" for c, n in sorted(k["codes"].items()))
        print(f"{kind:<28}{k['calls']:>7}{k['p50_ms']:>9.0f}{k['p99_ms']:>9.0f}  {codes}")
    for svc in ("encoder", "decoder"):
        print(f"{svc}: client saw {r['client_status'][svc]}")
        print(f"{' ' * len(svc)}  server counted {r['server_status'][svc]}")
    print(f"\n{'t (s)':>7}{'encoder MB':>12}{'decoder MB':>12}")
    for s in r["rss"]:
        print(f"{s['t']:>7.0f}{s['encoder']:>12.0f}{s['decoder']:>12.0f}")
    sl, s2 = r["rss_slope_mb_per_min"], r["rss_slope_second_half_mb_per_min"]
    print(f"RSS slope MB/min: encoder {sl['encoder']:+.1f} (second half {s2['encoder']:+.1f}), "
          f"decoder {sl['decoder']:+.1f} (second half {s2['decoder']:+.1f})")
    print(f"\nat rest (clients paused {r['paused_seconds']:.0f} s in all):")
    for s in r["rss_at_rest"]:
        print(f"{s['t']:>7.0f}{s['encoder']:>12.0f}{s['decoder']:>12.0f}")
    sr = r["rss_at_rest_slope_mb_per_min"]
    sw = r["rss_at_rest_slope_after_first_pause_mb_per_min"]
    print(f"RSS at rest slope MB/min: encoder {sr['encoder']:+.1f}, decoder {sr['decoder']:+.1f}; "
          f"after the first pause: encoder {sw['encoder']:+.1f}, decoder {sw['decoder']:+.1f}")
    print(f"health after: {r['health_after']}; SIGTERM exit: {r['exit']}")


if __name__ == "__main__":
    sys.exit(main())
