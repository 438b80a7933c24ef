"""Decoder fuzzing: mutated and crafted bitstreams through the in-process decoders.

    .venv/bin/python bench/fuzz.py                          # 100,000 streams, table
    .venv/bin/python bench/fuzz.py --streams 3000 --json out.json
    .venv/bin/python bench/fuzz.py --replay case.rpc        # one saved stream, in-process

Not part of CI (tests/test_fuzz.py runs a few thousand streams). Every stream goes through
what a decoder service does with received bytes:

    msg = container.unpack(data)
    ImageCodec.load(msg.model).decode(msg)        or   PointCloudCodec.load(msg.model).decode(msg)

Seeds: every shipped image model encodes small crops of the shipped samples (RGB 64x64,
RGB 50x70, greyscale 40x40) in every safeguard mode and at every protection level; the
point-cloud model encodes the shipped clouds at depths 3 to 5 and an empty cloud. Streams:

  truncation  every prefix of every seed
  bytes       bit flips, byte overwrites, insertions, deletions, copies on the raw bytes
  wire        protobuf wire-level edits: duplicated, dropped, unknown, retyped and overriding
              fields, overlong varints, bad lengths, groups, nested edits (half re-framed)
  fields      protobuf-aware edits of header fields, names, shapes, counts, modes, levels,
              checksums, models, weights hashes, oneof swaps, added/removed/duplicated records
  payload     edits of entropy-coded payload bytes
  runs        long 0x00 / 0xFF runs in payloads and side information
  zero-head   rANS heads (first 8 bytes) zero, just below / at the initial state, all ones
  side-info   edits of the safeguard's side information, mode swaps
  bounds      hostile error bounds: 1e6x / 17x / 16x / tiny times the calibrated one,
              1e-1, 1e6, 0, negative, NaN, infinity, the other bound kind
  huge        huge declared image sizes, point counts, coded-bit totals and shapes (made
              consistent with each other so only the size limits can refuse them)
  latents     well-formed rANS payloads of crafted latent symbols (zeros, escapes up to the
              coder's limit, huge normals) with their symbol checksum: reach the networks
  splice      payloads, records, headers of one seed in another
  crafted     streams built from scratch around a seed's header

Except for "truncation", "bytes" and half of "wire", every CRC-32 and the point-cloud header
checksum are recomputed (9 in 10 times; the tenth keeps stale ones), as anyone can.

Each batch of streams runs in a worker subprocess (torch one thread), so a segmentation fault
is a crash of that batch: the parent saves the offending stream (the one after the last
reported), reproduces it alone in a fresh process (bisecting the batch's earlier streams if it
does not crash alone) and goes on with the rest of the batch. A stream that runs for 10 s is a
hang (faulthandler dumps the worker's stack and exits it; the parent also kills a silent
worker). Outcomes: decoded (bit-exact or not, output shape checked), each documented error
class with its gRPC status, any other exception (a defect: type, message, traceback head,
case and seed), crash, hang. Also reported: peak RSS per batch (the worker's ru_maxrss, models
included), the slowest streams, the most frequent refusal reasons, and the time to refuse a
stream whose error bounds are 1e6x the calibrated ones (must be under 100 ms, no network run).

Exit status 1 on any crash, hang, undocumented exception, wrong output shape, or a slow or
accepted hostile bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reprocodec import container  # noqa: E402  (light: numpy + protobuf)
from reprocodec.checksum import checksum, crc32  # noqa: E402
from reprocodec.v1 import bitstream_pb2 as pb  # noqa: E402

SAMPLES = REPO / "reprocodec" / "samples"
HANG_S = 10.0
HOSTILE_FACTOR = 1e6
HOSTILE_LIMIT_MS = 100.0

STATUS = {
    "ContainerError": "INVALID_ARGUMENT",
    "EntropyStreamError": "INVALID_ARGUMENT",
    "VerificationError": "DATA_LOSS",
    "ModelMismatchError": "FAILED_PRECONDITION",
    "UnknownModelError": "FAILED_PRECONDITION",
    "TooLargeError": "RESOURCE_EXHAUSTED",
}
OK_EXACT, OK_INEXACT = "ok bit-exact", "ok not bit-exact"
OTHER, CRASH, HANG = "OTHER", "CRASH", "HANG"
OUTCOMES = [OK_EXACT, OK_INEXACT, *STATUS, OTHER, CRASH, HANG]
BAD = (OTHER, CRASH, HANG)

# ------------------------------------------------------------------------------- seeds

# (sample, top, left, height, width, greyscale, mode, level) for every shipped image model
IMAGE_SEEDS = [
    ("chelsea", 0, 0, 64, 64, False, "syndrome", "both"),
    ("chelsea", 0, 0, 64, 64, False, "flags", "both"),
    ("chelsea", 0, 0, 64, 64, False, "none", "decoding"),
    ("astronaut", 30, 40, 50, 70, False, "syndrome", "decoding"),
    ("astronaut", 30, 40, 50, 70, False, "simplified", "both"),
    ("coffee", 100, 100, 40, 40, True, "flags", "reconstruction"),
]
# (sample or None for an empty cloud, depth, mode, coders): "auto" as users encode (small
# clouds at shallow depths go all adaptive or all neighbour-coded), "learned" so protected
# occupancy logits are always among the seeds, "smallest" for the mixed payload (format 4),
# "neighbour" for the neighbour coder's payload on every level (format 5). The "auto",
# "smallest" and "neighbour" seeds are given as integer voxels (the identity placement
# omitted), the others as the rescaled sample (format 2: the placement written out).
CLOUD_SEEDS = [
    ("camel_d6", 3, "syndrome", "learned"),
    ("camel_d6", 3, "syndrome", "auto"),
    ("camel_d6", 4, "flags", "learned"),
    ("camel_d6", 5, "none", "auto"),
    ("elephant_d7", 4, "simplified", "learned"),
    ("elephant_d7", 3, "syndrome", "auto"),
    (None, 4, "syndrome", "auto"),
    ("camel_d6", 6, "syndrome", "smallest"),
    ("elephant_d7", 7, "none", "smallest"),
    ("camel_d6", 6, "syndrome", "neighbour"),
    ("elephant_d7", 5, "none", "neighbour"),
    ("rings", 10, "syndrome", "by-level"),
    ("camel_d6", 6, "syndrome", "neighbour@5"),
    ("rings", 10, "syndrome", "by-level@5"),
    ("camel_d6", 6, "syndrome", "smallest@6"),
    ("box", 7, "syndrome", "auto"),
    ("box", 7, "none", "auto@7"),
]
# "rings": the ground rings of a 16-beam spinning sensor (made here, deterministic); "by-level"
# is auto without the small cloud's all-neighbour candidate: learned, adaptive and
# neighbour-coded levels in one stream; "@5": at bitstream format 5 (the neighbour coder's
# version 1 model), "@6" at 6 (the mixer's version 1); "box": the six faces of a 96^3 box, a
# machined part's flat faces, which the default encode mixes (version 3's plane stage, format 8;
# "@7": version 2)


def _rings() -> np.ndarray:
    rng = np.random.default_rng(0)
    elevation, azimuth = np.meshgrid(np.deg2rad(np.linspace(-25, -2, 16)),
                                     np.linspace(0, 2 * np.pi, 512, endpoint=False),
                                     indexing="ij")
    r = 1.8 / np.tan(-elevation) + rng.normal(0, 0.02, elevation.shape)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth),
                     rng.normal(0, 0.02, r.shape)], -1).reshape(-1, 3)


@dataclass
class Seed:
    index: int
    kind: str  # "image" | "point_cloud"
    model: str
    desc: str
    data: bytes
    scale_index: np.ndarray | None = None  # image: the encoder's scale indexes (y's tables)

    def msg(self) -> pb.Bitstream:
        m = pb.Bitstream()
        m.ParseFromString(self.data)
        return m


def build_seeds(codecs: Codecs, out: Path) -> None:
    """Encode the seeds (worker side: needs the codecs) and save the entropy tables that the
    'latents' generator codes with."""
    from reprocodec.image.io import read_image
    from reprocodec.pointcloud import codec as codec_module
    from reprocodec.pointcloud import octree
    from reprocodec.pointcloud.ply import read_ply

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pointcloud import box_faces  # (bench/pointcloud.py: its synthetic clouds)

    out.mkdir(parents=True, exist_ok=True)
    meta = []
    for name, codec in codecs.image.items():
        for sample, top, left, h, w, grey, mode, level in IMAGE_SEEDS:
            px = read_image(SAMPLES / f"{sample}.png")[top:top + h, left:left + w]
            if grey:
                px = px.mean(axis=2, keepdims=True).round().astype(np.uint8)
            capture: dict = {}
            msg = codec.encode(np.ascontiguousarray(px), mode, level, capture=capture)
            i = len(meta)
            (out / f"seed_{i:02d}.rpc").write_bytes(container.pack(msg))
            # One y payload coded with one scale-index grid (the hyperprior models); the
            # checkerboard's two passes get crafted latents only in z.
            one_pass = "scale_index_indices" in capture
            if one_pass:
                np.save(out / f"seed_{i:02d}.scale.npy", capture["scale_index_indices"])
            meta.append({"kind": "image", "model": name, "scale_index": one_pass,
                         "desc": f"{name} {sample} {h}x{w}x{px.shape[2]} {mode}/{level}"})
        np.savez(out / f"tables_{name}.npz",
                 **{f"{t}_{k}": getattr(tables, k) for t, tables in
                    (("z", codec.hyper.tables), ("y", codec.latent.tables))
                    for k in ("cdfs", "lengths", "offsets")})
    for name, codec in codecs.cloud.items():
        for sample, depth, mode, label in CLOUD_SEEDS:
            coders, _, fmt = label.partition("@")
            formats = {"bitstream_format": int(fmt)} if fmt else {}
            points = (_rings() if sample == "rings" else box_faces(96) if sample == "box" else
                      read_ply(SAMPLES / f"{sample}.ply") if sample else
                      np.zeros((0, 3), np.float64))
            if sample and coders in ("auto", "smallest", "neighbour"):
                points = octree.voxelize(points, depth).voxels
            if coders == "by-level":
                every, codec_module.EVERY_NEIGHBOUR_BITS = codec_module.EVERY_NEIGHBOUR_BITS, 0
                try:
                    msg = codec.encode(points, mode, depth=depth, **formats)
                finally:
                    codec_module.EVERY_NEIGHBOUR_BITS = every
            else:
                msg = codec.encode(points, mode, depth=depth, coders=coders, **formats)
            i = len(meta)
            (out / f"seed_{i:02d}.rpc").write_bytes(container.pack(msg))
            meta.append({"kind": "point_cloud", "model": name, "scale_index": False,
                         "desc": f"{name} {sample or 'empty'} depth {depth} {mode} {label}"
                                 + (f" {codec_module.level_coders(msg)}" if msg.payloads else "")})
    (out / "seeds.json").write_text(json.dumps(meta, indent=1))


def load_seeds(folder: Path) -> list[Seed]:
    meta = json.loads((folder / "seeds.json").read_text())
    seeds = []
    for i, m in enumerate(meta):
        scale = np.load(folder / f"seed_{i:02d}.scale.npy") if m["scale_index"] else None
        seeds.append(Seed(i, m["kind"], m["model"], m["desc"],
                          (folder / f"seed_{i:02d}.rpc").read_bytes(), scale))
    return seeds


# --------------------------------------------------------------------- value pools

U32_EDGE = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 128, 255, 256, 1023,
            1024, 4096, 65535, 65536, 65537, 1 << 20, 1 << 24, 1 << 25, (1 << 25) + 1,
            1 << 28, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, (1 << 32) - 1]
U64_EDGE = U32_EDGE + [1 << 32, 1 << 48, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
DOUBLE_EDGE = [0.0, -0.0, 5e-324, 1e-300, 1e-12, 1e-6, 1e-3, 0.1, 0.5, 1.0, 16.0, 1e3,
               1e6, 1e30, 1e300, 1.7976931348623157e308, math.inf, -math.inf, math.nan,
               -1e-3, -1.0, -1e300]
NAMES = ["", "z", "y", "occupancy", "scale_index", "mean_grid", "pixels", "occupancy_logit",
         "y.anchors", "y.non_anchors", "scale_index.anchors", "scale_index.non_anchors",
         "mean_grid.anchors", "mean_grid.non_anchors", "occupancy_adaptive", "occupancy_refined",
         "occupancy_mixed", "occupancy_mixed_v2", "occupancy_mixed_v3", "occupancy_neighbour",
         "occupancy_neighbour_v2",
         "Y", "z ",
         "x" * 128, "x" * 129, "\u00e9", "a\tb", "y\x00"]
ENUMS = [0, 1, 2, 3, 4, 5, 99, 1 << 20, -1]


def pick_u32(orig: int, rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return rng.choice(U32_EDGE)
    if r < 0.75:
        return min(max(orig + rng.randint(-3, 3), 0), (1 << 32) - 1)
    return min(rng.choice([orig * 2, orig // 2, orig ^ (1 << rng.randrange(32)), orig * 64]),
               (1 << 32) - 1)


def pick_u64(orig: int, rng: random.Random) -> int:
    if rng.random() < 0.5:
        return rng.choice(U64_EDGE)
    return min(max(pick_u32(orig, rng), 0), (1 << 64) - 1)


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def mutate_data(b: bytes, rng: random.Random) -> bytes:
    """One edit of an entropy-coded or side-information byte string."""
    b = bytearray(b)
    op = rng.randrange(12)
    n = len(b)
    if op == 0 and n:  # bit flips
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1 and n:  # byte overwrites
        for _ in range(rng.choice([1, 2, 4])):
            b[rng.randrange(n)] = rng.choice([0, 0xFF, 0x80, 0x7F, rng.randrange(256)])
    elif op == 2:  # shorter
        b = b[:max(0, n - rng.choice([1, 2, 3, 4, 5, 8]))] if rng.random() < 0.6 \
            else b[:rng.randrange(n + 1)]
    elif op == 3:  # longer
        b += rng.choice([bytes(1), bytes(4), b"\xff" * 4, rand_bytes(rng, rng.randrange(1, 9))])
    elif op == 4:  # all random, same or other length
        b = bytearray(rand_bytes(rng, n if rng.random() < 0.5 else rng.randrange(0, 2 * n + 9)))
    elif op == 5 and n >= 8:  # swap two 32-bit words
        i, j = rng.randrange(n // 4), rng.randrange(n // 4)
        b[4 * i:4 * i + 4], b[4 * j:4 * j + 4] = b[4 * j:4 * j + 4], b[4 * i:4 * i + 4]
    elif op == 6 and n >= 4:  # drop / repeat a word
        i = 4 * rng.randrange(n // 4)
        b = b[:i] + b[i + 4:] if rng.random() < 0.5 else b[:i] + b[i:i + 4] + b[i:]
    elif op == 7:  # word order reversed
        words = [b[i:i + 4] for i in range(0, n - n % 4, 4)]
        b = bytearray(b"".join(reversed(words))) + b[n - n % 4:]
    elif op == 8:  # the stream twice
        b = b + b
    elif op == 9 and n:  # one byte inserted / deleted
        p = rng.randrange(n)
        b = b[:p] + bytes([rng.randrange(256)]) + b[p:] if rng.random() < 0.5 \
            else b[:p] + b[p + 1:]
    elif op == 10:
        b = bytearray()
    else:  # tail randomised
        p = rng.randrange(n + 1)
        b = b[:p] + rand_bytes(rng, n - p)
    return bytes(b)


def finish(msg: pb.Bitstream, rng: random.Random) -> bytes:
    """Re-frame like an attacker: CRC-32s and the point-cloud header checksum recomputed
    (9 in 10 times; else left stale), serialized without validation."""
    if rng.random() < 0.9:
        for p in msg.payloads:
            p.crc32 = crc32(p.data)
        for t in msg.protected:
            t.side_info_crc32 = crc32(t.side_info)
        if msg.HasField("point_cloud"):
            msg.point_cloud.checksum = container.point_cloud_header_checksum(msg.point_cloud)
    return msg.SerializeToString(deterministic=True)


# ----------------------------------------------------------------------- wire level

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(b: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if pos >= len(b) or shift > 63:
            raise ValueError("bad varint")
        byte = b[pos]
        pos += 1
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return v, pos


def wire_fields(b: bytes) -> list[tuple[int, int, Any]]:
    """Top-level (field, wire type, value): int for varints, bytes otherwise."""
    fields, pos = [], 0
    while pos < len(b):
        key, pos = _read_varint(b, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _read_varint(b, pos)
        elif wt == 1:
            v, pos = b[pos:pos + 8], pos + 8
        elif wt == 5:
            v, pos = b[pos:pos + 4], pos + 4
        elif wt == 2:
            n, pos = _read_varint(b, pos)
            v, pos = b[pos:pos + n], pos + n
        else:
            raise ValueError("group")
        fields.append((num, wt, v))
    return fields


def wire_bytes(fields: list[tuple[int, int, Any]]) -> bytes:
    out = bytearray()
    for num, wt, v in fields:
        out += _varint(num << 3 | wt)
        if wt == 0:
            out += _varint(v)
        elif wt == 2:
            out += _varint(len(v)) + v
        else:
            out += v
    return bytes(out)


def _wire_value(wt: int, rng: random.Random) -> Any:
    if wt == 0:
        return rng.choice(U64_EDGE)
    if wt == 1:
        return struct.pack("<Q", rng.choice(U64_EDGE))
    if wt == 5:
        return struct.pack("<I", rng.choice(U32_EDGE))
    return rand_bytes(rng, rng.choice([0, 1, 4, 8, 32]))


def mutate_wire(b: bytes, rng: random.Random, depth: int = 0) -> bytes:
    fields = wire_fields(b)
    op = rng.randrange(11)
    if op == 0 and fields:  # duplicate a field (scalars: last wins; repeated: one more)
        f = rng.choice(fields)
        fields.insert(rng.randrange(len(fields) + 1), f)
    elif op == 1 and fields:  # drop one
        fields.pop(rng.randrange(len(fields)))
    elif op == 2:  # reorder
        rng.shuffle(fields)
    elif op == 3:  # override a known field with an edge value of its own wire type
        num, wt = rng.choice([(1, 5), (2, 0), (3, 0), (4, 2), (5, 2), (10, 1), (11, 2)])
        fields.append((num, wt, _wire_value(wt, rng)))
    elif op == 4 and fields:  # change a field's wire type
        i = rng.randrange(len(fields))
        num, _, _ = fields[i]
        wt = rng.choice([0, 1, 2, 5])
        fields[i] = (num, wt, _wire_value(wt, rng))
    elif op == 5 and depth < 2:  # nested edit inside a header, payload or record
        nested = [i for i, (num, wt, _) in enumerate(fields) if wt == 2 and num in (6, 7, 8, 9)]
        if nested:
            i = rng.choice(nested)
            num, wt, v = fields[i]
            try:
                fields[i] = (num, wt, mutate_wire(v, rng, depth + 1))
            except ValueError:
                fields[i] = (num, wt, mutate_data(v, rng))
    elif op == 6:  # unknown field numbers (proto3 keeps them)
        num = rng.choice([12, 15, 16, 100, 1000, (1 << 29) - 1])
        wt = rng.choice([0, 1, 2, 5])
        fields.insert(rng.randrange(len(fields) + 1), (num, wt, _wire_value(wt, rng)))
    elif op == 7:  # merged submessage: a second header / payload / record fragment
        num = rng.choice([6, 7, 8, 9])
        sub = [(rng.randrange(1, 11), 0, rng.choice(U64_EDGE))]
        fields.append((num, 2, wire_bytes(sub)))
    out = wire_bytes(fields)
    if op == 8:  # overlong varint key (valid up to 10 bytes) or value at the start
        out = bytes([out[0] | 0x80]) + b"\x80" * rng.choice([1, 8, 9, 10]) + b"\x00" + out[1:]
    elif op == 9:  # length prefix beyond the end
        out += _varint(4 << 3 | 2) + _varint(rng.choice([1, 100, 1 << 31, (1 << 64) - 1]))
    elif op == 10:  # groups (deprecated wire types 3/4), unmatched
        out += _varint(rng.randrange(1, 20) << 3 | rng.choice([3, 4]))
    return out


# ---------------------------------------------------------------- field mutations

def _other(plan: Plan, seed: Seed, rng: random.Random, same_kind: float = 0.7) -> Seed:
    pool = [s for s in plan.seeds if s.index != seed.index
            and (s.kind == seed.kind) == (rng.random() < same_kind)]
    return rng.choice(pool or plan.seeds)


def f_top(msg: pb.Bitstream, rng: random.Random, plan: Plan, seed: Seed) -> None:
    which = rng.randrange(9)
    if which == 0:
        msg.magic = rng.choice([0, container.MAGIC ^ 1, 0xFFFFFFFF, 0x52504344])
    elif which == 1:
        # 2 to 6 are read: the placement a version may omit and the payloads only formats 4
        # to 6 have are checked against it
        msg.format_version = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 255, (1 << 32) - 1])
    elif which == 2:
        msg.codec = rng.choice(ENUMS)
    elif which == 3:
        msg.model = rng.choice(plan.model_names + ["", "nope", "x" * 128, "x" * 129,
                                                   f"../weights/{seed.model}",
                                                   seed.model.upper(), seed.model + " ",
                                                   "bmshj2018-hyperprior", "\u00e9", "a/b"])
    elif which == 4:
        msg.weights_sha256 = rng.choice([
            _other(plan, seed, rng, 0.8).msg().weights_sha256, rand_bytes(rng, 32), bytes(32),
            bytes(msg.weights_sha256)[:31], bytes(msg.weights_sha256) + b"\0", b""])
    elif which == 5:
        msg.output_checksum = rng.getrandbits(64)
    elif which == 6:
        msg.encoder_profile = rng.choice(["", "cuda", "x" * 1000, "\u00e9"])
    elif which == 7:  # the other header kind (oneof), codec kind kept or also swapped
        other = _other(plan, seed, rng, 0.0).msg()
        if other.HasField("image"):
            msg.image.CopyFrom(other.image)
        elif other.HasField("point_cloud"):
            msg.point_cloud.CopyFrom(other.point_cloud)
        if rng.random() < 0.5:
            msg.codec = other.codec
    else:  # no header at all
        msg.ClearField("image")
        msg.ClearField("point_cloud")


def f_header(msg: pb.Bitstream, rng: random.Random, plan: Plan, seed: Seed) -> None:
    if msg.HasField("image"):
        h = msg.image
        name = rng.choice(["height", "width", "channels"])
        setattr(h, name, pick_u32(getattr(h, name), rng) if name != "channels"
                else rng.choice([0, 1, 2, 3, 4, 255, (1 << 32) - 1]))
    elif msg.HasField("point_cloud"):
        c = msg.point_cloud
        name = rng.choice(["depth", "num_points", "origin", "scale"])
        if name == "depth":
            c.depth = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 10, 20, 21, 22, 31, 32, 64,
                                  (1 << 32) - 1, c.depth + 1, max(0, c.depth - 1)])
        elif name == "num_points":
            c.num_points = pick_u64(c.num_points, rng)
        elif name == "origin":
            if rng.random() < 0.1:
                del c.origin[:]  # format 3's omitted placement (a scale must go too)
                if rng.random() < 0.5:
                    c.scale = 0.0
                    msg.format_version = 3
            elif rng.random() < 0.3:
                if rng.random() < 0.5 and c.origin:
                    c.origin.pop()
                else:
                    c.origin.append(rng.choice(DOUBLE_EDGE))
            elif c.origin:
                c.origin[rng.randrange(len(c.origin))] = rng.choice(DOUBLE_EDGE)
        else:
            c.scale = rng.choice(DOUBLE_EDGE)


def _pick_payload(msg: pb.Bitstream, rng: random.Random, plan: Plan, seed: Seed) -> pb.Payload:
    if not msg.payloads or rng.random() < 0.05:
        donor = [p for s in plan.seeds for p in s.msg().payloads][:20]
        msg.payloads.append(rng.choice(donor))
    return msg.payloads[rng.randrange(len(msg.payloads))]


def _pick_record(msg: pb.Bitstream, rng: random.Random, plan: Plan,
                 seed: Seed) -> pb.ProtectedTensor:
    if not msg.protected or rng.random() < 0.05:
        donor = _other(plan, seed, rng, 0.5).msg()
        if donor.protected:
            msg.protected.append(rng.choice(donor.protected))
        else:
            msg.protected.add(name="pixels", shape=[1])
    return msg.protected[rng.randrange(len(msg.protected))]


def _mutate_shape(shape, rng: random.Random) -> None:
    op = rng.randrange(5)
    if op == 0 and len(shape):
        i = rng.randrange(len(shape))
        shape[i] = pick_u32(shape[i], rng)
    elif op == 1:
        shape.append(rng.choice([1, 2, 64, (1 << 32) - 1]))
    elif op == 2 and len(shape):
        shape.pop()
    elif op == 3:
        del shape[:]
    else:
        del shape[:]
        shape.extend([rng.choice([1, 2, 3, 65535, 65536]) for _ in range(rng.choice([1, 9]))])


def f_payload(msg: pb.Bitstream, rng: random.Random, plan: Plan, seed: Seed) -> None:
    p = _pick_payload(msg, rng, plan, seed)
    op = rng.randrange(8)
    if op == 0:
        _mutate_shape(p.shape, rng)
    elif op == 1:
        p.name = rng.choice(NAMES)
    elif op == 2:
        p.symbols_checksum = rng.getrandbits(64)
    elif op == 3:
        msg.payloads.remove(p)
    elif op == 4:
        msg.payloads.append(p)
    elif op == 5 and len(msg.payloads) >= 2:  # swap data / shapes between payloads
        a, b = msg.payloads[0], msg.payloads[1]
        a.data, b.data = bytes(b.data), bytes(a.data)
        if rng.random() < 0.5:
            a.symbols_checksum, b.symbols_checksum = b.symbols_checksum, a.symbols_checksum
    else:
        p.data = mutate_data(p.data, rng)


def f_record(msg: pb.Bitstream, rng: random.Random, plan: Plan, seed: Seed) -> None:
    t = _pick_record(msg, rng, plan, seed)
    op = rng.randrange(12)
    if op == 0:
        t.name = rng.choice(NAMES)
    elif op == 1:
        t.level = rng.choice(ENUMS)
    elif op == 2:
        t.mode = rng.choice(ENUMS)
    elif op == 3:
        t.bound.kind = rng.choice(ENUMS)
    elif op == 4:
        t.bound.value = rng.choice(DOUBLE_EDGE) if rng.random() < 0.5 \
            else t.bound.value * rng.choice([1e6, 17, 16, 2, 0.5, 1e-6])
    elif op == 5:
        _mutate_shape(t.shape, rng)
    elif op == 6:
        t.side_info = mutate_data(t.side_info, rng)
    elif op == 7:
        t.risky_count = pick_u64(t.risky_count, rng)
        if rng.random() < 0.5:
            t.candidate_count = pick_u64(t.candidate_count, rng)
    elif op == 8:
        t.indices_checksum = rng.getrandbits(64)
    elif op == 9:
        msg.protected.remove(t)
    elif op == 10:
        msg.protected.append(t)
    else:
        t.ClearField(rng.choice(["bound", "shape", "side_info", "mode", "level"]))


FIELD_OPS = [f_top, f_header, f_header, f_payload, f_payload, f_record, f_record, f_record]


# ------------------------------------------------------------------------ generators

def g_bytes(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    b = bytearray(seed.data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5, 10])):
        if not b:
            b.append(rng.randrange(256))
            continue
        p, op = rng.randrange(len(b)), rng.randrange(7)
        length = rng.choice([1, 1, 2, 4, 8, 32])
        if op == 0:
            b[p] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[p] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 2:
            b[p:p] = rand_bytes(rng, length)
        elif op == 3:
            del b[p:p + length]
        elif op == 4:
            q = rng.randrange(len(b))
            b[p:p] = b[q:q + length]
        elif op == 5:
            q = rng.randrange(len(b))
            b[p], b[q] = b[q], b[p]
        else:
            b[p:p + length] = bytes([rng.choice([0, 0xFF])]) * length
    return bytes(b)


def g_wire(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    out = seed.data
    for _ in range(rng.choice([1, 1, 2, 3])):
        out = mutate_wire(out, rng)
    if rng.random() < 0.5:  # re-framed: the parsed result with its CRCs fixed up
        msg = pb.Bitstream()
        try:
            msg.ParseFromString(out)
        except Exception:
            return out
        return finish(msg, rng)
    return out


def g_fields(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        rng.choice(FIELD_OPS)(msg, rng, plan, seed)
    return finish(msg, rng)


def g_payload(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    if not msg.payloads:
        return g_fields(plan, seed, rng)
    for _ in range(rng.choice([1, 1, 2])):
        p = msg.payloads[rng.randrange(len(msg.payloads))]
        p.data = mutate_data(p.data, rng)
    return finish(msg, rng)


def g_runs(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    targets = [(p, "data") for p in msg.payloads] + [(t, "side_info") for t in msg.protected]
    if not targets:
        return g_fields(plan, seed, rng)
    obj, attr = targets[0] if rng.random() < 0.35 else rng.choice(targets)
    old = bytes(getattr(obj, attr))
    byte = bytes([rng.choice([0x00, 0xFF])])
    length = rng.choice([4, 16, 64, 256, 1024, 4096, 65536, max(1, len(old))])
    op = rng.randrange(4)
    if op == 0:  # whole field a run
        new = byte * length
    elif op == 1:  # overwrite from an offset (may extend)
        p = rng.randrange(len(old) + 1)
        new = old[:p] + byte * length + old[p + length:]
    elif op == 2:  # inserted
        p = rng.randrange(len(old) + 1)
        new = old[:p] + byte * length + old[p:]
    else:  # appended (keeps the head: the rANS state is honest)
        new = old + byte * length
    setattr(obj, attr, new)
    return finish(msg, rng)


HEADS = [bytes(8), struct.pack("<Q", (1 << 31) - 1), struct.pack("<Q", 1 << 31),
         struct.pack("<Q", (1 << 31) + 1), struct.pack("<Q", 1 << 63),
         struct.pack("<Q", (1 << 64) - 1), struct.pack("<Q", (1 << 32) - 1), bytes(4)]


def g_zero_head(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    if not msg.payloads:
        return g_runs(plan, seed, rng)
    p = msg.payloads[rng.randrange(len(msg.payloads))]
    head = bytes(8) if rng.random() < 0.5 else rng.choice(HEADS)
    rest = bytes(p.data)[8:]
    p.data = head + rng.choice([rest, rest, b"", bytes(len(rest)), b"\xff" * len(rest)])
    return finish(msg, rng)


def g_side_info(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    if not msg.protected:
        return g_fields(plan, seed, rng)
    t = msg.protected[rng.randrange(len(msg.protected))]
    op = rng.randrange(5)
    if op <= 1:
        t.side_info = mutate_data(t.side_info, rng)
    elif op == 2:  # another mode reading this mode's side information
        t.mode = rng.choice([m for m in (1, 2, 3, 4) if m != t.mode])
    elif op == 3:  # random side information of a typical size, any mode
        t.mode = rng.choice([2, 3, 4])
        t.side_info = rand_bytes(rng, rng.choice([1, 2, 8, 40, 300]))
    else:  # counts that disagree with the side information
        t.risky_count = rng.choice([0, 1, t.risky_count + 1, math.prod(t.shape) or 1])
        t.candidate_count = rng.choice([0, t.candidate_count + 1, math.prod(t.shape) or 1])
    return finish(msg, rng)


def g_bounds(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    if not msg.protected:
        return g_fields(plan, seed, rng)
    every = rng.random() < 0.3
    factor = rng.choice([HOSTILE_FACTOR, 1e3, 100, 17, 16.000001, 16, 15.99, 2, 1, 0.5, 1e-3,
                         1e-9, 1e-300])
    absolute = rng.choice([None, None, 1e-1, 1e6, 1e-300, 5e-324, 0.0, -0.0, -1e-3, math.nan,
                           math.inf, -math.inf, 1e300])
    flip = rng.random() < 0.15
    for t in (msg.protected if every else [rng.choice(msg.protected)]):
        t.bound.value = absolute if absolute is not None else t.bound.value * factor
        if flip:
            t.bound.kind = 3 - t.bound.kind if t.bound.kind in (1, 2) else 1
    return finish(msg, rng)


def g_huge(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg = seed.msg()
    op = rng.randrange(3)
    if op == 0 and msg.HasField("image"):
        h, w = rng.choice([(65536, 65536), (65535, 1), (1, 65536), (7071, 7071), (7072, 7072),
                           (6103, 8192), (4096, 4096), (1 << 16, 763), (1, 1)])
        c = msg.image.channels
        msg.image.height, msg.image.width = h, w
        if rng.random() < 0.8:  # make every shape agree with the header
            ph, pw = (h + 63) // 64 * 64, (w + 63) // 64 * 64
            for p in msg.payloads:
                new = [p.shape[0], ph // 64, pw // 64] if p.name == "z" else \
                    [p.shape[0], ph // 16, pw // 16]
                p.ClearField("shape")
                p.shape.extend(new)
            y = [p for p in msg.payloads if p.name == "y"]
            for t in msg.protected:
                new = [h, w, c] if t.name == "pixels" else [1, y[0].shape[0], ph // 16, pw // 16]
                t.ClearField("shape")
                t.shape.extend(new)
    elif op == 0 and msg.HasField("point_cloud"):
        c = msg.point_cloud
        c.depth = rng.choice([c.depth, 21, 10])
        c.num_points = rng.choice([1 << 25, (1 << 25) + 1, 1 << 31, (1 << 64) - 1,
                                   8 ** c.depth, 8 ** c.depth + 1, c.num_points * 1000])
        total = rng.choice([1 << 28, (1 << 28) + 8, 8 * min(c.num_points, 1 << 40) * c.depth,
                            (1 << 31) - 8, (1 << 32) - 8])
        total = min(total, (1 << 32) - 8)
        for p in msg.payloads:
            p.ClearField("shape")
            p.shape.append(total)
        for t in msg.protected:
            t.ClearField("shape")
            t.shape.append(total)
            if rng.random() < 0.5:
                t.risky_count = t.candidate_count = total
    elif op == 1 and msg.payloads:  # one huge payload shape
        p = msg.payloads[rng.randrange(len(msg.payloads))]
        p.ClearField("shape")
        p.shape.extend(rng.choice([[1 << 31], [(1 << 31) + 1], [65536, 65536], [(1 << 32) - 1],
                                   [(1 << 32) - 1] * 3, [2] * 31, [1] * 9]))
    elif msg.protected:  # one huge protected shape (and counts)
        t = msg.protected[rng.randrange(len(msg.protected))]
        t.ClearField("shape")
        t.shape.extend(rng.choice([[1 << 31], [1, 128, 4096, 4096], [(1 << 32) - 1] * 2,
                                   [1 << 16, 1 << 15]]))
        if rng.random() < 0.5:
            t.risky_count = t.candidate_count = min(math.prod(t.shape), (1 << 64) - 1)
    return finish(msg, rng)


def _craft_symbols(rng: random.Random, n: int, limit: int) -> np.ndarray:
    g = np.random.default_rng(rng.getrandbits(64))
    op = rng.randrange(7)
    if op == 0:
        s = np.zeros(n, np.int64)
    elif op == 1:
        s = np.full(n, rng.choice([1, -1, 100, -100, 1 << 20, -(1 << 20), limit, -limit]))
    elif op == 2:
        s = np.round(g.normal(0, rng.choice([1, 10, 1e3, 1e5, 1e7]), n))
    elif op == 3:  # sparse extremes
        s = np.zeros(n, np.int64)
        where = g.integers(0, n, max(1, n // rng.choice([1, 10, 1000])))
        s[where] = g.choice([limit, -limit], where.size)
    elif op == 4:
        s = np.where(np.arange(n) % 2, limit, -limit)
    elif op == 5:
        s = g.integers(-limit, limit + 1, n)
    else:
        s = g.integers(-3, 4, n)
    return np.clip(s, -limit, limit).astype(np.int32)


def g_latents(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    """Well-formed rANS payloads of crafted symbols, with their symbol checksum."""
    from reprocodec import entropy

    msg = seed.msg()
    z_tables, y_tables = plan.tables(seed.model)
    limit = entropy.MAX_MAGNITUDE - 1024  # offsets are small: every value stays codable
    payloads = {p.name: p for p in msg.payloads}
    choices = [["z"], ["y"], ["z", "y"]] if seed.scale_index is not None else [["z"]]
    for name in rng.choice(choices):
        p = payloads[name]
        shape = tuple(p.shape)
        if name == "z":
            indexes = np.repeat(np.arange(shape[0], dtype=np.int32), shape[1] * shape[2])
            tables = z_tables
        else:
            assert seed.scale_index is not None
            indexes, tables = seed.scale_index.reshape(-1).astype(np.int32), y_tables
        symbols = _craft_symbols(rng, indexes.size, limit)
        p.data = entropy.encode(symbols, indexes, tables)
        p.symbols_checksum = checksum(symbols.reshape(shape))
    return finish(msg, rng)


def g_splice(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    msg, other = seed.msg(), _other(plan, seed, rng, 0.8).msg()
    op = rng.randrange(5)
    if op == 0 and other.payloads:
        names = {p.name: p for p in other.payloads}
        for p in msg.payloads:
            if p.name in names and rng.random() < 0.7:
                p.CopyFrom(names[p.name])
    elif op == 1:
        del msg.protected[:]
        msg.protected.extend(other.protected)
    elif op == 2:
        names = {t.name: t for t in other.protected}
        for t in msg.protected:
            if t.name in names and rng.random() < 0.7:
                t.side_info = names[t.name].side_info
                t.mode = names[t.name].mode
    elif op == 3:
        if other.HasField("image"):
            msg.image.CopyFrom(other.image)
        elif other.HasField("point_cloud"):
            msg.point_cloud.CopyFrom(other.point_cloud)
    else:
        msg.model, msg.weights_sha256 = other.model, other.weights_sha256
    return finish(msg, rng)


def g_crafted(plan: Plan, seed: Seed, rng: random.Random) -> bytes:
    src = seed.msg()
    msg = pb.Bitstream(magic=container.MAGIC, format_version=container.FORMAT_VERSION,
                       codec=src.codec, model=src.model, weights_sha256=src.weights_sha256,
                       output_checksum=rng.getrandbits(64))
    if src.HasField("image"):
        msg.image.CopyFrom(src.image)
    elif src.HasField("point_cloud"):
        msg.point_cloud.CopyFrom(src.point_cloud)
    for p in src.payloads:
        head = struct.pack("<Q", rng.getrandbits(64) | (1 << 31)) if rng.random() < 0.7 \
            else rand_bytes(rng, 8)
        body = rand_bytes(rng, 4 * rng.choice([0, 1, 2, 4, 16, len(p.data) // 4]))
        msg.payloads.add(name=p.name, shape=list(p.shape), data=head + body,
                         symbols_checksum=rng.getrandbits(64))
    for t in src.protected:
        r = msg.protected.add()
        r.CopyFrom(t)
        r.mode = rng.choice([1, 2, 3, 4])
        r.side_info = b"" if r.mode == 1 else rand_bytes(rng, rng.choice([0, 1, 4, 16, 64]))
        r.indices_checksum = rng.getrandbits(64)
        n = math.prod(r.shape)
        r.risky_count = rng.randrange(n + 1)
        r.candidate_count = rng.randrange(r.risky_count, n + 1)
    return finish(msg, rng)


# kind: (generator, weight among the mutation cases)
GENERATORS = {
    "bytes": (g_bytes, 3), "wire": (g_wire, 2), "fields": (g_fields, 6),
    "payload": (g_payload, 4), "runs": (g_runs, 2), "zero-head": (g_zero_head, 1),
    "side-info": (g_side_info, 3), "bounds": (g_bounds, 2), "huge": (g_huge, 2),
    "latents": (g_latents, 2), "splice": (g_splice, 1), "crafted": (g_crafted, 1),
}
IMAGE_ONLY = {"latents"}
KINDS = ["truncation", *GENERATORS]


class Plan:
    """Case i -> (kind, seed index, stream bytes), deterministic in (seeds, master seed)."""

    def __init__(self, seeds: list[Seed], streams: int, master_seed: int, seeds_dir: Path):
        self.seeds, self.streams, self.master_seed = seeds, streams, master_seed
        self.seeds_dir = seeds_dir
        self.model_names = sorted({s.model for s in seeds})
        every = [(s.index, k) for s in seeds for k in range(len(s.data))]
        # Every truncation when they are at most a quarter of the run; else an even sample.
        n = len(every) if 4 * len(every) <= streams else streams // 5
        self.truncations_total = len(every)
        self.truncations = every if n == len(every) else \
            [every[j * len(every) // n] for j in range(n)]
        self.cycle = [k for k, (_, weight) in GENERATORS.items() for _ in range(weight)]
        self._tables: dict[str, tuple[Any, Any]] = {}

    def tables(self, model: str) -> tuple[Any, Any]:
        from reprocodec.entropy import CdfTables

        if model not in self._tables:
            f = np.load(self.seeds_dir / f"tables_{model}.npz")
            self._tables[model] = tuple(  # type: ignore[assignment]
                CdfTables.from_arrays(f[f"{t}_cdfs"], f[f"{t}_lengths"], f[f"{t}_offsets"])
                for t in ("z", "y"))
        return self._tables[model]

    def case(self, i: int) -> tuple[str, int, bytes]:
        if i < len(self.truncations):
            s, k = self.truncations[i]
            return "truncation", s, self.seeds[s].data[:k]
        rng = random.Random(f"{self.master_seed}:{i}")
        kind = self.cycle[(i - len(self.truncations)) % len(self.cycle)]
        generate = GENERATORS[kind][0]
        pool = [s for s in self.seeds if s.kind == "image"] if kind in IMAGE_ONLY else self.seeds
        seed = rng.choice(pool)
        for _ in range(8):  # a generator may pick a value the field cannot hold: next try
            try:
                return kind, seed.index, generate(self, seed, rng)
            except (ValueError, TypeError, OverflowError, IndexError, KeyError):
                seed = rng.choice(pool)
        return kind, seed.index, g_bytes(self, seed, rng)


# ------------------------------------------------------------------------- worker

class Codecs:
    """Every shipped model, loaded once; other names go through the codecs' own load()."""

    def __init__(self) -> None:
        from reprocodec.image import ImageCodec
        from reprocodec.image import list_models as image_models
        from reprocodec.pointcloud import PointCloudCodec
        from reprocodec.pointcloud import list_models as cloud_models

        self._image_cls, self._cloud_cls = ImageCodec, PointCloudCodec
        self.image = {i.name: ImageCodec.load(i.name) for i in image_models()}
        self.cloud = {i.name: PointCloudCodec.load(i.name) for i in cloud_models()}

    def decode(self, data: bytes) -> tuple[bool, str | None, str]:
        """(bit_exact, problem with the returned output or None, note on the stream)."""
        msg = container.unpack(data)
        if msg.codec == pb.CODEC_KIND_IMAGE:
            if msg.model not in self.image:
                self.image[msg.model] = self._image_cls.load(msg.model)
            out = self.image[msg.model].decode(msg)
            want = (msg.image.height, msg.image.width, msg.image.channels)
            note = ("image, pixels " + ("protected" if any(t.name == "pixels"
                                                            for t in msg.protected)
                                        else "unprotected") + ", output checksum "
                    + ("0" if not msg.output_checksum else "set"))
            if out.pixels.shape != want or out.pixels.dtype != np.uint8:
                return out.bit_exact, f"pixels {out.pixels.shape} {out.pixels.dtype}, " \
                    f"header {want}", note
            return bool(out.bit_exact), None, note
        if msg.model not in self.cloud:
            self.cloud[msg.model] = self._cloud_cls.load(msg.model)
        out = self.cloud[msg.model].decode(msg)
        n = msg.point_cloud.num_points
        note = f"point cloud, {n} points"
        if out.voxels.shape != (n, 3) or out.points.shape != (n, 3):
            return out.bit_exact, f"voxels {out.voxels.shape}, header {n} points", note
        return bool(out.bit_exact), None, note if n else "point cloud, empty"


