"""The remote verbs of the `reprocodec` CLI (reprocodec/cli.py delegates here).

    reprocodec encode IN... -o OUT --encoder HOST:PORT      images -> .rpc, .ply -> .rpc
    reprocodec decode IN... -o OUT --decoder HOST:PORT      .rpc -> .png / .ply
    reprocodec roundtrip IN... --encoder A --decoder B      bit-exact? bpp, PSNR, overhead
    reprocodec health HOST:PORT                             exit 0 iff SERVING

Connection options come from the environment so every verb shares them:
REPROCODEC_AUTH_TOKEN (shared token), REPROCODEC_TLS_CA (PEM roots; enables TLS),
REPROCODEC_TLS_CERT + REPROCODEC_TLS_KEY (client certificate for mutual TLS).
Exit status as the CLI's: 0 ok, 1 some input failed, 3 a decode failed verification.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import grpc

from reprocodec import container, registry
from reprocodec.batch import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_VERIFICATION,
    batch_summary,
    fail,
    output_path,
    worse,
)
from reprocodec.image import io as imageio
from reprocodec.v1 import bitstream_pb2

from .clients import DecoderClient, EncoderClient, ServiceError, cloud_voxels, image_pixels


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    env = os.environ
    options: dict[str, Any] = {"timeout": float(getattr(args, "timeout", None) or 60.0)}
    if env.get("REPROCODEC_TLS_CA") or env.get("REPROCODEC_TLS_CERT"):
        options.update(tls=True, root_certificates=env.get("REPROCODEC_TLS_CA"),
                       client_cert=env.get("REPROCODEC_TLS_CERT"),
                       client_key=env.get("REPROCODEC_TLS_KEY"))
    return options


def _status_of(exc: Exception, status: int) -> int:
    if isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.DATA_LOSS:
        return EXIT_VERIFICATION
    return worse(status, EXIT_FAILED)


def _stream_kind(data: bytes) -> registry.CodecKind:
    """The codec kind a stream says it is (unvalidated: the decoder validates)."""
    msg = bitstream_pb2.Bitstream()
    try:
        msg.ParseFromString(data)
        return registry.kind_of_stream(msg)
    except Exception:  # noqa: BLE001 - not parseable: the image decoder will say why
        return registry.kind("image")


# The services' methods per codec kind (one RPC pair per kind in service.proto).
def _encode_image(enc: EncoderClient, data: bytes, args: argparse.Namespace) -> Any:
    return enc.encode_image(data, model=getattr(args, "model", None) or "",
                            quality=getattr(args, "quality", None) or 0,
                            mode=getattr(args, "safeguard", None) or "syndrome",
                            level=getattr(args, "level", None) or "both")


def _encode_cloud(enc: EncoderClient, data: bytes, args: argparse.Namespace) -> Any:
    return enc.encode_point_cloud(data, model=getattr(args, "model", None) or "",
                                  depth=getattr(args, "depth", None) or 0,
                                  mode=getattr(args, "safeguard", None) or "syndrome",
                                  smallest=bool(getattr(args, "smallest", False)),
                                  max_format_version=getattr(args, "bitstream_format", 0) or 0)


_ENCODE = {"image": _encode_image, "point_cloud": _encode_cloud}
_DECODE = {"image": lambda dec, data, raw: dec.decode_image(data, raw=raw),
           "point_cloud": lambda dec, data, raw: dec.decode_point_cloud(data, raw=raw)}
_OUTPUT_FILE = {"image": lambda r: r.png, "point_cloud": lambda r: r.ply}


def encode_file(enc: EncoderClient, path: Path, args: argparse.Namespace) -> Any:
    """Encode one input file on the service its codec kind uses (args: model, quality,
    safeguard, level, depth, smallest; absent ones take the service's defaults)."""
    kind = registry.kind_of_input(path)
    return _ENCODE[kind.name](enc, path.read_bytes(), args)


def decode_stream(dec: DecoderClient, data: Any, kind: registry.CodecKind, raw: bool) -> Any:
    return _DECODE[kind.name](dec, data, raw)


def _describe(stats: Any) -> str:
    unit = "bpp" if stats.codec == bitstream_pb2.CODEC_KIND_IMAGE else "bits/point"
    return (f"{stats.container_bytes} B, {stats.bits_per_element:.4f} {unit}, "
            f"overhead {100 * stats.overhead_ratio:.2f}%")


def remote_encode(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    status = EXIT_OK
    failed = 0
    with EncoderClient(args.encoder, **connection_options(args)) as enc:
        for i, path in enumerate(inputs, 1):
            try:
                response = encode_file(enc, path, args)
                container.at_version(response.bitstream, getattr(
                    args, "bitstream_format", None) or container.FORMAT_VERSION)
                target = output_path(path, args.output, len(inputs) > 1, ".rpc")
                target.write_bytes(response.bitstream.SerializeToString(deterministic=True))
                print(f"[{i}/{len(inputs)}] {path} -> {target}: {_describe(response.stats)}",
                      flush=True)
            except (ServiceError, OSError, ValueError) as exc:
                fail(f"[{i}/{len(inputs)}] {path}: {exc}")
                status, failed = _status_of(exc, status), failed + 1
    print(batch_summary("encode", len(inputs), failed))
    return status


def remote_decode(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    status, failed = EXIT_OK, 0
    with DecoderClient(args.decoder, **connection_options(args)) as dec:
        for i, path in enumerate(inputs, 1):
            try:
                data = path.read_bytes()
                kind = _stream_kind(data)
                response = decode_stream(dec, data, kind, raw=False)
                target = output_path(path, args.output, len(inputs) > 1, kind.output_suffix)
                target.write_bytes(_OUTPUT_FILE[kind.name](response))
                exact = "bit-exact" if response.bit_exact else "NOT bit-exact"
                print(f"[{i}/{len(inputs)}] {path} -> {target}: {exact}", flush=True)
            except (ServiceError, OSError, ValueError) as exc:
                fail(f"[{i}/{len(inputs)}] {path}: {exc}")
                status, failed = _status_of(exc, status), failed + 1
    print(batch_summary("decode", len(inputs), failed))
    return status


def roundtrip(args: argparse.Namespace) -> int:
    """Encode on one service, decode the stream on the other, compare with the input."""
    options = connection_options(args)
    status = EXIT_OK
    print(f"{'file':32} {'bit-exact':>9} {'bpp':>9} {'PSNR dB':>8} {'overhead':>9}")
    with EncoderClient(args.encoder, **options) as enc, \
            DecoderClient(args.decoder, **options) as dec:
        for name in args.inputs:
            path = Path(name)
            try:
                encoded = encode_file(enc, path, args)
                if registry.kind_of_input(path).name == "point_cloud":
                    decoded = dec.decode_point_cloud(encoded.bitstream, raw=True)
                    voxels = cloud_voxels(decoded)
                    quality = "lossless" if len(voxels) == decoded.points.count else "?"
                else:
                    decoded = dec.decode_image(encoded.bitstream, raw=True)
                    original = imageio.decode_image_bytes(path.read_bytes())
                    quality = f"{imageio.psnr(original, image_pixels(decoded)):8.2f}"
                exact = decoded.bit_exact and decoded.output_checksum == decoded.expected_checksum
                print(f"{path.name[:32]:32} {'yes' if exact else 'NO':>9} "
                      f"{encoded.stats.bits_per_element:9.4f} {quality:>8} "
                      f"{100 * encoded.stats.overhead_ratio:8.2f}%")
                if not exact:
                    status = worse(status, EXIT_FAILED)
            except (ServiceError, OSError, ValueError) as exc:
                fail(f"{path}: {exc}")
                status = _status_of(exc, status)
    return status


def models(args: argparse.Namespace) -> int:
    """The models a service offers, with readiness, weights, bounds and calibration."""
    import json

    with DecoderClient(args.target, **connection_options(args)) as client:
        response = client.list_models()
        info = client.server_info()
    rows = [{
        "name": m.name, "codec": bitstream_pb2.CodecKind.Name(m.codec), "loaded": m.loaded,
        "default": m.is_default, "architecture": m.architecture, "quality": m.quality,
        "weights_sha256": m.weights_sha256.hex(),
        "bounds": {b.tensor: b.bound.value for b in m.bounds},
        "calibrated_profiles": list(m.calibrated_profiles), "format_version": m.format_version,
    } for m in response.models]
    if getattr(args, "json", False):
        print(json.dumps({"server": {"service": info.service, "version": info.version,
                                     "profile": info.profile, "device": info.device,
                                     "format_version": info.format_version},
                          "models": rows}, indent=2))
        return EXIT_OK
    print(f"{args.target}: {info.service} {info.version}, profile {info.profile} on "
          f"{info.device_name or info.device}, bitstream format {info.format_version}")
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        state = "loaded" if r["loaded"] else "not loaded"
        print(f"  {r['name']:{width}s} {r['codec']:22s} q{r['quality']} {state:10s} "
              f"{r['weights_sha256'][:12]}..  calibrated on {len(r['calibrated_profiles'])} "
              f"profiles{'  (default)' if r['default'] else ''}")
    return EXIT_OK


def health(args: argparse.Namespace) -> int:
    """Exit 0 iff the server reports SERVING (usable as a container health probe)."""
    options = connection_options(args)
    options["retries"] = 0  # a probe answers now; the orchestrator does the retrying
    try:
        with EncoderClient(args.target, **options) as client:
            state = client.health(timeout=float(getattr(args, "timeout", None) or 5.0))
    except ServiceError as exc:
        fail(str(exc))
        return EXIT_FAILED
    print(f"{args.target}: {state}")
    return EXIT_OK if state == "SERVING" else EXIT_FAILED
