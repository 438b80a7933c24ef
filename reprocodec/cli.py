"""`reprocodec` command line: encode/decode/inspect files locally, or through the services.

This module imports without torch: codecs are imported inside the handlers that need them.
Exit status: 0 success; 1 some input failed (one line per failure on stderr, the rest are
still processed); 2 usage error; 3 a decode failed verification (DATA_LOSS).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reprocodec.batch import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    batch_summary,
    failure_line,
    output_path,
    worse,
)
from reprocodec.decision import LEVELS
from reprocodec.image.models import ARCHITECTURES as IMAGE_ARCHITECTURES  # no torch
from reprocodec.safeguard import Mode

MODES = tuple(m.value for m in Mode)


_bar: Any = None  # the active progress bar: failure lines must be written through it


def _progress(items: list[Any], what: str) -> Iterable[Any]:
    """A tqdm bar on stderr for batches (or on a terminal); plain iteration otherwise."""
    global _bar
    if not (sys.stderr.isatty() or len(items) > 1):
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    _bar = tqdm(items, desc=what, unit="file", file=sys.stderr, leave=False)
    return _bar


def _fail(msg: str) -> None:
    line = failure_line(msg)
    if _bar is not None:
        _bar.write(line, file=sys.stderr)  # on its own line, not glued to the bar
    else:
        print(line, file=sys.stderr)


def _run_batch(inputs: list[str], what: str, handle: Callable[[Path], None]) -> int:
    """Run handle on each input; one line per failure; exit status by the worst failure."""
    from reprocodec.errors import ReprocodecError, VerificationError

    global _bar
    status, failed = EXIT_OK, 0
    for name in _progress(inputs, what):
        path = Path(name)
        try:
            handle(path)
        except VerificationError as exc:
            _fail(_with_path(path, exc))
            status, failed = EXIT_VERIFICATION, failed + 1
        except (ReprocodecError, OSError, ValueError) as exc:
            _fail(_with_path(path, exc))
            status, failed = worse(status, EXIT_FAILED), failed + 1
    if _bar is not None:
        _bar.close()
        _bar = None
    print(batch_summary(what, len(inputs), failed))
    return status


def _with_path(path: Path, exc: Exception) -> str:
    msg = str(exc)
    return msg if msg.startswith(str(path)) else f"{path}: {msg}"


# ------------------------------------------------------------------------------ local codecs


class _LocalCodecs:
    """Loads each model once per process, under the requested numerics profile."""

    def __init__(self, args: argparse.Namespace):
        from reprocodec import numerics

        numerics.apply_profile(args.profile)
        self.args = args
        self._codecs: dict[str, Any] = {}

    def _weights_dir(self) -> Path | None:
        a = self.args
        return Path(a.weights_dir) if getattr(a, "weights_dir", None) else None

    def codec(self, kind: Any, name: str | None = None) -> Any:
        a = self.args
        name = name or kind.resolve_model(getattr(a, "model", None), getattr(a, "quality", None),
                                          self._weights_dir())
        if name not in self._codecs:
            self._codecs[name] = kind.load(name, self._weights_dir())
        return self._codecs[name]

    def for_stream(self, kind: Any, msg: Any) -> Any:
        """The codec of the model holding the stream's weights (registry.model_of_stream)."""
        from reprocodec import registry

        models = kind.list_models(self._weights_dir())
        return self.codec(kind, registry.model_of_stream(msg, models))


def _save_capture(args: argparse.Namespace, path: Path, capture: dict) -> None:
    """--capture DIR (benchmarks): the decision indices and output, for counting flips."""
    import numpy as np

    if not getattr(args, "capture", None) or not capture:
        return
    d = Path(args.capture)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in capture.items() if k.endswith("_indices") or k == "output"}
    np.savez_compressed(d / f"{path.stem}.npz", **{k: np.asarray(v) for k, v in arrays.items()})