def _reason(exc: BaseException) -> str:
    text = re.sub(r"'[^'\s]{0,40}'", "'…'", str(exc).split("\n")[0])
    return re.sub(r"-?\d[\d.,e+-]*", "#", text)[:110]


def classify(codecs: Codecs, data: bytes) -> tuple[str, dict]:
    from reprocodec.entropy import EntropyStreamError
    from reprocodec.errors import (
        ContainerError,
        ModelMismatchError,
        TooLargeError,
        UnknownModelError,
        VerificationError,
    )

    documented = [(EntropyStreamError, "EntropyStreamError"), (ContainerError, "ContainerError"),
                  (VerificationError, "VerificationError"),
                  (ModelMismatchError, "ModelMismatchError"),
                  (UnknownModelError, "UnknownModelError"), (TooLargeError, "TooLargeError")]
    try:
        exact, problem, note = codecs.decode(data)
    except Exception as exc:
        for cls, name in documented:
            if isinstance(exc, cls):
                return name, {"r": _reason(exc)}
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return OTHER, {"type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                       "message": str(exc)[:400], "traceback": "".join(tb[-6:])[-2500:]}
    if problem:
        return OTHER, {"type": "wrong output shape", "message": problem, "traceback": ""}
    return (OK_EXACT if exact else OK_INEXACT), ({} if exact else {"r": note})


def _stack(stderr: str) -> str:
    """The Python stacks faulthandler printed (without its list of extension modules)."""
    starts = [stderr.rfind(m) for m in ("Fatal Python error", "Timeout (")]
    start = max([x for x in starts if x >= 0], default=max(0, len(stderr) - 3000))
    return stderr[start:].split("\nExtension modules:")[0][:3000]


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Counted:
    """Counts calls of the networks a decode would run (hostile bounds must run none)."""

    def __init__(self, codec: Any):
        self.codec, self.calls = codec, 0

    def _count(self, *args: Any) -> None:
        self.calls += 1

    def __enter__(self) -> _Counted:
        if self.codec.kind == "image":
            self.hooks = [m.register_forward_pre_hook(self._count)
                          for m in (self.codec.model.h_s, self.codec.model.g_s)]
        else:
            real = self.real = self.codec.networks.logits_of  # what decode calls

            def counted(*a: Any, **k: Any) -> Any:
                self.calls += 1
                return real(*a, **k)

            self.codec.networks.logits_of = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.codec.kind == "image":
            for h in self.hooks:
                h.remove()
        else:
            del self.codec.networks.logits_of  # the class's method again
            assert self.codec.networks.logits_of == self.real


def hostile_bound_timing(codecs: Codecs, seeds: list[Seed], reps: int = 15) -> list[dict]:
    """Time to refuse each model's syndrome seed with every bound `factor` x the calibrated
    one (CRCs valid: only the bounds are hostile); counts network calls (must be none). 1e6x
    is the hostile bound; 17x, just over decision.MAX_BOUND_FACTOR and inside the container's
    own limits, shows the decoder's own check at work."""
    rows = []
    for factor in (HOSTILE_FACTOR, 17.0):
        for name, codec in [*codecs.image.items(), *codecs.cloud.items()]:
            seed = next(s for s in seeds if s.model == name and "syndrome" in s.desc
                        and "empty" not in s.desc)
            msg = seed.msg()
            for t in msg.protected:
                t.bound.value *= factor
                t.side_info_crc32 = crc32(t.side_info)
            data = msg.SerializeToString(deterministic=True)
            times, outcomes = [], []
            with _Counted(codec) as counter:
                for _ in range(reps):
                    t0 = time.perf_counter()
                    outcome, info = classify(codecs, data)
                    times.append(time.perf_counter() - t0)
                    outcomes.append((outcome, info.get("r", info.get("message", ""))))
            honest = []
            for _ in range(3):
                t0 = time.perf_counter()
                classify(codecs, seed.data)
                honest.append(time.perf_counter() - t0)
            rows.append({"model": name, "factor": factor, "seed": seed.desc,
                         "bounds": {t.name: t.bound.value for t in msg.protected},
                         "outcome": outcomes[0][0], "reason": outcomes[0][1],
                         "all_refused": all(o == "ContainerError" for o, _ in outcomes),
                         "median_ms": 1e3 * statistics.median(times),
                         "max_ms": 1e3 * max(times), "network_calls": counter.calls,
                         "honest_decode_ms": 1e3 * statistics.median(honest)})
    return rows


def worker(args: argparse.Namespace) -> int:
    import faulthandler

    faulthandler.enable()  # a segfault prints the Python stack to stderr
    import torch

    torch.set_num_threads(1)
    codecs = Codecs()
    seeds_dir = Path(args.seeds)
    extra: dict[str, Any] = {}
    if args.prepare:
        build_seeds(codecs, seeds_dir)
    seeds = load_seeds(seeds_dir)
    if args.prepare:
        extra["hostile"] = hostile_bound_timing(codecs, seeds)
    plan = Plan(seeds, args.streams, args.seed, seeds_dir)
    lo, hi = (int(x) for x in args.cases.split(":"))
    _emit({"ready": True, "rss_mb": _rss_mb(), **extra})
    for i in range(lo, hi):
        kind, s, data = plan.case(i)
        faulthandler.dump_traceback_later(args.hang_seconds, exit=True)
        t0 = time.perf_counter()
        if i == args.inject_crash:  # harness self-test: a native crash in the decoder
            import ctypes

            ctypes.string_at(0)
        if i == args.inject_hang:
            time.sleep(1e6)
        outcome, info = classify(codecs, data)
        dt = time.perf_counter() - t0
        faulthandler.cancel_dump_traceback_later()
        _emit({"i": i, "k": kind, "s": s, "o": outcome, "t": dt, **info})
    _emit({"done": True, "rss_mb": _rss_mb()})
    return 0


# ------------------------------------------------------------------------- parent

@dataclass
class Summary:
    counts: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> n
    reasons: Counter = field(default_factory=Counter)  # (outcome, reason) -> n
    defects: list[dict] = field(default_factory=list)
    defect_types: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)  # crashes and hangs
    slowest: list[tuple[float, int, str, int, str]] = field(default_factory=list)
    batches: list[dict] = field(default_factory=list)
    hostile: list[dict] = field(default_factory=list)
    streams: int = 0

    def add(self, rec: dict, seeds: list[Seed]) -> None:
        kind, outcome = rec["k"], rec["o"]
        self.counts.setdefault(kind, Counter())[outcome] += 1
        self.streams += 1
        if "r" in rec:
            self.reasons[(outcome, rec["r"])] += 1
        if outcome == OTHER:
            key = f"{rec['type']}: {_reason(Exception(rec['message']))}"
            self.defect_types[key] += 1
            if self.defect_types[key] <= 3:
                self.defects.append({"case": rec["i"], "kind": kind,
                                     "seed": seeds[rec["s"]].desc, **{
                                         k: rec[k] for k in ("type", "message", "traceback")}})
        self.slowest.append((rec["t"], rec["i"], kind, rec["s"], outcome))
        if len(self.slowest) > 64:
            self.slowest = sorted(self.slowest, reverse=True)[:8]


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="reprocodec-fuzz-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.seeds_dir = self.work / "seeds"
        self.failed_dir = self.work / "failed"
        self.summary = Summary()
        self.plan: Plan | None = None
        self.seeds: list[Seed] = []

    def command(self, lo: int, hi: int, prepare: bool = False,
                inject: bool = True) -> list[str]:
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seeds",
               str(self.seeds_dir), "--cases", f"{lo}:{hi}", "--streams", str(a.streams),
               "--seed", str(a.seed), "--hang-seconds", str(a.hang_seconds)]
        if prepare:
            cmd.append("--prepare")
        if inject:
            cmd += ["--inject-crash", str(a.inject_crash), "--inject-hang", str(a.inject_hang)]
        return cmd

    def spawn(self, lo: int, hi: int, prepare: bool = False, inject: bool = True) -> dict:
        err = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".err", dir=self.work,
                                          delete=False)
        env = dict(os.environ)
        if self.args.boundscheck:  # numba kernels raise IndexError instead of reading past
            env["NUMBA_BOUNDSCHECK"] = "1"  # an array; compiled afresh into their own cache
            env["NUMBA_CACHE_DIR"] = str(self.work / "numba-boundscheck-cache")
        proc = subprocess.Popen(self.command(lo, hi, prepare, inject), stdout=subprocess.PIPE,
                                stderr=err, cwd=str(REPO), env=env)
        return {"proc": proc, "err": Path(err.name), "lo": lo, "hi": hi, "next": lo,
                "buf": b"", "ready": False, "done": False, "last": time.monotonic(),
                "killed": None, "started": time.monotonic()}

    def reap(self, w: dict) -> tuple[int, float]:
        """Exit status and peak RSS (MB) of a finished worker (from wait4, crashed or not)."""
        _, status, usage = os.wait4(w["proc"].pid, 0)
        w["proc"].returncode = os.waitstatus_to_exitcode(status)
        return w["proc"].returncode, usage.ru_maxrss / 1024

    def main(self) -> int:
        a = self.args
        t_start = time.monotonic()
        bs = a.batch_size
        pending = [(lo, min(lo + bs, a.streams)) for lo in range(0, a.streams, bs)]
        batch_of = {rng: {"batch": j, "cases": rng[1] - rng[0], "rss_mb": 0.0, "seconds": 0.0,
                          "workers": 0} for j, rng in enumerate(pending)}
        running: list[dict] = []
        sel = selectors.DefaultSelector()
        first = pending.pop(0)
        w = self.spawn(*first, prepare=True)
        w["batch"] = first
        running.append(w)
        sel.register(w["proc"].stdout, selectors.EVENT_READ, w)
        print(f"work dir {self.work}; preparing seeds", file=sys.stderr, flush=True)
        last_report = time.monotonic()
        while running or pending:
            if self.plan is not None:
                while pending and len(running) < a.jobs:
                    rng = pending.pop(0)
                    w = self.spawn(*rng)
                    w["batch"] = rng
                    running.append(w)
                    sel.register(w["proc"].stdout, selectors.EVENT_READ, w)
            for key, _ in sel.select(timeout=1.0):
                w = key.data
                chunk = os.read(w["proc"].stdout.fileno(), 1 << 16)
                if not chunk:
                    sel.unregister(w["proc"].stdout)
                    self.finish_worker(w, batch_of, running, sel)
                    continue
                w["buf"] += chunk
                *lines, w["buf"] = w["buf"].split(b"\n")
                for line in lines:
                    self.line(w, json.loads(line))
            now = time.monotonic()
            for w in running:  # the parent's own watchdog, beside faulthandler's
                limit = 900 if not w["ready"] else a.hang_seconds + 20
                if w["killed"] is None and now - w["last"] > limit:
                    w["killed"] = "silent"
                    w["proc"].send_signal(signal.SIGKILL)
            if now - last_report > 30:
                last_report = now
                print(f"  {self.summary.streams:,} / {a.streams:,} streams, "
                      f"{now - t_start:.0f} s", file=sys.stderr, flush=True)
        self.summary.batches = sorted(batch_of.values(), key=lambda b: b["batch"])
        self.bisect_failures()
        seconds = time.monotonic() - t_start
        return self.report(seconds)

    def line(self, w: dict, rec: dict) -> None:
        w["last"] = time.monotonic()
        if rec.get("ready"):
            w["ready"] = True
            if "hostile" in rec:
                self.summary.hostile = rec["hostile"]
            if self.plan is None:
                self.seeds = load_seeds(self.seeds_dir)
                self.plan = Plan(self.seeds, self.args.streams, self.args.seed, self.seeds_dir)
                print(f"{len(self.seeds)} seeds; {len(self.plan.truncations):,} truncation "
                      f"streams of {self.plan.truncations_total:,}", file=sys.stderr, flush=True)
        elif rec.get("done"):
            w["done"] = True
        else:
            w["next"] = rec["i"] + 1
            self.summary.add(rec, self.seeds)

    def finish_worker(self, w: dict, batch_of: dict, running: list, sel) -> None:
        rc, rss = self.reap(w)
        w["proc"].stdout.close()
        running.remove(w)
        b = batch_of[w["batch"]]
        b["rss_mb"] = max(b["rss_mb"], rss)
        b["seconds"] += time.monotonic() - w["started"]
        b["workers"] += 1
        if w["done"] and rc == 0:
            w["err"].unlink(missing_ok=True)
            return
        stderr = w["err"].read_text(errors="replace")
        if not w["ready"]:
            raise SystemExit(f"worker failed before its first stream (rc {rc}):\n{stderr}")
        case = w["next"]
        hang = w["killed"] == "silent" or "Timeout (" in stderr
        kind, s, data = self.plan.case(case)  # type: ignore[union-attr]
        self.failed_dir.mkdir(exist_ok=True)
        path = self.failed_dir / f"case_{case}.rpc"
        path.write_bytes(data)
        outcome = HANG if hang else CRASH
        self.summary.counts.setdefault(kind, Counter())[outcome] += 1
        self.summary.streams += 1
        self.summary.failures.append({
            "outcome": outcome, "case": case, "kind": kind, "seed": self.seeds[s].desc,
            "exit": rc, "stream": str(path), "batch": list(w["batch"]),
            "stderr": _stack(stderr)})
        print(f"  {outcome} at case {case} ({kind}, exit {rc}); stream saved to {path}",
              file=sys.stderr, flush=True)
        if case + 1 < w["hi"]:  # the rest of the batch in a fresh worker
            nw = self.spawn(case + 1, w["hi"])
            nw["batch"] = w["batch"]
            running.append(nw)
            sel.register(nw["proc"].stdout, selectors.EVENT_READ, nw)

    def run_alone(self, lo: int, hi: int) -> tuple[str, int]:
        """Cases lo..hi-1 in a fresh worker: the last one's outcome (or CRASH / HANG)."""
        w = self.spawn(lo, hi)
        try:
            out, _ = w["proc"].communicate(timeout=600 + self.args.hang_seconds * 2)
        except subprocess.TimeoutExpired:
            w["proc"].kill()
            out, _ = w["proc"].communicate()
            return HANG, w["proc"].returncode
        stderr = w["err"].read_text(errors="replace")
        w["err"].unlink(missing_ok=True)
        recs = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        last = [r for r in recs if r.get("i") == hi - 1]
        if last:
            return last[0]["o"], w["proc"].returncode
        return (HANG if "Timeout (" in stderr else CRASH), w["proc"].returncode

    def bisect_failures(self) -> None:
        """Does a failing stream fail alone? If not, the shortest run of its batch's earlier
        streams that makes it fail (binary search on the first case)."""
        for f in self.summary.failures[:self.args.max_bisect]:
            case, lo = f["case"], f["batch"][0]
            outcome, rc = self.run_alone(case, case + 1)
            f["alone"] = {"outcome": outcome, "exit": rc}
            if outcome in (CRASH, HANG) or case == lo:
                f["needs_from_case"] = case
                continue
            good, bad = case, lo  # starting at `good` does not fail; at `bad` it did
            if self.run_alone(bad, case + 1)[0] not in (CRASH, HANG):
                f["needs_from_case"] = None  # not reproducible: state from other batches?
                continue
            while good - bad > 1:
                mid = (good + bad) // 2
                if self.run_alone(mid, case + 1)[0] in (CRASH, HANG):
                    bad = mid
                else:
                    good = mid
            f["needs_from_case"] = bad

    # ---------------------------------------------------------------------- report
    def report(self, seconds: float) -> int:
        s, a = self.summary, self.args
        totals: Counter = Counter()
        for c in s.counts.values():
            totals.update(c)
        print(f"\n{s.streams:,} streams in {seconds:.0f} s ({len(self.seeds)} seeds, "
              f"master seed {a.seed}, batches of {a.batch_size}, {a.jobs} job(s)"
              f"{', numba bounds checks on' if a.boundscheck else ''}); "
              f"truncations: {len(self.plan.truncations) if self.plan else 0:,} of "
              f"{self.plan.truncations_total if self.plan else 0:,}\n")
        short = {OK_EXACT: "ok exact", OK_INEXACT: "ok inexact", "ContainerError": "Container",
                 "EntropyStreamError": "EntropyStream", "VerificationError": "Verification",
                 "ModelMismatchError": "ModelMismatch", "UnknownModelError": "UnknownModel",
                 "TooLargeError": "TooLarge"}
        cols = OUTCOMES
        print("| kind | streams | " + " | ".join(short.get(c, c) for c in cols) + " |")
        print("|---|---:|" + "---:|" * len(cols))
        for kind in KINDS:
            c = s.counts.get(kind, Counter())
            print(f"| {kind} | {sum(c.values()):,} | "
                  + " | ".join(f"{c[o]:,}" for o in cols) + " |")
        print(f"| **all** | **{s.streams:,}** | "
              + " | ".join(f"**{totals[o]:,}**" for o in cols) + " |")
        status: Counter = Counter()
        for o, n in totals.items():
            status[STATUS.get(o, "OK" if o in (OK_EXACT, OK_INEXACT) else o)] += n
        print("\nby status: " + ", ".join(f"{k} {v:,}" for k, v in status.most_common()))
        print("\nmost frequent refusal reasons:")
        for (o, r), n in s.reasons.most_common(a.reasons):
            print(f"  {n:>7,}  {o:<20} {r}")
        print("decoded, not bit-exact (the stream's own output checksum differs):")
        for (o, r), n in s.reasons.most_common():
            if o == OK_INEXACT:
                print(f"  {n:>7,}  {r}")
        print("\n| batch | cases | workers | seconds | peak RSS MB |")
        print("|---:|---:|---:|---:|---:|")
        for b in s.batches:
            print(f"| {b['batch']} | {b['cases']:,} | {b['workers']} | {b['seconds']:.0f} | "
                  f"{b['rss_mb']:.0f} |")
        slow = sorted(s.slowest, reverse=True)[:5]
        print("\nslowest streams: " + "; ".join(
            f"{t * 1e3:.0f} ms case {i} {k} ({self.seeds[si].desc}) -> {o}"
            for t, i, k, si, o in slow))
        print("\nhostile bounds (every bound of a syndrome seed times the factor; 15 decodes):")
        print("| model | factor | outcome | median ms | max ms | networks run | honest decode ms "
              "| reason |")
        print("|---|---:|---|---:|---:|---:|---:|---|")
        for h in s.hostile:
            print(f"| {h['model']} | {h['factor']:g} | {h['outcome']} | {h['median_ms']:.2f} | "
                  f"{h['max_ms']:.2f} | {h['network_calls']} | {h['honest_decode_ms']:.1f} | "
                  f"{h['reason'][:70]} |")
        if s.defects:
            print(f"\nDEFECTS: {sum(s.defect_types.values())} streams raised outside the "
                  "documented classes:")
            for key, n in s.defect_types.most_common():
                print(f"  {n:>6,}  {key}")
            for d in s.defects[:10]:
                print(f"\n  case {d['case']} ({d['kind']}, seed {d['seed']}): {d['type']}: "
                      f"{d['message']}\n" + "\n".join(
                          "    " + x for x in d["traceback"].splitlines()[-8:]))
        for f in s.failures:
            print(f"\n{f['outcome']}: case {f['case']} ({f['kind']}, seed {f['seed']}), exit "
                  f"{f['exit']}, stream {f['stream']}; alone: {f.get('alone')}; fails when "
                  f"run from case {f.get('needs_from_case')}\n{f['stderr'][-1500:]}")
        hostile_ok = bool(s.hostile) and all(
            h["all_refused"] and h["max_ms"] < HOSTILE_LIMIT_MS and h["network_calls"] == 0
            for h in s.hostile)
        verdict = {"crashes": totals[CRASH], "hangs": totals[HANG], "other": totals[OTHER],
                   "hostile_bound_ok": hostile_ok}
        print("\nverdict: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
        if a.json:
            Path(a.json).write_text(json.dumps({
                "streams": s.streams, "seconds": seconds, "seed": a.seed,
                "boundscheck": a.boundscheck,
                "seeds": [x.desc for x in self.seeds],
                "truncations": len(self.plan.truncations) if self.plan else 0,
                "counts": {k: dict(v) for k, v in s.counts.items()},
                "totals": dict(totals), "status": dict(status),
                "reasons": [[o, r, n] for (o, r), n in s.reasons.most_common()],
                "defect_types": dict(s.defect_types), "defects": s.defects,
                "failures": s.failures, "batches": s.batches, "hostile": s.hostile,
                "slowest": [{"ms": t * 1e3, "case": i, "kind": k, "seed": self.seeds[si].desc,
                             "outcome": o} for t, i, k, si, o in slow],
                "verdict": verdict, "work_dir": str(self.work)}, indent=1))
        if not a.keep and not s.failures:
            shutil.rmtree(self.work, ignore_errors=True)
        bad = totals[CRASH] or totals[HANG] or totals[OTHER] or not hostile_ok
        return 1 if bad else 0


def replay(path: str) -> int:
    """Decode one saved stream in this process (a crash takes this process down)."""
    import faulthandler

    faulthandler.enable()
    codecs = Codecs()
    outcome, info = classify(codecs, Path(path).read_bytes())
    print(outcome, json.dumps(info, indent=1))
    return 0 if outcome not in BAD else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=5000, help="streams per subprocess")
    ap.add_argument("--jobs", type=int, default=1, help="worker subprocesses at once")
    ap.add_argument("--seed", type=int, default=1, help="master seed of the mutations")
    ap.add_argument("--hang-seconds", type=float, default=HANG_S)
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--workdir", help="seeds and failing streams (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir when all passed")
    ap.add_argument("--reasons", type=int, default=25, help="refusal reasons to print")
    ap.add_argument("--max-bisect", type=int, default=5)
    ap.add_argument("--boundscheck", action="store_true",
                    help="compile the numba kernels with bounds checks (NUMBA_BOUNDSCHECK=1), "
                         "so an out-of-bounds read is an IndexError (OTHER), not silent")
    ap.add_argument("--replay", help="decode one saved stream in-process and print outcome")
    # harness self-tests (tests/test_fuzz.py): a native crash / a hang at this case
    ap.add_argument("--inject-crash", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--inject-hang", type=int, default=-1, help=argparse.SUPPRESS)
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seeds", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.worker:
        return worker(args)
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
