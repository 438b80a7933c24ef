"""`reprocodec demo`: a local encoder and decoder under different numerics, end to end.

Starts an encoder service (profile `cpu`) and a decoder service (profile `cpu-nomkldnn`: the
same CPU without oneDNN, which computes the networks' floats differently), sends the shipped
sample images and point clouds through them with and without the safeguard, prints a table,
and writes a report (Markdown + PNG plots) to a directory. Both services are stopped on exit,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reprocodec import registry
from reprocodec.image.io import psnr

SAMPLES = Path(__file__).resolve().parent / "samples"
DEMO_MODES = ("none", "syndrome")


@dataclass
class Row:
    file: str
    mode: str
    outcome: str  # "ok" or the gRPC status the decoder answered
    bit_exact: bool
    rate: float  # bits per pixel (images) or per point (clouds)
    psnr: float | None
    overhead: float  # protection bytes / payload bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="report directory (default: a new temp dir)")
    p.add_argument("--encoder-profile", default="cpu")
    p.add_argument("--decoder-profile", default="emulate-splitk",
                   help="the decoder's numerics: by default a GPU-like summation order "
                        "(default: %(default)s)")
    p.add_argument("--samples", type=Path, default=SAMPLES, help="folder of images / .ply files")


def _through_services(encoder, decoder, path: Path, mode: str) -> Row:
    from reprocodec import registry
    from reprocodec.client import ServiceError, image_pixels
    from reprocodec.client.commands import decode_stream, encode_file
    from reprocodec.image.io import decode_image_bytes

    kind = registry.kind_of_input(path)
    encoded = encode_file(encoder, path, argparse.Namespace(safeguard=mode, level="both"))
    stats = encoded.stats
    row = Row(path.name, mode, "ok", False, stats.bits_per_element, None, stats.overhead_ratio)
    try:
        decoded = decode_stream(decoder, encoded.bitstream, kind, raw=True)
        row.bit_exact = decoded.bit_exact
        if kind.name == "image":  # PSNR is an image measure; clouds are lossless
            row.psnr = psnr(decode_image_bytes(path.read_bytes()), image_pixels(decoded))
    except ServiceError as exc:
        row.outcome = exc.code.name
    return row


def _table(rows: list[Row]) -> str:
    lines = [f"{'file':<18} {'safeguard':<9} {'decode':<10} {'bit-exact':<9} "
             f"{'rate':>8} {'PSNR dB':>8} {'overhead':>9}"]
    for r in rows:
        unit = "bpp" if registry.kind_of_input(Path(r.file)).name == "image" else "b/pt"
        p = f"{r.psnr:8.2f}" if r.psnr is not None else f"{'-':>8}"
        lines.append(f"{r.file:<18} {r.mode:<9} {r.outcome:<10} {str(r.bit_exact):<9} "
                     f"{r.rate:>5.3f}{unit:>3} {p} {100 * r.overhead:>8.3f}%")
    return "\n".join(lines)


def _rate_distortion(images: list[Path]) -> dict[str, list[tuple[float, float]]]:
    """bpp/PSNR of each shipped image model and of Pillow JPEG/WebP/AVIF on the samples."""
    import io

    from PIL import Image

    from reprocodec.image import ImageCodec, list_models
    from reprocodec.image.io import decode_image_bytes
    from reprocodec.train.evaluate import pillow_writes

    curves: dict[str, list[tuple[float, float]]] = {}
    pixels = [decode_image_bytes(p.read_bytes()) for p in images]
    for info in sorted(list_models(), key=lambda m: (m.architecture, m.quality)):
        codec = ImageCodec.load(info.name)
        points = []
        for px in pixels:
            msg = codec.encode(px, mode="syndrome", level="both")
            out = codec.decode(msg).pixels
            bits = 8 * msg.ByteSize()
            points.append((bits / (px.shape[0] * px.shape[1]), psnr(px, out)))
        curves.setdefault(info.architecture, []).append(tuple(np.mean(points, axis=0)))
    # The reference formats as train.evaluate sweeps them (WebP method 6, AVIF speed 6).
    for fmt, options, qualities in (("JPEG", {}, (10, 20, 35, 50, 70, 85)),
                                    ("WEBP", {"method": 6}, (5, 20, 40, 60, 80)),
                                    ("AVIF", {"speed": 6}, (10, 30, 50, 65, 80))):
        if not pillow_writes(fmt):  # a Pillow built without it: no curve
            continue
        for q in qualities:
            points = []
            for px in pixels:
                buf = io.BytesIO()
                Image.fromarray(px.squeeze()).save(buf, format=fmt, quality=q, **options)
                out = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
                points.append((8 * buf.tell() / (px.shape[0] * px.shape[1]),
                               psnr(px.squeeze(), out)))
            curves.setdefault(f"Pillow {fmt}", []).append(tuple(np.mean(points, axis=0)))
    return curves


def _overhead_vs_bound(image: Path) -> dict[str, list[tuple[float, float]]]:
    """Side information / payload bytes of the decoding-level decision (scale index) as
    the error bound grows, per mode, on one sample."""
    from reprocodec.image import ImageCodec, list_models
    from reprocodec.image.io import decode_image_bytes
    from reprocodec.safeguard import ErrorBound, Mode, protect

    info = sorted(list_models(), key=lambda m: (m.architecture != "bmshj2018-hyperprior",
                                                m.quality))[0]
    codec = ImageCodec.load(info.name)
    capture: dict = {}
    msg = codec.encode(decode_image_bytes(image.read_bytes()), mode="syndrome", capture=capture)
    payload = sum(len(p.data) for p in msg.payloads)
    sigma = capture["scale_index"]
    quantizer = codec.decisions["scale_index"].quantizer
    curves: dict[str, list[tuple[float, float]]] = {}
    for e in np.logspace(-7, -2.5, 10):
        for mode in (Mode.FLAGS, Mode.SIMPLIFIED, Mode.SYNDROME):
            stream = protect(sigma, quantizer, ErrorBound.relative(float(e)), mode).stream
            curves.setdefault(mode.value, []).append((float(e), len(stream) / payload))
    return curves


def _write_report(out: Path, rows: list[Row], profiles: tuple[str, str],
                  rd: dict, overhead: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, pts in overhead.items():
        ax.loglog(*zip(*pts, strict=True), marker="o", label=mode)
    ax.set(xlabel="relative error bound e on sigma", ylabel="protection / payload bytes",
           title="Safeguard overhead vs error bound (scale index)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "overhead_vs_bound.png", dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in rd.items():
        pts = sorted(pts)
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set(xlabel="bits per pixel", ylabel="RGB PSNR (dB)", title="Rate-distortion (samples)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rate_distortion.png", dpi=110)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    modes = sorted({r.mode for r in rows}, key=DEMO_MODES.index)
    fails = [sum(r.outcome != "ok" or not r.bit_exact for r in rows if r.mode == m)
             for m in modes]
    totals = [sum(r.mode == m for r in rows) for m in modes]
    ax.bar(modes, totals, color="#ccc", label="files")
    ax.bar(modes, fails, color="#c33", label="not bit-exact / decode failed")
    ax.set(ylabel="files", title=f"encoder {profiles[0]} -> decoder {profiles[1]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "failures.png", dpi=110)
    plt.close("all")

    md = [
        "# reprocodec demo report",
        "",
        f"Encoder service profile `{profiles[0]}`, decoder service profile `{profiles[1]}`.",
        "",
        "```",
        _table(rows),
        "```",
        "",
        "Without the safeguard (`none`) the decoder's floats differ from the encoder's. The",
        "stream's checksums catch that and the decoder answers DATA_LOSS instead of garbage.",
        "With the safeguard, every file decodes bit-exactly.",
        "",
        "![failures](failures.png)",
        "![overhead vs bound](overhead_vs_bound.png)",
        "![rate-distortion](rate_distortion.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(
        {"rows": [asdict(r) for r in rows], "rate_distortion": rd, "overhead": overhead},
        indent=2))


def run(args: argparse.Namespace) -> int:
    from reprocodec.client import DecoderClient, EncoderClient
    from reprocodec.server.testing import ServerProcess

    start = time.monotonic()
    out = args.output or Path(tempfile.mkdtemp(prefix="reprocodec-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    readable = {s for k in registry.KINDS.values() for s in k.input_suffixes}
    files = sorted(p for p in args.samples.iterdir() if p.suffix.lower() in readable)
    if not files:
        print(f"no images or .ply files in {args.samples}", file=sys.stderr)
        return 2

    def terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, then exit
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    servers: list[ServerProcess] = []
    try:
        print(f"starting encoder ({args.encoder_profile}) and decoder "
              f"({args.decoder_profile}) services ...", flush=True)
        servers = [ServerProcess("encoder", "--profile", args.encoder_profile),
                   ServerProcess("decoder", "--profile", args.decoder_profile)]
        enc_proc, dec_proc = (s.ready() for s in servers)
        rows = []
        with EncoderClient(enc_proc.target, timeout=120) as encoder, \
                DecoderClient(dec_proc.target, timeout=120) as decoder:
            for path in files:
                for mode in DEMO_MODES:
                    rows.append(_through_services(encoder, decoder, path, mode))
        print(_table(rows), flush=True)
        for s in servers:
            s.stop()
        print("\nwriting report (rate-distortion, overhead vs error bound) ...", flush=True)
        images = [p for p in files if registry.kind_of_input(p).name == "image"]
        _write_report(out, rows, (args.encoder_profile, args.decoder_profile),
                      _rate_distortion(images), _overhead_vs_bound(images[0]))
    except KeyboardInterrupt:
        print("interrupted: stopping services", file=sys.stderr)
        return 130
    finally:
        for s in servers:
            s.stop(timeout=20)
        signal.signal(signal.SIGTERM, previous)
    protected = [r for r in rows if r.mode != "none"]
    ok = all(r.outcome == "ok" and r.bit_exact for r in protected)
    print(f"\nreport: {out / 'report.md'}  ({time.monotonic() - start:.0f} s)")
    print("all protected decodes bit-exact" if ok else "PROTECTED DECODE FAILED")
    return 0 if ok else 1