def _encode_local(args: argparse.Namespace) -> int:
    from reprocodec import container, registry
    from reprocodec.safeguard import Mode

    local = _LocalCodecs(args)
    many = len(args.inputs) > 1
    written = args.bitstream_format or container.FORMAT_VERSION  # None: the newest
    given = {"level": args.level, "depth": args.depth,
             "coders": "smallest" if args.smallest else None, "bitstream_format": written}

    def handle(path: Path) -> None:
        kind = registry.kind_of_input(path)
        codec = local.codec(kind)
        data = kind.read_input(path, getattr(codec, "max_pixels", None))
        capture: dict = {}
        options = kind.options(given) | ({"capture": capture} if args.capture else {})
        msg = codec.encode(data, mode=Mode(args.safeguard), **options)
        container.at_version(msg, written)
        output_path(path, args.output, many, ".rpc").write_bytes(container.pack(msg))
        _save_capture(args, path, capture)

    return _run_batch(args.inputs, "encode", handle)


def _decode_local(args: argparse.Namespace) -> int:
    from reprocodec import container, registry

    local = _LocalCodecs(args)
    many = len(args.inputs) > 1
    report: list[dict] = []

    def handle(path: Path) -> None:
        entry: dict[str, Any] = {"input": str(path)}
        report.append(entry)
        msg = container.unpack(path.read_bytes())
        kind = registry.kind_of_stream(msg)
        codec = local.for_stream(kind, msg)
        capture: dict = {}
        options = {"capture": capture} if args.capture else {}
        try:
            decoded = codec.decode(msg, verify=not args.no_verify, **options)
        except Exception as exc:
            entry["error"] = type(exc).__name__
            raise
        finally:
            _save_capture(args, path, capture)
        entry["bit_exact"] = decoded.bit_exact
        entry["tensors_matched"] = {t.name: t.matched for t in getattr(decoded, "tensors", [])}
        kind.write_output(output_path(path, args.output, many, kind.output_suffix), decoded, msg)
        if not decoded.bit_exact:
            _fail(f"{path}: decoded, but the output differs from the encoder's reconstruction "
                  "(only the decoding level was protected); encode with --level both for "
                  "bit-exact pixels")

    status = _run_batch(args.inputs, "decode", handle)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return status


# ---------------------------------------------------------------------------------- verbs


def _delegate(function: str, args: argparse.Namespace) -> int:
    try:
        from reprocodec.client import commands
    except ImportError as exc:
        _fail(f"remote mode is unavailable ({exc}); use --local --profile P")
        return EXIT_USAGE
    return int(getattr(commands, function)(args))


def cmd_encode(args: argparse.Namespace) -> int:
    if args.encoder:
        return _delegate("remote_encode", args)
    return _encode_local(args)


def cmd_decode(args: argparse.Namespace) -> int:
    if args.decoder:
        return _delegate("remote_decode", args)
    return _decode_local(args)


