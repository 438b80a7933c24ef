"""Entropy-coding speed: reprocodec.entropy (bounds-checked numba rANS) against CompressAI's
rANS (compressai.ans, C++), on the real streams of the shipped models, with byte identity.

    .venv/bin/python bench/entropy.py                  # table
    .venv/bin/python bench/entropy.py --json out.json  # also machine-readable
    .venv/bin/python bench/entropy.py --runs 9 --image /work/shared/data/kodak/kodim23.png

Streams: for every shipped image model that codes y in one payload (not the checkerboard
model, whose two passes call the same coder), the z (factorized prior, one table per channel)
and y (Gaussian conditional, table = protected scale index) symbols and indexes of one 768x512 image
(a Kodak image when ../shared/data/kodak exists, else a shipped sample padded to 768x512); for
the point-cloud model, the occupancy bits and their table indexes of the shipped elephant
(depth 7), coded in one call and, as the codec codes them, in one call per octree pass. The
symbols are those the codec itself entropy-codes (taken from its encode).

Each coder is timed the way its callers call it, from integer arrays to bytes and back:
  ours         entropy.encode / entropy.decode on numpy arrays (per pass: Encoder.encode ...
               flush, Decoder.decode ... finish); tables validated once at model load, as the
               codecs do;
  compressai   RansEncoder().encode_with_indexes / RansDecoder().decode_with_indexes with the
               list arguments built as CompressAI's EntropyModel.compress / decompress build
               them on every call (symbols, indexes, _quantized_cdf, _cdf_length, _offset ->
               .tolist()) and the decoded list back to an int32 tensor; per pass: as its
               autoregressive models do (tables to lists once, BufferedRansEncoder /
               set_stream + decode_stream per pass);
  cai core     the same C++ calls on Python lists built outside the timer: the coder plus
               pybind11's list -> std::vector conversion, which no caller can avoid.
Times are medians (and minima) over --runs runs after one warm-up run; numba's compiled
kernels come from its on-disk cache, so no run includes compilation. Byte identity: ours and
CompressAI's bytes must be identical, equal to the payload in the codec's stream, and both
decoders must return the encoder's symbols; any difference makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KODAK = REPO.parent / "shared" / "data" / "kodak"
SAMPLES = REPO / "reprocodec" / "samples"
WIDTH, HEIGHT = 768, 512


def pick_image(path: str | None) -> tuple[str, np.ndarray]:
    """A 768x512 RGB image: the given one, else the first landscape Kodak image, else the
    first shipped sample (cropped and edge-padded to 768x512)."""
    from reprocodec.image.io import read_image

    if path:
        chosen = Path(path)
    else:
        kodak = sorted(KODAK.glob("*.png")) if KODAK.is_dir() else []
        exact = [p for p in kodak if read_image(p).shape == (HEIGHT, WIDTH, 3)]
        chosen = exact[0] if exact else sorted(SAMPLES.glob("*.png"))[0]
    px = read_image(chosen)
    if px.shape[2] != 3:
        px = np.repeat(px, 3, axis=2)
    px = px[:HEIGHT, :WIDTH]
    pad = ((0, HEIGHT - px.shape[0]), (0, WIDTH - px.shape[1]), (0, 0))
    return str(chosen), np.ascontiguousarray(np.pad(px, pad, mode="edge"))


def image_streams(pixels: np.ndarray) -> list[dict]:
    """(model, tensor, symbols, indexes, tables, payload bytes) of every shipped image model."""
    from reprocodec import entropy
    from reprocodec.image import ImageCodec, list_models

    out = []
    for info in list_models():
        codec = ImageCodec.load(info.name)
        capture: dict = {}
        msg = codec.encode(pixels, "syndrome", "decoding", capture=capture)
        payloads = {p.name: p for p in msg.payloads}
        if "y" not in payloads:  # the checkerboard model: y in two passes, the same coder
            continue
        z_shape = tuple(payloads["z"].shape)
        z_indexes = codec.hyper._indexes(z_shape)
        y_indexes = np.asarray(capture["scale_index_indices"]).reshape(-1).astype(np.int32)
        for name, indexes, tables in (("z", z_indexes, codec.hyper.tables),
                                      ("y", y_indexes, codec.latent.tables)):
            data = bytes(payloads[name].data)
            symbols = entropy.decode(data, indexes, tables)  # what the encoder coded
            out.append({"stream": f"{info.name} {name}", "symbols": symbols,
                        "indexes": indexes, "tables": tables, "payload": data})
    return out


def pointcloud_streams(ply: Path, depth: int) -> list[dict]:
    """The occupancy stream of a cloud, rebuilt with the codec's own compress(): coded in one
    call, and in one call per octree pass as the codec codes it."""
    from reprocodec.pointcloud import PointCloudCodec, coder, octree
    from reprocodec.pointcloud.context import N_PASSES
    from reprocodec.pointcloud.ply import read_ply
    from reprocodec.safeguard import Mode

    codec = PointCloudCodec.load()
    vox = octree.voxelize(read_ply(ply), depth)
    codes, bits = octree.build_levels(vox.voxels, depth)
    coded = coder.compress(codes, bits, depth, codec._start_predict, codec.tables,
                           Mode.SYNDROME, codec.decision)
    symbols = np.concatenate([b.T.reshape(-1) for b in bits]).astype(np.int32)  # coding order
    indexes = (coded.indices + coder.GRID_K).astype(np.int32)
    name = f"{codec.info.name} occupancy ({ply.stem}, depth {depth})"
    passes = [n for n in coded.per_level_nodes for _ in range(N_PASSES)]
    one = {"symbols": symbols, "indexes": indexes, "tables": codec.tables,
           "payload": coded.data}
    return [{"stream": name, **one},
            {"stream": f"{name}, {len(passes)} calls", "passes": passes, **one}]


def timed(fn: Callable[[], object], runs: int) -> tuple[list[float], object]:
    result = fn()  # warm-up (and the result checked for identity)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, result


def bench_stream(s: dict, runs: int) -> dict:
    import torch
    from compressai.ans import BufferedRansEncoder, RansDecoder, RansEncoder

    from reprocodec import entropy

    symbols, indexes, tables = s["symbols"], s["indexes"], s["tables"]
    # CompressAI's buffers as its entropy models hold them (tensors), converted per call.
    t_symbols = torch.from_numpy(symbols.astype(np.int32))[None]
    t_indexes = torch.from_numpy(indexes.astype(np.int32))[None]
    t_cdf = torch.from_numpy(tables.cdfs)
    t_len = torch.from_numpy(tables.lengths)
    t_off = torch.from_numpy(tables.offsets)
    lists = (symbols.tolist(), indexes.tolist(), tables.cdfs.tolist(),
             tables.lengths.tolist(), tables.offsets.tolist())

    def cai_encode() -> bytes:  # EntropyModel.compress, one batch element
        return RansEncoder().encode_with_indexes(
            t_symbols[0].reshape(-1).int().tolist(), t_indexes[0].reshape(-1).int().tolist(),
            t_cdf.tolist(), t_len.reshape(-1).int().tolist(), t_off.reshape(-1).int().tolist())

    def cai_decode(data: bytes) -> np.ndarray:  # EntropyModel.decompress, one element
        values = RansDecoder().decode_with_indexes(
            data, t_indexes[0].reshape(-1).int().tolist(), t_cdf.tolist(),
            t_len.reshape(-1).int().tolist(), t_off.reshape(-1).int().tolist())
        return torch.tensor(values, dtype=torch.int32).numpy()

    payload = s["payload"]
    rows = {}
    if "passes" in s:  # one coder call per pass, as the point-cloud codec codes
        cuts = np.cumsum(s["passes"])[:-1]
        sym_parts, idx_parts = np.split(symbols, cuts), np.split(indexes, cuts)
        t_sym_parts = [torch.from_numpy(p) for p in sym_parts]
        t_idx_parts = [torch.from_numpy(p) for p in idx_parts]

        def ours_enc() -> bytes:
            enc = entropy.Encoder(tables)
            for a, b in zip(sym_parts, idx_parts, strict=True):
                enc.encode(a, b)
            return enc.flush()

        def ours_dec() -> np.ndarray:
            dec = entropy.Decoder(payload, tables)
            out = [dec.decode(b) for b in idx_parts]
            dec.finish()
            return np.concatenate(out)

        def cai_enc() -> bytes:
            # CompressAI's autoregressive models: tables to lists once, then per step
            cdf, n, o = t_cdf.tolist(), t_len.tolist(), t_off.tolist()
            enc = BufferedRansEncoder()
            for a, b in zip(t_sym_parts, t_idx_parts, strict=True):
                enc.encode_with_indexes(a.tolist(), b.tolist(), cdf, n, o)
            return enc.flush()

        def cai_dec() -> np.ndarray:
            cdf, n, o = t_cdf.tolist(), t_len.tolist(), t_off.tolist()
            dec = RansDecoder()
            dec.set_stream(payload)
            out = [torch.tensor(dec.decode_stream(b.tolist(), cdf, n, o), dtype=torch.int32)
                   for b in t_idx_parts]
            return torch.cat(out).numpy()

        def core_enc() -> bytes:
            enc = BufferedRansEncoder()
            for a, b in zip(l_sym, l_idx, strict=True):
                enc.encode_with_indexes(a, b, lists[2], lists[3], lists[4])
            return enc.flush()

        def core_dec() -> list:
            dec = RansDecoder()
            dec.set_stream(payload)
            return [dec.decode_stream(b, lists[2], lists[3], lists[4]) for b in l_idx]

        l_sym = [p.tolist() for p in sym_parts]
        l_idx = [p.tolist() for p in idx_parts]
        rows["ours_enc"], ours_bytes = timed(ours_enc, runs)
        rows["ours_dec"], ours_syms = timed(ours_dec, runs)
        rows["cai_enc"], cai_bytes = timed(cai_enc, runs)
        rows["cai_dec"], cai_syms = timed(cai_dec, runs)
        rows["core_enc"], _ = timed(core_enc, runs)
        rows["core_dec"], _ = timed(core_dec, runs)
    else:
        rows["ours_enc"], ours_bytes = timed(lambda: entropy.encode(symbols, indexes, tables),
                                             runs)
        rows["ours_dec"], ours_syms = timed(lambda: entropy.decode(payload, indexes, tables),
                                            runs)
        rows["cai_enc"], cai_bytes = timed(cai_encode, runs)
        rows["cai_dec"], cai_syms = timed(lambda: cai_decode(payload), runs)
        rows["core_enc"], _ = timed(lambda: RansEncoder().encode_with_indexes(
            lists[0], lists[1], lists[2], lists[3], lists[4]), runs)
        rows["core_dec"], _ = timed(lambda: RansDecoder().decode_with_indexes(
            payload, lists[1], lists[2], lists[3], lists[4]), runs)
    identical = (ours_bytes == cai_bytes == payload
                 and np.array_equal(np.asarray(ours_syms), symbols)
                 and np.array_equal(np.asarray(cai_syms), symbols))
    out = {"stream": s["stream"], "symbols": int(symbols.size), "bytes": len(payload),
           "byte_identical": bool(identical), "runs": runs,
           "calls": len(s.get("passes", [1]))}
    for key, times in rows.items():
        out[f"{key}_ms"] = 1e3 * statistics.median(times)
        out[f"{key}_min_ms"] = 1e3 * min(times)
    out["enc_ratio"] = out["ours_enc_ms"] / out["cai_enc_ms"]
    out["dec_ratio"] = out["ours_dec_ms"] / out["cai_dec_ms"]
    return out


def print_table(rows: list[dict], image: str, runs: int) -> None:
    print(f"\nimage: {image}; medians of {runs} runs in ms (minimum in brackets); ratio = ours / "
          "compressai (< 1: ours faster)\n")
    print("| stream | symbols | bytes | ours enc | compressai enc | cai core enc | enc ratio "
          "| ours dec | compressai dec | cai core dec | dec ratio | byte-identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def cell(r: dict, key: str) -> str:
        return f"{r[key + '_ms']:.2f} ({r[key + '_min_ms']:.2f})"

    for r in rows:
        print(f"| {r['stream']} | {r['symbols']:,} | {r['bytes']:,} | {cell(r, 'ours_enc')} | "
              f"{cell(r, 'cai_enc')} | {cell(r, 'core_enc')} | {r['enc_ratio']:.2f} | "
              f"{cell(r, 'ours_dec')} | {cell(r, 'cai_dec')} | {cell(r, 'core_dec')} | "
              f"{r['dec_ratio']:.2f} | {'yes' if r['byte_identical'] else 'NO'} |")
    once = [r for r in rows if r["calls"] == 1]  # each stream once in the totals
    sym = sum(r["symbols"] for r in once)
    for who, enc, dec in (("ours", "ours_enc_ms", "ours_dec_ms"),
                          ("compressai", "cai_enc_ms", "cai_dec_ms"),
                          ("compressai core", "core_enc_ms", "core_dec_ms")):
        te, td = sum(r[enc] for r in once), sum(r[dec] for r in once)
        print(f"{who:>16}: one-call streams encode {te:8.1f} ms ({sym / te / 1e3:6.2f} Msym/s), "
              f"decode {td:8.1f} ms ({sym / td / 1e3:6.2f} Msym/s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    ap.add_argument("--image", help=f"a {WIDTH}x{HEIGHT} image (default: Kodak, else sample)")
    ap.add_argument("--cloud", default=str(SAMPLES / "elephant_d7.ply"))
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the networks")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if args.runs < 5:
        ap.error("--runs must be at least 5 (medians)")
    import torch

    torch.set_num_threads(args.threads)
    image, pixels = pick_image(args.image)
    print(f"collecting streams ({image}, {args.cloud})", file=sys.stderr, flush=True)
    streams = image_streams(pixels) + pointcloud_streams(Path(args.cloud), args.depth)
    rows = []
    for s in streams:
        rows.append(bench_stream(s, args.runs))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows, image, args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"image": image, "rows": rows}, indent=2))
    if not all(r["byte_identical"] for r in rows):
        print("FAILED: some stream is not byte-identical between the coders", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