def inspect_stream(data: bytes) -> dict[str, Any]:
    """Summary of a container (no torch needed)."""
    from reprocodec import container, registry
    from reprocodec.v1 import bitstream_pb2 as pb

    msg = container.unpack(data)
    payload = sum(len(p.data) for p in msg.payloads)
    protection = container.protection_bytes(msg)
    header = registry.kind_of_stream(msg).inspect_fields(msg)
    return {
        "codec": pb.CodecKind.Name(msg.codec),
        "model": msg.model,
        "weights_sha256": bytes(msg.weights_sha256).hex(),
        "shape": header,
        "encoder_profile": msg.encoder_profile,
        "total_bytes": len(data),
        "payload_bytes": payload,
        "protection_bytes": protection,
        "overhead_ratio": protection / payload if payload else 0.0,
        "payloads": [{"name": p.name, "shape": list(p.shape), "bytes": len(p.data)}
                     for p in msg.payloads],
        "protected": [
            {
                "name": t.name,
                "mode": container.mode_from_proto(t.mode).value,
                "level": pb.ProtectionLevel.Name(t.level).removeprefix("PROTECTION_LEVEL_").lower(),
                "bound": {"kind": container.bound_from_proto(t.bound).kind,
                          "value": t.bound.value},
                "shape": list(t.shape),
                "side_info_bytes": len(t.side_info),
                "risky_count": t.risky_count,
                "candidate_count": t.candidate_count,
            }
            for t in msg.protected
        ],
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    from reprocodec.errors import ReprocodecError

    try:
        info = inspect_stream(Path(args.file).read_bytes())
    except (ReprocodecError, OSError) as exc:
        _fail(f"{args.file}: {exc}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{args.file}: {info['codec']} model {info['model']} "
          f"(weights {info['weights_sha256'][:12]}..) shape {info['shape']}")
    print(f"  payload {info['payload_bytes']} B, protection {info['protection_bytes']} B "
          f"({100 * info['overhead_ratio']:.3f} %)")
    for t in info["protected"]:
        print(f"  {t['name']:12s} {t['mode']:10s} {t['level']:14s} "
              f"{t['bound']['kind']} {t['bound']['value']:.3g}  risky {t['risky_count']} "
              f"candidates {t['candidate_count']}  side info {t['side_info_bytes']} B")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from reprocodec import calibrate

    return calibrate.main(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from reprocodec import evaluate

    return evaluate.main(args)


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from reprocodec.image.models import import_checkpoint

    info = import_checkpoint(args.checkpoint, args.architecture, args.name, args.quality,
                             Path(args.out_dir) if args.out_dir else None)
    print(f"imported {args.checkpoint} as {info.name} ({info.architecture}, N={info.N}, "
          f"M={info.M}, weights {info.weights_sha256[:12]}..); calibrate its bounds with "
          f"`reprocodec calibrate --model {info.name} --inputs IMAGES`")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """The models a service offers (HOST:PORT), or the shipped ones (no argument)."""
    if args.target:
        return _delegate("models", args)
    from reprocodec import container, registry

    rows = []
    for kind in registry.KINDS.values():
        for info in kind.list_models():
            bounds = kind.effective_bounds(info)
            recorded = [set(b["profiles"]) for b in bounds.values() if b.get("profiles")]
            rows.append({
                "name": info.name, "codec": kind.name, "architecture": info.architecture,
                "quality": info.quality, "weights_sha256": info.weights_sha256,
                "bounds": {t: {"kind": b["kind"], "value": b["value"]} for t, b in bounds.items()},
                "calibrated_profiles": sorted(set.intersection(*recorded)) if recorded else [],
                "format_version": container.FORMAT_VERSION,
            })
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        bounds = ", ".join(f"{t} {b['kind'][:3]} {b['value']:.1g}" for t, b in r["bounds"].items())
        print(f"{r['name']:{width}s} {r['codec']:11s} q{r['quality']}  "
              f"{r['weights_sha256'][:12]}..  {bounds}  "
              f"calibrated on {len(r['calibrated_profiles'])} profiles")
    return EXIT_OK


def cmd_roundtrip(args: argparse.Namespace) -> int:
    return _delegate("roundtrip", args)


def cmd_demo(args: argparse.Namespace) -> int:
    from reprocodec.demo import run

    return run(args)


def cmd_health(args: argparse.Namespace) -> int:
    return _delegate("health", args)


# --------------------------------------------------------------------------------- parser


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, examples kept as written."""


def build_parser() -> argparse.ArgumentParser:
    from reprocodec import __version__
    from reprocodec.container import FORMAT_VERSION, SUPPORTED_VERSIONS

    p = argparse.ArgumentParser(prog="reprocodec", description=__doc__.splitlines()[0],
                                epilog=EXAMPLES, formatter_class=_Help)
    p.add_argument("--version", action="version",
                   version=f"reprocodec {__version__} (bitstream formats "
                           f"{min(SUPPORTED_VERSIONS)}-{FORMAT_VERSION})")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, formatter_class=_Help, epilog=VERB_EXAMPLES.get(name), **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    def where(sp: argparse.ArgumentParser, remote_flag: str) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--local", action="store_true", help="run the codec in this process")
        g.add_argument(f"--{remote_flag}", metavar="HOST:PORT",
                       help=f"use the {remote_flag} service")
        sp.add_argument("--profile", default="cpu", help="numerics profile for --local")
        sp.add_argument("--weights-dir", metavar="DIR",
                        help="--local: models from this folder (e.g. written by "
                             "`reprocodec import-checkpoint`) instead of the shipped ones")
        sp.add_argument("--capture", help=argparse.SUPPRESS)  # benchmarks: dump indices
        sp.add_argument("--timeout", type=float, default=60.0, help="remote deadline (s)")

    e = sub.add_parser("encode", help="compress images (.png, .jpg, ...) or point clouds (.ply)")
    e.add_argument("inputs", nargs="+", metavar="IN", help="images (.png, .jpg, ...) or .ply")
    e.add_argument("-o", "--output", required=True, metavar="OUT_OR_DIR",
                   help="the .rpc file, or a folder (several inputs, or a trailing /)")
    where(e, "encoder")
    e.add_argument("--model", help="model name or architecture; absent: the best shipped")
    e.add_argument("--quality", type=int, help="quality rank of the architecture (1 = lowest)")
    e.add_argument("--safeguard", choices=MODES, default="syndrome",
                   help="how decisions are protected (none: the decoder's own floats decide)")
    e.add_argument("--level", choices=LEVELS, default="both",
                   help="decoding: entropy-decoding decisions; reconstruction: output pixels")
    e.add_argument("--depth", type=int, help="octree depth for point clouds; absent: 10")
    e.add_argument("--smallest", action="store_true",
                   help="point clouds: choose each octree level's coder by bits alone "
                        "(smaller streams; sparse clouds decode slower)")
    # None: the newest, and a remote encode does not ask (an encoder service of an earlier
    # release would refuse a format it does not know)
    e.add_argument("--bitstream-format", type=int, choices=sorted(SUPPORTED_VERSIONS),
                   default=None,
                   help=f"the newest bitstream format to write (default {FORMAT_VERSION}): 7 "
                        "for decoders of reprocodec 0.7 (the point-cloud mixer's second "
                        "version), 6 for 0.6 (its first "
                        "version), 5 for 0.5.0 (the neighbour coder's first model), "
                        "4 for 0.4.0 (no neighbour-coded point-cloud levels), 3 for 0.3.0 (no "
                        "mixed probabilities), 2 for 0.2.0 (also the "
                        "placement of integer voxel clouds written out)")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="decompress .rpc files to .png / .ply")
    d.add_argument("inputs", nargs="+", metavar="IN", help=".rpc files")
    d.add_argument("-o", "--output", required=True, metavar="OUT_OR_DIR",
                   help="the .png/.ply file, or a folder (several inputs, or a trailing /)")
    where(d, "decoder")
    d.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    d.add_argument("--report", help=argparse.SUPPRESS)  # benchmarks: per-file JSON
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("inspect", help="describe a .rpc file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("calibrate", help="measure error bounds across numerics profiles")
    from reprocodec.calibrate import add_arguments

    add_arguments(c)
    c.set_defaults(func=cmd_calibrate)

    ev = sub.add_parser("evaluate", help="bpp, PSNR, MS-SSIM, timings and protection of a model "
                                         "on a folder of images (JSON with --json)")
    from reprocodec.evaluate import add_arguments as add_evaluate_arguments

    add_evaluate_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)

    im = sub.add_parser("import-checkpoint",
                        help="bring an official CompressAI checkpoint into the shipped form once "
                             "(fp16 weights, integer CDF tables, SHA-256)")
    im.add_argument("checkpoint", help="CompressAI state_dict file (.pth, .pth.tar)")
    im.add_argument("--architecture", required=True, choices=IMAGE_ARCHITECTURES)
    im.add_argument("--name", required=True, help="model name to ship it as")
    im.add_argument("--quality", type=int, default=0, help="quality rank (default: %(default)s)")
    im.add_argument("--out-dir", help="folder to write NAME.pt/.json (default: the shipped "
                                      "weights folder)")
    im.set_defaults(func=cmd_import_checkpoint)

    r = sub.add_parser("roundtrip", help="encode on one service, decode on another, compare")
    r.add_argument("inputs", nargs="+", metavar="IN")
    r.add_argument("--encoder", required=True, metavar="HOST:PORT")
    r.add_argument("--decoder", required=True, metavar="HOST:PORT")
    r.add_argument("--model")
    r.add_argument("--quality", type=int)
    r.add_argument("--safeguard", choices=MODES, default="syndrome")
    r.add_argument("--level", choices=LEVELS, default="both")
    r.add_argument("--depth", type=int)
    r.add_argument("--smallest", action="store_true",
                   help="point clouds: each octree level's coder chosen by bits alone")
    r.add_argument("--timeout", type=float, default=60.0)
    r.set_defaults(func=cmd_roundtrip)

    dm = sub.add_parser("demo", help="local encoder + decoder under different numerics, "
                                     "shipped samples through both, with a report")
    from reprocodec.demo import add_arguments as add_demo_arguments

    add_demo_arguments(dm)
    dm.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list the models of a service, or the shipped ones")
    m.add_argument("target", nargs="?", metavar="HOST:PORT",
                   help="a running encoder or decoder (default: the shipped models, locally)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("--timeout", type=float, default=10.0, help="remote deadline (s)")
    m.set_defaults(func=cmd_models)

    h = sub.add_parser("health", help="check a service's gRPC health")
    h.add_argument("target", metavar="HOST:PORT")
    h.add_argument("--timeout", type=float, default=5.0)
    h.set_defaults(func=cmd_health)
    return p


EXAMPLES = """examples:
  reprocodec encode photo.png -o photo.rpc --local             # in this process
  reprocodec decode photo.rpc -o photo.png --local --profile cpu-nomkldnn
  reprocodec encode *.png -o out/ --encoder enc.example:50051  # through the encoder service
  reprocodec models dec.example:50052                          # what a service offers
  reprocodec demo                                              # the whole story, locally
"""
VERB_EXAMPLES = {
    "encode": "example: reprocodec encode a.png b.ply -o out/ --local --safeguard syndrome",
    "decode": "example: reprocodec decode out/*.rpc -o decoded/ --decoder HOST:50052",
    "inspect": "example: reprocodec inspect photo.rpc --json",
    "calibrate": "example: reprocodec calibrate --model bmshj2018-hyperprior-q2 --inputs DIR",
    "roundtrip": "example: reprocodec roundtrip *.png --encoder A:50051 --decoder B:50052",
    "models": "example: reprocodec models localhost:50052 --json",
    "evaluate": "example: reprocodec evaluate --model bmshj2018-hyperprior-q2 --images kodak/ "
                "--json q2.json",
    "health": "example: reprocodec health localhost:50051",
    "import-checkpoint": "example: reprocodec import-checkpoint bmshj2018-hyperprior-3.pth "
                         "--architecture bmshj2018-hyperprior --name cai-q3",
}

# Modules only the server install has: a light-client user gets an install hint, not a trace.
_SERVER_EXTRA = {"torch", "torchvision", "compressai", "numba", "prometheus_client", "tqdm",
                 "matplotlib", "grpc_reflection"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_EXTRA:
            raise
        _fail(f"`reprocodec {args.verb}` needs the codecs, which this install lacks "
              f"({exc.name}): pip install 'reprocodec[server]' (plus the shipped weights, "
              "./reprocodec/weights from a checkout), or use a service with "
              "--encoder/--decoder HOST:PORT")
        return EXIT_USAGE
    except Exception as exc:  # a last-resort one-line reason instead of a traceback
        from reprocodec.errors import ReprocodecError

        if isinstance(exc, (ReprocodecError, RuntimeError, OSError, ValueError)):
            _fail(str(exc))
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
