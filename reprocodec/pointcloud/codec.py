"""The reproducible lossless point-cloud geometry codec (facade).

    encode                                       decode
    voxels = voxelize(points, depth)
    octree levels (codes, bits)                  codes = [root]
    per level, the coder the stream names:       per level, the coder the stream names:
    learned: per pass k                          learned: per pass k
      logit = MLP(features)                        logit = MLP(features)        (own floats)
      index = protect(logit)                       index = resolve(logit)       (exact)
      rANS encode bit with CDF[index]              bit = rANS decode with CDF[index]
    adaptive: per node, per child                adaptive: per node, per child
      f0 = counts[context] (integers)              f0 = counts[context]         (exact)
      rANS encode bit; update counts               bit = rANS decode; update counts
    neighbour: per pass k, per node              neighbour: per pass k, per node
      f0 = mix(counts[neighbourhood])              f0 = mix(counts[neighbourhood]) (exact)
      rANS encode bit; update counts, mixer        bit = rANS decode; update counts, mixer
                                                 voxels = leaves; checksums of bits, indices,
                                                 voxels

The encoder picks the coder of each level (coders="auto"): the learned model wins on the dense
surfaces it was trained on, the adaptive context coder (adaptive.py) on sparse, noisy or
unusual clouds, where the model is confidently wrong, and on levels where the model saves
less than ROW_PRICE bits per network row; from format 5 the neighbour coder (neighbour.py:
count models of each child's neighbourhood, no network) where it codes a level in fewer bits
than the model, or in enough fewer than the adaptive coder (scan-like clouds, LiDAR); and on a
surface where they save enough (MIX_ROWS_PER_POINT), every level learned under mixed
probabilities (mixing.py: machined parts, flat roofs and ground). The stream is never larger
than the adaptive coder's alone plus the few bytes that say which levels it codes.

Stream layout (container format 2 and later, additive): payload "occupancy" (the learned
levels' rANS stream, shape [their coded bits], with the protected tensor "occupancy_logit";
or the same bits under refined probabilities, "occupancy_refined", or from format 4 under
mixed ones, "occupancy_mixed", from format 7 "occupancy_mixed_v2" instead: the same under
mixing.py's version 2 mixer, from format 8 "occupancy_mixed_v3": under its version 3),
payload "occupancy_adaptive" (ceil(depth / 8) bytes of level flags, bit l set when level l is
adaptive, then that coder's rANS stream; shape [its coded bits]; its symbols checksum covers
the flags and the bits), from format 5 payload "occupancy_neighbour" (the same layout for the
neighbour coder's levels, its bits pass-major within each level; from format 6
"occupancy_neighbour_v2" instead: the same under neighbour.py's version 2 model), or
several of them, in that order, each level named by one. A stream with every level learned is
exactly the earlier layout, so streams written before the adaptive coder existed still
decode.

With mode `none` each side uses its own floats; a flipped index desynchronises rANS, and the
checksums (or the node-count guard) report it instead of returning a wrong cloud.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import container, entropy, numerics, options
from ..checksum import checksum
from ..errors import (
    ContainerError,
    InputError,
    ModelMismatchError,
    TooLargeError,
    VerificationError,
)
from ..safeguard import ErrorBound, Mode
from ..v1 import bitstream_pb2 as pb
from . import adaptive, coder, mixing, neighbour, nodecontext, octree, planes, refine, warmup
from .coder import TENSOR
from .context import N_PASSES
from .models import DEFAULT_MODEL, PointCloudModelInfo, weights_path
from .native import NativeGatherNetworks
from .rowslices import InOrder, Pending, RowSlices, default_threads, row_slices
from .weightsfile import read_weights

PAYLOAD = "occupancy"
# The same learned bits coded under refine.py's per-stream adapted probabilities, when smaller.
REFINED_PAYLOAD = "occupancy_refined"
# ... or under mixing.py's mix of those with a count model of each child's neighbourhood:
# tried with coders="smallest" from bitstream format 4 (its decode walks a count model and a
# mixer per bit: half to one network row's time, 40-65 % more decode time on a dense
# surface, for 1-9 % fewer bits, ~22 % on a LiDAR sweep), kept when smaller.
MIXED_PAYLOAD = "occupancy_mixed"
# ... from format 7 under mixing.py's version 2 mixer (a node model, the model's unrefined
# probability, an APM), another name
MIXED_V2_PAYLOAD = "occupancy_mixed_v2"
# ... from format 8 under its version 3 (version 2, then a count model of the child's place
# against its node's wider neighbourhood's plane: planes.py)
MIXED_V3_PAYLOAD = "occupancy_mixed_v3"
MIXED_PAYLOADS = {1: MIXED_PAYLOAD, 2: MIXED_V2_PAYLOAD, 3: MIXED_V3_PAYLOAD}  # by version
MIXED_VERSIONS = {name: version for version, name in MIXED_PAYLOADS.items()}
# Mixing is tried only while the levels the model evaluated so far (in level order, coded
# learned or not) hold at most this many bits a point: the encoder keeps up to ~23 bytes a
# learned bit for it at its peak, by count (contexts twice, rows, passes, probabilities, bits;
# `python bench/memory.py --sizes --clouds 1000000 --depth 16 --budget [--smallest]`: extra
# peak 496 -> 539 MB encode, 223 -> 291 decode, the services' estimates 1503 / 818). Dense
# surfaces have 3-9, and sparse clouds, with more, gain least from it (0.2 % on the 1/4
# sampling).
MIX_BITS_PER_POINT = 12
# "auto" builds the all-learned stream with mixed probabilities too, beside its time-priced
# choice, on a cloud of at most MIX_ROWS_PER_POINT occupancy bits a point (the dense surfaces
# and meshes: 2.9-5.5; the aerial tile at depth 10: 3.7; the statue, the LiDAR sweep and the
# sparse samplings: 9.5-25), and keeps it when it is at least 1 / MIX_GAIN smaller than the
# choice (3.1 %). Mixing about doubles the decode time of a dense surface (its walk is
# serial), which such clouds have room for under the speed goal of 2 s per million points;
# under version 2 it saved 4.8-8.7 % where the exact neighbourhood repeats (machined parts,
# flat roofs and ground) and 0.8-1.7 % on the organic meshes and synthetic surfaces; version
# 3's plane stage saves 3.8-5.1 % on those too (`python bench/stream_digests.py --held-out
# data/pc/test`, 0.8.0). Ratios of integers: exact.
MIX_ROWS_PER_POINT = 6
MIX_GAIN = 32
# ... and builds it only if mixing leads refinement by 1 / MIX_LEAD (4 %) on the levels before
# the last (_mixing_leads, under the stream's mixer version), the last level's contexts and
# walk only then: where it is not kept, the encoder's extra work is the contexts and a walk of
# about a quarter of the learned bits (organic meshes: encode 1.04-1.24 times as long, against
# 1.37-1.70 with every surface walked whole; bench/paired_trees.py --real data/pc/test); where
# it is, the lead's mixer walks the last level pass by pass as the model codes it
# (_MixingLead.walk_passes) and the mixed stream walks nothing again. Under version 3 the
# surfaces lead by 5.4-5.8 % (version 2: 0.6-4.4 %), the surface with 1 % outliers by 4.6 %,
# the small samples by 0.5-0.6 %: 1/25 mixes the outlier surface too (4.6 % smaller, 15.4 %
# under G-PCC instead of 11.3 %; encode 1.19-1.55 -> 1.43-1.76 and decode 0.56-0.65 ->
# 1.30-1.54 s per Mpt, fresh processes as bench/pointcloud.py --clouds times them: where the
# dense surface, mixed at 1/20 already, is), 1/20 took it not, 1/16 none of them.
MIX_LEAD = 25
LEARNED_PAYLOADS = (PAYLOAD, REFINED_PAYLOAD, *MIXED_PAYLOADS.values())
ADAPTIVE_PAYLOAD = "occupancy_adaptive"
# Levels coded by neighbour.py's count models of each child's neighbourhood (from format 5):
# level flags as the adaptive payload's, then its binary rANS stream; from format 6 under its
# version 2 model (a node model, weight sets, an APM), another name
NEIGHBOUR_PAYLOAD = "occupancy_neighbour"
NEIGHBOUR_V2_PAYLOAD = "occupancy_neighbour_v2"
NEIGHBOUR_PAYLOADS = {1: NEIGHBOUR_PAYLOAD, 2: NEIGHBOUR_V2_PAYLOAD}  # by model version
NEIGHBOUR_VERSIONS = {name: version for version, name in NEIGHBOUR_PAYLOADS.items()}


def neighbour_version(bitstream_format: int) -> int:
    """The neighbour coder's model in a stream of this format (5: version 1; 6 on: 2)."""
    return 2 if bitstream_format >= 6 else 1


def mixing_version(bitstream_format: int) -> int:
    """The mixer in a stream of this format (4-6: version 1; 7: 2; 8 on: 3)."""
    return 3 if bitstream_format >= 8 else 2 if bitstream_format >= 7 else 1

# "auto": the per-level choice with network rows priced (ROW_PRICE); "smallest": by bits alone
# (smaller streams, slower to decode on sparse clouds); "learned" / "adaptive" / "neighbour":
# one coder on every level (tests and benchmarks).
CODERS = ("auto", "smallest", "learned", "adaptive", "neighbour")
CHOOSING = ("auto", "smallest")  # the coders options that choose per level
# The encoder estimates the model's cost of a level of at least 4 * ESTIMATE_NODES nodes from
# ESTIMATE_NODES of them, and runs it on the whole level only if that estimate is within
# ESTIMATE_MARGIN of the adaptive coder's exact cost (an encoder-side choice: any rule keeps
# streams decodable and never larger than the adaptive coder's).
ESTIMATE_NODES = 1 << 12
ESTIMATE_MARGIN = (103, 100)  # 1.03 as a ratio of integers: an exact comparison
# No estimate after a level where the model saved more than this many times ROW_PRICE bits a
# row: its saving falls gradually from level to level (bench/pointcloud_levels.py: 0.33, 0.25,
# 0.13, 0.03 on the 1/4 sampling's last four), so the next level is nearly always learned and
# its estimate would be work thrown away. The choice itself stays exact.
CONFIDENT_SAVING = 3
# With rows priced ("auto"), the model is estimated from a quarter of the usual sample after a
# level the neighbour coder took where the model's cost (whole or estimated) was over
# MODEL_BEHIND times the neighbour coder's, while the neighbour coder keeps taking levels: on a
# scan-like cloud the gap holds from level to level (the LiDAR sweep's levels 6-11: 1.45, 1.60,
# 1.65, 1.54, 1.53, 1.26), and the model's runs there, whole on small levels and sampled on
# large ones, were a fifth of the encoder's time for none of its levels. A smaller sample still
# sees a gap closing (the 8,192-point ground rings at depth 11: 1.50, 1.05, 0.95 on the last
# three). A ratio of integers: exact.
MODEL_BEHIND = (5, 4)
BEHIND_ESTIMATE_NODES = ESTIMATE_NODES // 4
# After a level the model won confidently (CONFIDENT_SAVING), the neighbour coder is still
# priced on a surface's last small level before its large ones (a probe: a cold model of its
# own, _probe_cost; the level stays the model's), then tried on each large level after one
# where its cost came within NEIGHBOUR_CLOSE times the model's. On a machined part's flat faces
# it starts behind and wins the finest levels (fandisk_large at depth 10: 1.21 of the model's
# cost on the probe, level 6, then 0.97, 0.95, 0.89 on levels 7-9; 2.8 % off the stream). The
# organic held-out meshes and the turbine are over it on the probe (1.77-2.12; turbine 1.43):
# at 3/2 the turbine was 0.4 % smaller and its encode 1.4-1.5 times as long, and on the real
# scans, where the model is not confident, trying it after any close level made the statue's
# stream larger and both scans' encode up to twice as long (bench notes in the commit). A
# ratio of integers: exact.
NEIGHBOUR_CLOSE = (5, 4)
# ... and only on a level whose nodes have at least SURFACE_CHILDREN occupied children on
# average (a surface has about four; the sparse samplings' levels where the model is confident
# have 2-3.3, and there trying it added half to the encoder's time for nothing: the 1/20
# sampling's levels 6 and 7). A ratio of integers: exact.
SURFACE_CHILDREN = (7, 2)
# With rows priced ("auto"), the model is not run on a level whose nodes have fewer than
# SPARSE_CHILDREN occupied children on average, nor its neighbour table made unless another
# coder reads it. With about one child a node, where in the node it lies is the sampling's
# noise: on every such level of the benchmark clouds the model saved under ROW_PRICE (the
# sparse samplings' last levels at 1.02-1.11 children: 0.043 bits a row at most; the statue's
# at 1.01-1.04 and the aerial tile's at 1.01 at depth 12: 0.006 at most), and from 1.28
# children on 0.068 or more (bench/pointcloud_levels.py); the tests' quarter-sampled surface
# saves 0.147 at 1.18. Its estimate and the table were ~15 % of the 1/20 sampling's encode,
# for levels it never won. A ratio of integers: exact.
SPARSE_CHILDREN = (9, 8)
PROBE_POINTS_PER_NODE = 4  # the probe's tables: context_bits of 4 points a node (_probe_cost)
# The encoder prices the model's time beside its bits: each network row (a bit the model
# predicts; decoding runs the same rows) counts as ROW_PRICE bits when it picks a level's coder
# and the stream (J = bits + ROW_PRICE * rows). Dense surfaces save 0.2-0.6 bits a row and
# stay learned; the finest levels of sparse clouds save 0.0-0.05 for about half of all rows,
# and go adaptive for about half the time at a cost of ~3 % of their bits
# (bench/pointcloud_levels.py). A ratio of integers: exact.
ROW_PRICE = (1, 16)
# ... and each bit the neighbour coder codes as NEIGHBOUR_PRICE bits: its contexts and walk
# took about half a network row's time (version 1: ~100 ns a bit, to encode or to decode,
# against 125-190 for a row then; version 2: ~115 to encode, ~125 to decode, and a row
# ~140; the adaptive coder's, a few: bench/pointcloud_profile.py "lidar 64x2048", its steps'
# seconds over the neighbour-coded bits it prints, and --kernel). A level leaves the
# learned model for it only for fewer bits (so dense surfaces keep the model's compression),
# and leaves the adaptive coder for it when it saves more than this a bit. These are one
# thread's times: on two, the model's rows run in parallel and the walk does not, so it costs
# about a row there (README, "Release 0.6.1": the statue's finest level, priced to it by time,
# took longer); left so, as raising it would give LiDAR sweep levels to the adaptive coder.
NEIGHBOUR_PRICE = (1, 32)
# About what a payload's framing costs (its name, shape, CRC, checksum, flags and rANS final
# state: ~45 bytes), in code-length units
FRAMING_COST = (64 * 8) << entropy.COST_FRACTION
# Clouds of at most this many coded bits (8 a node; 32 k nodes) also try the neighbour coder on
# every level, beside the level-by-level choice (a second walk: a few ms at this size)
EVERY_NEIGHBOUR_BITS = 1 << 18
# The adaptive coder's probabilities of every level (2 bytes a decision) are kept through the
# choice on a cloud of at most this many decisions (8 MB): a larger cloud's encoder walks the
# model again to the levels a stream codes adaptively, if any. Kept, they held 33 MB through
# a 0.97 M-point sweep's peak for the few small levels the adaptive coder won; walked again,
# the 1/20 sampling (0.7 M decisions, its last two levels adaptive) encoded 1.14 times as
# slowly (bench/paired_trees.py --in-process).
KEEP_ADAPTIVE_BITS = 1 << 22
MAX_POINTS = 1 << 25  # voxels per cloud this codec accepts (TooLarge beyond: see encode)
# Coded occupancy bits a decoder accepts: a dense 2^25-point surface needs about 1e8.
MAX_CODED_BITS = 1 << 28


class _LeadWalk:
    """The mixer walked over these learned levels (in order: the first ones of a coding), its
    walk of the last of them perhaps still running on the pool, pass by pass
    (_MixingLead.walk_passes): walked() waits for it, once; cancel() drops it unread."""

    def __init__(self, levels: list[coder.LearnedLevel], model: mixing.Model,
                 f0: list[np.ndarray], passes: InOrder | None = None) -> None:
        self.levels, self.version = levels, model.version
        self._model, self._f0, self._passes = model, f0, passes

    def walked(self) -> mixing.Walked:
        if self._model is None:
            raise ValueError("a lead's walk is read once")
        f0 = self._f0 + (self._passes.results() if self._passes is not None else [])
        walked = mixing.Walked(self._model, np.concatenate(f0))
        self._model, self._f0, self._passes = None, [], None
        return walked

    def cancel(self) -> None:
        if self._passes is not None:
            self._passes.cancel()
        self._model, self._f0, self._passes = None, [], None


class _LevelCodings(NamedTuple):
    """What the encoder's walk over the levels found (PointCloudCodec._learned_levels)."""

    learned: list[coder.LearnedLevel | None]  # each level the model may win (None elsewhere)
    neighbour_f0: list[np.ndarray | None]  # P(0) of each level the neighbour coder takes
    # Each level's P(0) under a neighbour model walked over every level (a small cloud's
    # all-neighbour candidate), or None
    every_f0: list[np.ndarray | None] | None
    neighbour_saving: int  # what its levels saved (code-length units, time priced)
    # Mixing led refinement by 1 / MIX_LEAD before the last level (_mixing_leads), and every
    # level is learned with its mixing contexts: the all-learned mixed candidate is built
    mixing_leads: bool = False
    # and the lead's mixer walked over the levels before the last (and the last one, pass by
    # pass, where it led before the model ran there), which the mixed stream goes on from
    lead_walk: _LeadWalk | None = None


@dataclass
class DecodedPointCloud:
    voxels: np.ndarray  # (N, 3) int64, unique, sorted by (x, y, z)
    points: np.ndarray  # (N, 3) float64 world coordinates: origin + voxels * scale
    depth: int
    bit_exact: bool
    seconds: float


class PointCloudCodec:
    kind = "point_cloud"
    # Try refined probabilities for the learned levels (kept when smaller). Off: the model's
    # own probabilities always (tests of the per-level choice, benchmarks measuring the gain).
    refine = True

    def __init__(self, pt_path: Path, info: PointCloudModelInfo, threads: int | None = None):
        self.info = info
        state, table, blob = read_weights(str(pt_path))
        self._state, self._blob = state, blob  # a few hundred KB: kept for _torch_predict
        self.tables = coder.cdf_tables(table)
        self.weights_sha256 = bytes.fromhex(info.weights_sha256)
        self.profile = numerics.current_profile()
        self.networks = _networks(state, blob, self.profile)
        self.threads = default_threads() if threads is None else threads
        b = info.tensor_bound(TENSOR)
        self.bound = ErrorBound(b["kind"], float(b["value"]))
        self.decision = coder.occupancy_decision(self.bound)
        self.decisions = {TENSOR: self.decision}

    @property
    def threads(self) -> int:
        """Threads the network runs on (native path; results never depend on it)."""
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        self._threads = n
        if isinstance(self.networks, NativeGatherNetworks):
            self.networks.threads = n

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, weights_dir: str | Path | None = None,
             threads: int | None = None) -> PointCloudCodec:
        if weights_dir is None:
            pt_path, info = weights_path(name)
        else:
            pt_path, info = weights_path(name, Path(weights_dir))
        return cls(pt_path, info, threads)

    def warm_up(self) -> list[list[str]]:
        """Load every compiled kernel a request runs, and check a round trip of each coder
        (warmup.py; the payload names of each stream): the services call it before they
        report SERVING."""
        return warmup.warm_up(self)

    def _predict(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int,
                 depth: int) -> np.ndarray:
        return _pass_logits(self.networks, neighbours, bits, k, level, depth)

    def _start_predict(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int,
                       depth: int) -> Pending:
        """The logits of child k of every node of a level (coder.StartPredict), started."""
        inputs = self.networks.inputs(neighbours, bits, k, level, depth)
        return self.networks.start_logits(inputs, k, depth - 1 - level)

    # ----------------------------------------------------------------------------- encode

    def encode(self, points: np.ndarray, mode: Mode | str = Mode.SYNDROME,
               depth: int = octree.DEFAULT_DEPTH, coders: str = "auto",
               bitstream_format: int = container.FORMAT_VERSION) -> pb.Bitstream:
        """(data, mode, **options) as every codec (reprocodec.registry.Codec).

        Each octree level is coded by the learned model or by the adaptive context coder
        (adaptive.py). coders="auto" (the default) picks, per level, whichever the encoder
        finds cheaper, counting each network row at ROW_PRICE bits, and keeps the cheapest of
        that choice, all levels adaptive and all levels learned: the stream is never larger
        than the adaptive coder's stream plus the few bytes that signal it. From
        bitstream_format 5 both try the neighbour coder level by level (_learned_levels says
        where; _neighbour_saving when it takes a level).
        "smallest" makes the same choice by bits alone, and from bitstream_format 4 also tries
        mixed probabilities for the learned levels (MIXED_PAYLOAD); "auto" tries them on the
        all-learned stream of a cloud with few bits a point, kept for a gain of at least
        1 / MIX_GAIN (MIX_ROWS_PER_POINT). "learned", "adaptive" and
        "neighbour" force one coder on every level (tests and benchmarks). bitstream_format:
        the newest format the stream may need (container.at_version converts what it can;
        a mixed or neighbour payload it cannot)."""
        mode = options.parse_mode(mode)
        if coders not in CODERS:
            raise InputError(f"coders must be one of {', '.join(CODERS)}, got {coders!r}")
        if bitstream_format not in container.SUPPORTED_VERSIONS:
            raise InputError(f"bitstream_format must be one of "
                             f"{sorted(container.SUPPORTED_VERSIONS)}, got {bitstream_format!r}")
        if coders == "neighbour" and bitstream_format < 5:
            raise InputError("the neighbour coder needs bitstream format 5")
        price = (0, 1) if coders == "smallest" else ROW_PRICE
        mixing_format = self.refine and bitstream_format >= 4
        # the neighbour coder: tried when choosing, from format 5 (_learned_levels says where)
        neighbours = coders == "neighbour" or (coders in CHOOSING and bitstream_format >= 5)
        vox = octree.voxelize(points, depth)
        n = vox.voxels.shape[0]
        if n > MAX_POINTS:
            raise TooLargeError(f"{n} voxels exceed this codec's limit of {MAX_POINTS}; "
                                "split the cloud or use a smaller depth")
        msg = pb.Bitstream(
            magic=container.MAGIC, codec=pb.CODEC_KIND_POINT_CLOUD, model=self.info.name,
            weights_sha256=self.weights_sha256,
            point_cloud=container.point_cloud_header(depth, n, vox.origin, vox.scale),
            output_checksum=checksum(vox.voxels), encoder_profile=self.profile.name,
        )
        msg.format_version = container.required_version(msg)
        if n == 0:
            return msg
        codes, bits = octree.build_levels(vox.voxels, depth)
        del vox  # the levels say everything the encoder still needs: free the voxel copy
        rows = [level_bits.size for level_bits in bits]
        # Mixed probabilities: on every candidate when by bits alone; with rows priced, on the
        # all-learned stream of a cloud with few bits a point (MIX_ROWS_PER_POINT)
        mix_every = mixing_format and coders == "smallest"
        mix_all_learned = mixing_format and coders == "auto" and \
            sum(rows) <= MIX_ROWS_PER_POINT * n
        # The adaptive coder's pricing walks the levels on the pool (threads > 1) while the
        # loop below runs the model: the loop reads a level's cost when it reaches it. It
        # keeps the probabilities of a small cloud's levels (_adaptive_probabilities), and
        # of every cloud's where every level is coded adaptively.
        keep_all = coders == "adaptive" or sum(rows) <= KEEP_ADAPTIVE_BITS
        pricing = adaptive.LevelPricing(bits, self.threads, range(depth) if keep_all else ())
        version, mix_version = neighbour_version(bitstream_format), mixing_version(bitstream_format)
        try:
            coded = self._learned_levels(codes, bits, pricing, mode, coders, price,
                                         n if mix_every or mix_all_learned else 0,
                                         n if neighbours else 0, version,
                                         mix_lead=mix_all_learned, mix_version=mix_version)
            adaptive_bits, adaptive_cost = pricing.result()
            adaptive_f0 = _adaptive_probabilities(
                bits, pricing.probabilities() if keep_all else None, self.threads)
        finally:
            pricing.close()
        # (the lead's walk of the last level may still run on the pool: dropped unless read)
        try:
            learned = coded.learned
            del codes  # only the neighbour tables needed them
            all_adaptive = "A" * depth
            # (levels, the neighbour coder's probabilities, kept only if also no larger in bytes)
            candidates: list[tuple[str, list[np.ndarray | None], bool]]
            if coders in CHOOSING:
                # Ties go to the adaptive coder: exact integers, nothing to protect.
                learned_or_adaptive = _framed("".join(
                    "A" if lv is None or a <= lv.cost + _row_cost(r, price) else "L"
                    for a, lv, r in zip(adaptive_cost, learned, rows, strict=True)),
                    adaptive_cost, learned, rows, price)
                # The neighbour coder's levels were chosen level by level (its state follows them)
                choice = _framed("".join("N" if f0 is not None else c
                                         for c, f0 in zip(learned_or_adaptive, coded.neighbour_f0,
                                                          strict=True)),
                                 adaptive_cost, learned, rows, price)
                candidates = [(choice, coded.neighbour_f0, False), (all_adaptive, [], False)]
                if all(lv is not None for lv in learned):
                    candidates.append(("L" * depth, [], False))
                if coded.neighbour_saving < FRAMING_COST:
                    # Its levels saved less than a payload's framing, which the level-by-level
                    # choice does not see: the choice without them too (learned or adaptive there:
                    # format 4's choice, but where the neighbour coder kept the model from a level)
                    candidates.append((learned_or_adaptive, [], False))
                if coded.every_f0 is not None:
                    # It prices time, and would otherwise trade learned levels' bits for it
                    candidates.append(("N" * depth, coded.every_f0, True))
            else:
                candidates = [({"adaptive": "A", "learned": "L", "neighbour": "N"}[coders] * depth,
                               coded.neighbour_f0, False)]
            # The all-adaptive stream is built only when it may win.
            adaptive_floor = adaptive_stream_floor(msg.ByteSize(), sum(adaptive_cost), sum(rows))
            all_learned = "L" * depth
            mix_versions = _mixers(coders, mix_version)

            def stream(levels: str, f0: list[np.ndarray | None], mix: bool,
                       mixed_only: bool = False, lead_walk: _LeadWalk | None = None
                       ) -> pb.Bitstream:
                candidate = pb.Bitstream()
                candidate.CopyFrom(msg)
                self._add_payloads(candidate, levels, bits, learned, adaptive_bits, adaptive_f0, f0,
                                   NEIGHBOUR_PAYLOADS[version], mode, n if mix else 0,
                                   mixed_only, mix_versions, lead_walk)
                return candidate

            built: dict[str, pb.Bitstream] = {}  # each candidate, built once

            def choose(unbuilt_floor: int | None = None) -> pb.Bitstream | None:
                """The cheapest candidate, bytes and time priced (the first wins ties), each
                built once (`built`). unbuilt_floor: the all-learned one is left unbuilt, and
                this lower bound of its cost stands in for it where the all-adaptive one may
                be skipped (so where that is skipped, its bytes are at least the all-learned
                one's floor)."""
                best, best_cost, tried = None, 0, set()
                for levels, f0, fewer_bytes in candidates:
                    if levels in tried:
                        continue
                    tried.add(levels)
                    if unbuilt_floor is not None and levels == all_learned:
                        continue
                    bound = best_cost if best is not None else None
                    if unbuilt_floor is not None and all_learned in tried and \
                            (bound is None or unbuilt_floor < bound):
                        bound = unbuilt_floor
                    if levels == all_adaptive and bound is not None and adaptive_floor >= bound:
                        continue
                    if levels not in built:
                        built[levels] = stream(levels, f0, mix_every)
                    candidate = built[levels]
                    cost = (candidate.ByteSize() << (3 + entropy.COST_FRACTION)) + _time_cost(
                        levels, rows, price)
                    if best is None or (cost < best_cost and not (
                            fewer_bytes and candidate.ByteSize() > best.ByteSize())):
                        best, best_cost = candidate, cost
                return best

            if not coded.mixing_leads:
                best = choose()
            else:
                # Mixed alone (every level is learned): kept where it is smaller than the same
                # levels unmixed (a candidate) and smaller by 1 / MIX_GAIN than the choice.
                # Where it is that much smaller than a lower bound of the unmixed stream's
                # size, that stream, the largest candidate, is not built (the dense surface's
                # 55 of its 75 ms of candidates). The stream kept is the same: whichever
                # candidate the choice would have been, the mixed one is smaller by 1 /
                # MIX_GAIN than each one built, the unbuilt one's floor and, if skipped, the
                # all-adaptive one (choose); or else every one is built.
                learned_floor = _learned_stream_floor(msg.ByteSize(), learned, rows)
                # The others first, while the pool may still walk the mixer over the last
                # level's last passes (the lead's walk, which the mixed stream goes on from)
                choose(learned_floor + _time_cost(all_learned, rows, price))
                mixed = stream(all_learned, [], True, mixed_only=True, lead_walk=coded.lead_walk)
                size = mixed.ByteSize()

                def wins(other: int) -> bool:  # by 1 / MIX_GAIN over `other` bytes
                    return size * MIX_GAIN <= (MIX_GAIN - 1) * other

                if wins(learned_floor >> (3 + entropy.COST_FRACTION)) and \
                        all(wins(c.ByteSize()) for c in built.values()):
                    best = mixed
                else:
                    best = choose()
                    if size < built[all_learned].ByteSize() and wins(best.ByteSize()):
                        best = mixed
            best.format_version = container.required_version(best)
            return best
        finally:
            if coded.lead_walk is not None:
                coded.lead_walk.cancel()

    def _learned_levels(self, codes: list[np.ndarray], bits: list[np.ndarray],
                        adaptive_cost: Sequence[int], mode: Mode, coders: str,
                        price: tuple[int, int], mix_points: int = 0, neighbour_points: int = 0,
                        version: int = 2, mix_lead: bool = False, mix_version: int = 2
                        ) -> _LevelCodings:
        """The learned coding of each level the model may win and the neighbour coder's
        (_LevelCodings). Its own function so that the neighbour tables, the largest arrays of
        a level, are freed when it returns, before the candidate streams are built.
        mix_points (the cloud's voxels) > 0: each learned level also keeps its mixing contexts.
        neighbour_points (the same) > 0: the neighbour coder (its model `version`) is tried
        where the comment in the loop says, and a level is given to it here, level by level,
        as its state must follow the levels it codes. mix_lead (with mix_points): the model
        runs on every level, unestimated, for the all-learned mixed candidate, until the last
        level, which it and mixing's contexts reach only if mixing leads on the levels before
        (_mixing_leads, under mixer `mix_version`: most of a surface's bits are on its last
        level). It empties `codes` as it goes."""
        depth = len(codes)
        learned: list[coder.LearnedLevel | None] = [None] * depth
        neighbour_f0: list[np.ndarray | None] = [None] * depth
        tables = octree.LevelTables(self.threads)
        # Refined probabilities can make the model the cheaper coder of a level where its own
        # are not (a cloud unlike the training data): price both, walking refine's state over
        # the learned levels as if each were chosen.
        buckets = refine.initial_buckets(self.tables.cdfs[:, 1]) if self.refine else None
        model = neighbour.Model(neighbour_points, version) if neighbour_points else None
        # A small cloud also gets the all-neighbour candidate (its own model walks every
        # level): there the payloads' framing, which the level-by-level choice does not see,
        # is a large share of the stream
        every = None
        if model is not None and coders in CHOOSING and \
                sum(b.size for b in bits) <= EVERY_NEIGHBOUR_BITS:
            every = neighbour.Model(neighbour_points, version)
        # Its walks run on the pool, level after level, while this thread runs the model: a
        # small cloud's levels are each one slice of network rows, which leave the pool idle
        every_walks = InOrder(self.threads)
        every_f0: list[np.ndarray | None] = [None] * depth
        # Mixing's lead, its walks on the pool for a small cloud too (on a larger one they
        # would keep the pool's thread from the network rows and contexts of the levels
        # after: a dense surface's encode took 1.14 times as long), under the stream's mixer
        # (version 3: its plane features are made for every level with contexts anyway)
        lead = _MixingLead(self.tables.cdfs[:, 1], mix_points, mix_version,
                           self.threads, on_pool=every is not None and mix_lead)
        neighbour_saving = 0
        confident = False  # the level before saved over CONFIDENT_SAVING x ROW_PRICE a row
        close = False  # the neighbour coder within NEIGHBOUR_CLOSE of the model on it
        behind = False  # the model far behind the neighbour coder (MODEL_BEHIND)
        mix_bits = 0  # learned bits so far (mixing's memory bound)
        leads = False
        ahead: _LevelAhead | None = None  # the next level's inputs, being made on the pool
        try:
            for level in range(depth if coders != "adaptive" else 0):
                if level:  # the caller's codes of the levels walked are needed no more
                    codes[level - 1] = np.empty(0, np.int64)  # (4 MB at a 0.97 M sweep's peak)
                m = codes[level].size
                made = ahead.result(level) if ahead is not None else None
                ahead = None
                # Whether mixing leads is read after the model has run on the last level,
                # where its walks are on the pool (a small cloud's) and may still be running
                sample = BEHIND_ESTIMATE_NODES if behind else ESTIMATE_NODES
                read_lead = mix_lead and level == depth - 1
                lead_later = read_lead and every is not None and \
                    _lead_can_wait(bits[level], sample, confident)
                if read_lead and not lead_later:
                    leads, mix_lead, mix_points = self._read_lead(lead, learned, level,
                                                                  mix_points)
                # The level's neighbour table, made when a coder first reads it (none may:
                # SPARSE_CHILDREN)
                neighbours = _given(made.table) if made and made.table is not None else \
                    functools.cache(functools.partial(tables.table_of, codes[level], level,
                                                      bits[level - 1] if level else None))
                contexts, extras = None, None
                # The neighbour coder first (tentatively: undone below unless it takes the level),
                # so that the model is run on a large level only if it may beat it too. After a
                # level the model won by over CONFIDENT_SAVING x ROW_PRICE a row (dense surfaces:
                # priced by bits against the model there, it nearly never wins), only on a
                # surface's level (SURFACE_CHILDREN): the last small level before the large ones,
                # to probe, then a large one while it came within NEIGHBOUR_CLOSE of the model on
                # the level before (machined parts). Otherwise on every small level, and on a
                # large one once it has won a level (sparse samplings: it wins none of their
                # levels; scan-like clouds give it small levels first). Its contexts and walk take
                # ~100 ns a bit: tried on every level, they doubled the encoder's time on the
                # sparse samplings (version 1).
                small = m < 4 * ESTIMATE_NODES
                probe = False  # its cost here from a model of its own (_probe_cost), to set close
                if confident:
                    many, per = SURFACE_CHILDREN
                    surface = per * int(np.count_nonzero(bits[level])) >= many * m
                    tried = surface and close
                    probe = surface and not close and small and level + 1 < depth and \
                        codes[level + 1].size >= 4 * ESTIMATE_NODES
                else:
                    tried = small or any(f0 is not None for f0 in neighbour_f0)
                tried = model is not None and (coders == "neighbour" or tried)
                probe = probe and model is not None  # (confident: coders is auto or smallest)
                sparse = coders == "auto" and not mix_lead and _sparse_children(bits[level])
                if (tried or probe or every is not None) and version == 2:  # its node contexts
                    extras = nodecontext.LevelExtras.of(bits[level - 1] if level else None,
                                                        bits[level])
                if made:  # (made for the neighbour model's points: every's and mixing's too)
                    contexts = made.contexts
                every_walked = None  # its walk of this level (P(0)s, contexts), if made
                if every is not None:
                    # Its walk of the level on the pool while this thread runs the model there:
                    # with the contexts, unless this thread needs them too (below; where mixing
                    # may lead, from the walk)
                    if contexts is None and (tried or not lead_later and mix_points and
                                             mix_bits + bits[level].size
                                             <= MIX_BITS_PER_POINT * mix_points):
                        contexts = mixing.level_contexts(neighbours(), bits[level], every.points,
                                                          self.threads)
                    every_walked = every_walks.submit(functools.partial(
                        _walked, every, neighbours() if contexts is None else None, contexts,
                        bits[level], extras))
                bar = adaptive_cost[level]  # what the model must beat on a large level
                if tried:
                    if contexts is None:
                        contexts = mixing.level_contexts(neighbours(), bits[level], model.points,
                                                          self.threads)
                    # The walk below and its snapshot are one thread's work: the pool makes the
                    # next level's table and contexts meanwhile when the coder will be tried
                    # there too (it took a level already: scan-like clouds) and the level is
                    # large enough to be worth it. Not on the small levels it tries before it
                    # took one: there the pool's thread is the next pass's network's
                    # (coder.learned_level), and the sparse samplings' encodes took 1.06-1.17
                    # of the time (bench/paired_trees.py --in-process --threads 2).
                    if self.threads > 1 and level + 1 < depth and \
                            codes[level + 1].size >= AHEAD_NODES and \
                            (coders == "neighbour" or not confident and
                             any(f0 is not None for f0 in neighbour_f0)):
                        neighbours()  # (this level's table is made before the next one's)
                        ahead = _LevelAhead.start(tables, codes, bits, level + 1, model.points,
                                                  self.threads)
                    saved = model.snapshot(contexts, extras) if coders != "neighbour" else None
                    f0, cost = neighbour.walk_contexts(model, contexts, bits[level], extras)
                    if price[0]:  # (by bits alone, mixing may still make the model's levels win)
                        bar = min(bar, cost + _row_cost(m * N_PASSES, _neighbour_price(price)))
                model_cost = None  # the model's cost of the level, whole or estimated, if run
                may_win = coders != "neighbour" and not sparse
                if may_win and not mix_lead:
                    may_win, model_cost = self._model_may_win(
                        _sample_rows(made, neighbours, codes[level], level), bits[level], level,
                        depth, bar, coders, price, buckets, confident, sample)
                if may_win:
                    parent_bits = bits[level - 1] if level else None
                    # the all-neighbour walk's contexts serve mixing made for the same points
                    same_walk = every_walked if every_walked is not None and \
                        every.points == mix_points else None
                    # Where mixing leads already (read before the model ran on the last
                    # level), the lead's mixer walks the level pass by pass as the model codes
                    # it (_MixingLead.walk_passes): its contexts and features first
                    on_pass, features = None, None
                    if leads and level == depth - 1 and \
                            mix_bits + bits[level].size <= MIX_BITS_PER_POINT * mix_points:
                        contexts, features = self._mixing_inputs(
                            neighbours, bits[level], contexts, same_walk, mix_points,
                            mix_version)
                        on_pass = lead.walk_passes(parent_bits, bits[level], contexts, features)
                    learned[level] = coder.learned_level(
                        neighbours(), bits[level], level, depth, self._start_predict, self.tables,
                        mode, self.decision, buckets, on_pass)
                    mix_bits += bits[level].size
                    if lead_later:
                        leads, mix_lead, mix_points = self._read_lead(lead, learned, level,
                                                                      mix_points)
                    if mix_points and mix_bits <= MIX_BITS_PER_POINT * mix_points:
                        if on_pass is None:
                            contexts, features = self._mixing_inputs(
                                neighbours, bits[level], contexts, same_walk, mix_points,
                                mix_version)
                        learned[level].contexts, learned[level].features = contexts, features
                        if on_pass is not None:
                            lead.add_walked(learned[level])
                        elif mix_lead and level < depth - 1:
                            lead.add(parent_bits, bits[level], learned[level])
                    model_cost = learned[level].cost
                    saving = adaptive_cost[level] - learned[level].cost
                    confident = saving > CONFIDENT_SAVING * _row_cost(bits[level].size, ROW_PRICE)
                else:
                    confident = False
                took = False  # whether the neighbour coder takes the level
                if tried:
                    saving = _neighbour_saving(cost, adaptive_cost[level], learned[level],
                                               m * N_PASSES, price)
                    took = saved is None or saving > 0
                    if took:
                        neighbour_f0[level] = f0
                        neighbour_saving += saving
                    else:
                        model.restore(saved)  # the level goes to another coder
                    # (not kept into the next level, with whose arrays it would count: 27
                    # bytes a bit, the largest after the table)
                    saved, f0 = None, None
                over, under = MODEL_BEHIND
                behind = took and price[0] > 0 and model_cost is not None and \
                    model_cost * under > over * cost
                if probe:
                    cost = _probe_cost(neighbours(), bits[level], extras, version, self.threads)
                over, under = NEIGHBOUR_CLOSE
                close = (tried or probe) and model_cost is not None and \
                    cost * under <= over * model_cost
            if every is not None:
                every_f0 = [f0 for f0, _ in every_walks.results()]
        except BaseException:  # a level that failed leaves no work on the pool
            lead.cancel()
            if every is not None:
                every_walks.cancel()
            raise
        finally:
            if ahead is not None:
                ahead.cancel()
        return _LevelCodings(learned, neighbour_f0, every_f0 if every is not None else None,
                             neighbour_saving, leads, lead.walked() if leads else None)

    def _mixing_inputs(self, neighbours: Callable[[], np.ndarray], bits: np.ndarray,
                       contexts: mixing.LevelContexts | None,
                       every_walked: Future | None, points: int, version: int
                       ) -> tuple[mixing.LevelContexts, np.ndarray | None]:
        """A learned level's mixing contexts (pass-major as its indices: the ones made already,
        or those of the all-neighbour walk, every_walked, made for the same points) and, mixer
        version 3, its plane features."""
        if contexts is None and every_walked is not None:
            contexts = every_walked.result()[1]
        if contexts is None:
            contexts = mixing.level_contexts(neighbours(), bits, points, self.threads)
        features = planes.level_features(neighbours(), contexts.shapes, self.threads) \
            if version == 3 else None
        return contexts, features

    @staticmethod
    def _read_lead(lead: _MixingLead, learned: list[coder.LearnedLevel | None], level: int,
                   mix_points: int) -> tuple[bool, bool, int]:
        """(leads, mix_lead, mix_points) from here on, at the last level: whether mixing
        leads on the levels before; where it does not, the contexts kept so far are freed."""
        leads = lead.leads(level)
        if not leads:  # the contexts kept so far serve nothing now
            for lv in learned[:level]:
                if lv is not None:
                    lv.contexts, lv.features = None, None
        return leads, leads, mix_points if leads else 0

    def _model_may_win(self, sample_rows: Callable[[np.ndarray], np.ndarray],
                       bits: np.ndarray, level: int, depth: int, bar: int, coders: str,
                       price: tuple[int, int], buckets: np.ndarray | None, confident: bool,
                       sample: int) -> tuple[bool, int | None]:
        """Whether the encoder runs the model on a whole level, and the model's estimated
        cost if it made one: not when choosing, the level has at least 4 x `sample` nodes and
        the model's cost estimated from `sample` of them is not within ESTIMATE_MARGIN of `bar`, the
        cheapest other coder's (the adaptive coder's, or the neighbour coder's, time priced;
        the encoder's time is mostly the model's, and sparse clouds' large levels go to the
        others); always after a confident level. sample_rows(rows): those nodes' rows of the
        level's neighbour table."""
        m = bits.shape[0]
        if coders not in CHOOSING or not _estimated(m, sample, confident):
            return True, None
        rows = np.linspace(0, m - 1, sample).astype(np.int64)
        estimate = coder.estimate_level_cost(sample_rows(rows), bits, level, depth,
                                             self._predict, self.tables, self.decision, rows,
                                             buckets)
        over, under = ESTIMATE_MARGIN
        priced = estimate + _row_cost(bits.size, price)
        return priced * under <= over * bar, estimate

    def _add_payloads(self, msg, levels, bits, learned, adaptive_bits, adaptive_f0,
                      neighbour_f0, neighbour_name, mode, mix_points=0, mixed_only=False,
                      mix_versions=(2,), lead_walk=None):
        """The payloads and protected record of one per-level choice (levels[l]: L learned,
        A adaptive, N neighbour coder, its payload neighbour_name); mix_points > 0: the mixed
        coding too, when smaller, or (mixed_only) instead of the others, for a caller that
        has them already (every learned level must then have its contexts), under each mixer
        of mix_versions (MIXED_PAYLOADS; ties go to the first). lead_walk: the mixer walked
        over the first learned levels (_MixingLead), which that version's walk goes on from
        (once: the walk moves its model)."""
        depth = len(levels)
        # The adaptive and neighbour coders' rANS streams are coded on the pool meanwhile
        # (independent of the learned payload's; added after it, in the stream's order)
        flagged = [
            _start_flagged(ADAPTIVE_PAYLOAD, "A", levels, adaptive_bits, adaptive_f0,
                           self.threads),
            # the neighbour coder's bits pass-major within each level, as it codes them
            _start_flagged(neighbour_name, "N", levels,
                           [b.T.reshape(-1) if c == "N" else None
                            for b, c in zip(bits, levels, strict=True)],
                           lambda chosen: np.concatenate([neighbour_f0[lv] for lv in chosen]),
                           self.threads)]
        chosen = [lv for lv in range(depth) if levels[lv] == "L"]
        if chosen:
            levels_coded = [learned[lv] for lv in chosen]
            bits_coded = [bits[lv] for lv in chosen]
            coded = coder.pack_learned(levels_coded, bits_coded, self.tables, mode,
                                       static=not self.refine)
            total = coded.indices.size
            occupancy = np.concatenate([b.T.reshape(-1) for b in bits_coded])  # coding order
            name, data = PAYLOAD, coded.data
            mixable = mix_points and all(lv.contexts is not None for lv in levels_coded)
            if mixed_only and not mixable:
                raise ValueError("a mixed-only coding needs every learned level's contexts")
            if self.refine and not mixed_only:
                refined = refine.encode(occupancy, coded.indices + coder.GRID_K,
                                        self.tables.cdfs[:, 1])
                # The static stream is coded only when it might not be larger (ties go to
                # it, as before): the refined one usually wins by a few per cent.
                floor = entropy.stream_floor(sum(lv.static_cost for lv in levels_coded), total)
                if (len(refined) << (3 + entropy.COST_FRACTION)) < floor:
                    name, data = REFINED_PAYLOAD, refined
                else:
                    data = coder.static_stream(levels_coded, bits_coded, self.tables)
                    if len(refined) < len(data):
                        name, data = REFINED_PAYLOAD, refined
            if mixable:
                # What the lead walked already is left out of the walk's inputs: the levels
                # it walked, the first ones here (the same objects), under the one mixer
                # tried here
                walked = None
                if lead_walk is not None and len(lead_walk.levels) <= len(levels_coded) and \
                        all(a is b for a, b in zip(lead_walk.levels,
                                                   levels_coded[:len(lead_walk.levels)],
                                                   strict=True)) and \
                        mix_versions == (lead_walk.version,):
                    walked = lead_walk.walked()
                skip = len(lead_walk.levels) if walked is not None else 0
                # (none left where the lead walked the last level too)
                passes = _bit_passes(bits_coded[skip:])
                contexts = _joined([lv.contexts.packed() for lv in levels_coded[skip:]],
                                   np.int64)
                features = None  # version 3's, pass-major within each level as the bits
                if all(lv.features is not None for lv in levels_coded):
                    features = _joined([lv.features.T.reshape(-1) for lv in levels_coded[skip:]],
                                       planes.FEATURE_DTYPE)
                for version in mix_versions:
                    if version == 3 and features is None:
                        continue
                    mixed_name = MIXED_PAYLOADS[version]
                    mixed = mixing.encode(occupancy, coded.indices[total - passes.size:]
                                          + coder.GRID_K, contexts, passes,
                                          self.tables.cdfs[:, 1], mix_points,
                                          _node_extras(bits, chosen[skip:], version), version,
                                          features, walked)
                    if name in MIXED_VERSIONS:  # against the other mixer: names counted too
                        smaller = len(mixed_name) + len(mixed) < len(name) + len(data)
                    else:
                        smaller = mixed_only or len(mixed) < len(data)
                    if smaller:
                        name, data = mixed_name, mixed
            msg.payloads.append(container.make_payload(name, data, [total], occupancy))
            msg.protected.append(self.decision.record(coded.indices, coded.side_info, mode,
                                                      coded.risky_count, coded.candidate_count))
        for payload in flagged:
            if payload is not None:
                msg.payloads.append(payload())

    # ----------------------------------------------------------------------------- decode

    def decode(self, msg: pb.Bitstream, verify: bool = True) -> DecodedPointCloud:
        """Decode a container. verify=False (benchmarks only) returns whatever the decoder
        produced even if the checksums disagree, so real failures can be counted; a decode that
        loses sync (more nodes than the stream codes) still raises VerificationError.

        Unprotected (mode none) streams of a gather model written before the native path ran
        its float layers in torch on the CPU too; the two differ by up to ~6e-6, which can
        move an unprotected index. When such a stream fails to verify on the native path, it
        is decoded once more with the torch layers (verified as strictly)."""
        try:
            return self._decode(msg, verify, self._predict)
        except VerificationError:
            predict = self._torch_predict(msg) if verify else None
            if predict is None:
                raise
            return self._decode(msg, verify, predict)

    def _torch_predict(self, msg: pb.Bitstream) -> coder.Predict | None:
        """The torch path's predict for an unprotected static-payload stream decoded natively
        (what an earlier release's encoder ran on the CPU); None for any other stream."""
        if not isinstance(self.networks, NativeGatherNetworks) or \
                [p.name for p in msg.payloads][:1] != [PAYLOAD]:
            return None  # refined payloads and other paths are this release's own streams
        try:
            t = container.protected_tensor(msg, TENSOR)
            mode, _ = self.decision.check_record(t, [int(t.shape[0])])
            if mode is not Mode.NONE:
                return None
            import torch  # noqa: F401  (the light install has none: nothing to retry with)
        except (ContainerError, ImportError):
            return None
        return functools.partial(_pass_logits, _torch_networks(self._state, self._blob, "cpu"))

    def _decode(self, msg: pb.Bitstream, verify: bool, predict: coder.Predict
                ) -> DecodedPointCloud:
        start = time.perf_counter()
        container.validate(msg)  # framing, CRCs, ranges: before any byte reaches rANS
        depth, n = self._check_header(msg)
        if n == 0:
            if msg.payloads or msg.protected:
                raise ContainerError("an empty point cloud stream carries no payload")
            voxels = np.zeros((0, 3), np.int64)
            return self._result(msg, voxels, depth, True, start)
        names = [p.name for p in msg.payloads]
        learned_name = names[0] if names and names[0] in LEARNED_PAYLOADS else None
        levels = level_coders(msg)  # the payloads' order and level flags checked
        if len(msg.protected) != (learned_name is not None):
            raise ContainerError("a point cloud stream's learned occupancy payload comes with "
                                 "one protected tensor, and only it")
        coded_by = {}  # payload name -> (its data after the level flags, its coded bits)
        neighbour_name = next((name for name in names if name in NEIGHBOUR_VERSIONS), None)
        for name in (ADAPTIVE_PAYLOAD, neighbour_name):
            if name in names:
                payload = msg.payloads[names.index(name)]
                data = payload.data[(depth + 7) // 8:]  # after the flags level_coders read
                if len(payload.shape) != 1 or int(payload.shape[0]) % N_PASSES:
                    raise ContainerError(f"{name.removeprefix('occupancy_')} occupancy payload "
                                         "has a bad shape")
                if int(payload.shape[0]) > N_PASSES * n * depth:
                    raise ContainerError(f"{int(payload.shape[0])} coded bits is impossible "
                                         f"for {n} points")
                coded_by[name] = (data, int(payload.shape[0]))
        adaptive_data, adaptive_total = coded_by.get(ADAPTIVE_PAYLOAD, (b"", 0))
        neighbour_data, neighbour_total = coded_by.get(neighbour_name, (b"", 0))
        total, mode, bound, t = 0, Mode.NONE, self.bound, None
        data = b""
        if learned_name is not None:
            data = container.payload_bytes(msg, learned_name)
            t = container.protected_tensor(msg, TENSOR)
            total = int(t.shape[0])
            if len(t.shape) != 1 or list(msg.payloads[0].shape) != [total] or total % N_PASSES:
                raise ContainerError("occupancy payload and protected tensor shapes disagree")
            if total > N_PASSES * n * depth:
                raise ContainerError(f"{total} coded bits is impossible for {n} points")
            mode, bound = self.decision.check_record(t, [total])
        coded_bits = total + adaptive_total + neighbour_total
        if coded_bits > MAX_CODED_BITS:
            raise TooLargeError(f"{coded_bits} coded occupancy bits exceed this "
                                f"decoder's limit of {MAX_CODED_BITS}; decode on a larger "
                                "deployment")

        out = coder.decompress(
            data, t.side_info if t is not None else b"", total, depth, predict,
            self.tables, mode, bound, self.decision, verify=verify,
            adaptive_levels=tuple(c == "A" for c in levels),
            adaptive_data=adaptive_data, adaptive_total=adaptive_total, max_nodes=n,
            refined=learned_name == REFINED_PAYLOAD, threads=self.threads,
            mixed_points=n if learned_name in MIXED_VERSIONS else 0,
            mixed_version=MIXED_VERSIONS.get(learned_name, 2),
            neighbour_levels=tuple(c == "N" for c in levels), neighbour_data=neighbour_data,
            neighbour_total=neighbour_total,
            neighbour_version=NEIGHBOUR_VERSIONS.get(neighbour_name, 2),
        )
        if verify and t is not None:
            if checksum(out.occupancy) != msg.payloads[0].symbols_checksum:
                raise VerificationError(_failure("its occupancy bits fail their checksum"))
            if checksum(out.indices) != t.indices_checksum:
                raise VerificationError(_failure("its occupancy indices do not match the "
                                                 "encoder's"))
        for name, code, decoded in ((ADAPTIVE_PAYLOAD, "A", out.adaptive_occupancy),
                                    (neighbour_name, "N", out.neighbour_occupancy)):
            if verify and name in names and checksum(_flagged_symbols(
                    tuple(c == code for c in levels), decoded)) != \
                    msg.payloads[names.index(name)].symbols_checksum:
                raise VerificationError(_failure(f"its {name} bits fail their checksum"))
        leaves = out.leaves
        del out  # the bits and indices were only for the checksums: free them before the sort
        if verify and leaves.size != n:
            raise VerificationError(_failure(f"it decoded {leaves.size} points, not {n}"))
        coords = octree.morton_decode(leaves)
        del leaves
        voxels = octree.sort_voxels(coords)
        del coords
        bit_exact = checksum(voxels) == msg.output_checksum
        if verify and not bit_exact:
            raise VerificationError(_failure("the decoded voxel set fails its checksum"))
        return self._result(msg, voxels, depth, bit_exact, start)

    # ------------------------------------------------------------------------ calibration

    def calibration_sample(self, points: np.ndarray, depth: int = octree.DEFAULT_DEPTH
                           ) -> dict[str, np.ndarray]:
        """The voxels the encoder codes (exact integers): every logit is computed from them."""
        vox = octree.voxelize(points, depth)
        return {"voxels": vox.voxels, "depth": np.array([depth])}

    def network_floats(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The encoder's float logits for every coded bit, in coding order."""
        depth = int(sample["depth"][0])
        codes, bits = octree.build_levels(sample["voxels"], depth)
        out, tables = [], octree.LevelTables(self.threads)
        for level in range(depth):
            neighbours = tables.table_of(codes[level], level, bits[level - 1] if level else None)
            for k in range(N_PASSES):
                out.append(self._predict(neighbours, bits[level], k, level, depth))
        return {TENSOR: np.concatenate(out)}

    def _result(self, msg, voxels, depth, bit_exact, start) -> DecodedPointCloud:
        origin, scale = container.placement(msg.point_cloud)
        # voxels * scale + origin, the sum in place (a + b == b + a exactly: the same floats
        # as origin + voxels * scale, without a second (N, 3) float64 array)
        points = voxels * float(scale)
        points += np.asarray(origin, np.float64)
        return DecodedPointCloud(voxels, points, depth, bit_exact, time.perf_counter() - start)

    def _check_header(self, msg: pb.Bitstream) -> tuple[int, int]:
        if msg.codec != pb.CODEC_KIND_POINT_CLOUD:
            raise ContainerError("not a point cloud bitstream")
        if bytes(msg.weights_sha256) != self.weights_sha256:
            raise ModelMismatchError(
                f"stream was encoded with model {msg.model!r} weights "
                f"{bytes(msg.weights_sha256).hex()[:12]}.., this decoder has {self.info.name!r} "
                f"weights {self.weights_sha256.hex()[:12]}..: decode with the encoder's model"
            )
        depth = int(msg.point_cloud.depth)
        try:
            octree.check_depth(depth)
        except InputError as exc:
            raise ContainerError(f"malformed bitstream: {exc}") from exc
        n = int(msg.point_cloud.num_points)
        if n > MAX_POINTS or n > 8**depth:
            raise ContainerError(f"{n} points cannot be in a depth-{depth} octree here")
        return depth, n


def level_coders(msg: pb.Bitstream) -> str:
    """The coder of each octree level of a point cloud stream, root first: L learned, A
    adaptive, N neighbour coder (`reprocodec inspect`'s level_coders). ContainerError unless
    the payloads are a learned one, an adaptive one, a neighbour one, or several of them in
    that order, whose level flags name each level exactly once."""
    depth = int(msg.point_cloud.depth)
    names = [p.name for p in msg.payloads]
    learned_name = names[0] if names and names[0] in LEARNED_PAYLOADS else None
    neighbour_name = names[-1] if names and names[-1] in NEIGHBOUR_VERSIONS else None
    order = [name for name in (learned_name, ADAPTIVE_PAYLOAD, neighbour_name) if name in names]
    if not names or names != order:
        raise ContainerError("a point cloud stream has an occupancy payload (static, refined "
                             "or mixed), an adaptive occupancy payload, a neighbour occupancy "
                             "payload (of one version), or several of them in that order")
    levels = ["L"] * depth
    for name, code in ((ADAPTIVE_PAYLOAD, "A"), (neighbour_name, "N")):
        if name in names:
            flags, _ = adaptive.read_level_flags(msg.payloads[names.index(name)].data, depth,
                                                 name.removeprefix("occupancy_"))
            for lv in range(depth):
                if flags[lv]:
                    if levels[lv] != "L":
                        raise ContainerError("two occupancy payloads code one octree level")
                    levels[lv] = code
    if ("L" in levels) != (learned_name is not None):
        raise ContainerError("the occupancy payloads' levels and the learned payload disagree")
    return "".join(levels)


def _bit_passes(bits: list[np.ndarray]) -> np.ndarray:
    """The pass (uint8) of each bit of these levels' (M, 8) bits in coding order (pass-major
    within each level), as mixing walks them."""
    return _joined([np.repeat(np.arange(N_PASSES, dtype=np.uint8), b.shape[0]) for b in bits],
                   np.uint8)


def _joined(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """The arrays end to end (none: an empty one of dtype)."""
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def _row_cost(rows: int, price: tuple[int, int]) -> int:
    """What `rows` network rows count as in the encoder's choice at `price` (bits per row, a
    ratio of integers), in code-length units."""
    bits, per = price
    return (rows * bits << entropy.COST_FRACTION) // per


def _neighbour_price(price: tuple[int, int]) -> tuple[int, int]:
    """The neighbour coder's price a bit beside the model's `price` a row (none by bits)."""
    return NEIGHBOUR_PRICE if price[0] else price


def _framed(levels: str, adaptive_cost: list[int], learned: list[coder.LearnedLevel | None],
            rows: list[int], price: tuple[int, int]) -> str:
    """A level-by-level choice with its adaptive levels learned instead when together they
    save less than the adaptive payload's framing (FRAMING_COST), which the choice level by
    level does not see: mostly the root's 8 bits, whose payload cost ~50 bytes more than the
    model takes for them (the statue scan, the dense surface: the all-learned candidate won
    by those bytes, built beside the choice). FRAMING_COST (64 bytes) is above the ~45-50 a
    payload's framing takes, so adaptive levels saving between the two go learned too and
    may cost those few bytes; the choice without the rule is no longer built beside it."""
    chosen = [lv for lv, c in enumerate(levels) if c == "A"]
    if not chosen or any(learned[lv] is None for lv in chosen):
        return levels
    saving = sum(learned[lv].cost + _row_cost(rows[lv], price) - adaptive_cost[lv]
                 for lv in chosen)
    return levels.replace("A", "L") if saving < FRAMING_COST else levels


def _mixers(coders: str, version: int) -> tuple[int, ...]:
    """The mixer versions the encoder tries, in order, each kept only where smaller than the
    ones before (names counted), when the stream's format has mixer `version`: by bits alone
    the earlier ones too, so that a format-7 stream is never larger than format 6's (on a
    small cloud the two can code the same number of rANS words, and version 2's payload
    name is 3 bytes longer: the camel sample), and version 3 after version 2, so that a
    stream needs format 8 only where it gains by it (on the elephant sample the two code the
    same words)."""
    if coders != "smallest":
        return (version,)
    return {1: (1,), 2: (2, 1), 3: (2, 3, 1)}[version]


def _node_extras(bits: list[np.ndarray], levels, version: int) -> np.ndarray | None:
    """The mixer's extras of these levels' bits in coding order (version 2's node contexts,
    nodecontext.py; version 1 reads none)."""
    if version == 1:
        return None
    return _joined([nodecontext.level_extras(
        nodecontext.node_slots(bits[level - 1] if level else None), bits[level])
        for level in levels], np.int32)


def _neighbour_saving(cost: int, adaptive_cost: int, learned: coder.LearnedLevel | None,
                      rows: int, price: tuple[int, int]) -> int:
    """What giving a level to the neighbour coder (code length `cost`, `rows` bits) saves: it
    takes the level where this is positive. Where the learned model would win the level, the
    bits it saves (it leaves the model only for fewer bits, and is faster too); elsewhere
    what it saves against the adaptive coder, its time priced. Ties stay with the other
    coder."""
    if learned is not None and learned.cost + _row_cost(rows, price) < adaptive_cost:
        return learned.cost - cost
    return adaptive_cost - cost - _row_cost(rows, _neighbour_price(price))


# The fewest nodes of a level whose table and contexts the encoder makes ahead on the pool
AHEAD_NODES = 1 << 12


class _LevelAhead:
    """A level's neighbour table and the neighbour coder's contexts, made while the encoder
    walks the level before (the walk and its snapshot are one thread's work): in slices of
    the parents, each slice's table rows then their contexts, which the pool's threads start
    on at once and the loop's thread finishes in result(). The same integers as the loop
    makes (each row depends on the level's codes and bits alone), into arrays made here, on
    the caller's thread. start() gives None where the table would not be made from the one
    before (then the loop makes both)."""

    def __init__(self, tables: octree.LevelTables, level: int,
                 table_rows: octree.ChildTableRows, bits: np.ndarray, points: int,
                 threads: int) -> None:
        self.level, self._tables, self.table = level, tables, table_rows.table
        context_rows = mixing.LevelContextRows(table_rows.table, bits, points)
        self.contexts = context_rows.contexts
        first = table_rows.first
        if self.table is not None:
            def work(start: int, stop: int) -> None:
                table_rows.of_parents(start, stop)
                context_rows.of_nodes(int(first[start]), int(first[stop]))
        else:  # each slice's table rows in a scratch array, one for each thread at work
            slices = row_slices(table_rows.parents, threads)  # RowSlices' slices
            most = max(int(first[b] - first[a]) for a, b in slices)
            scratch: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
            for _ in range(min(threads, len(slices))):
                scratch.put(np.empty((most, 27), dtype=np.int32))

            def work(start: int, stop: int) -> None:
                rows = scratch.get_nowait()  # (RowSlices runs at most that many at once)
                try:
                    table_rows.of_parents(start, stop, rows)
                    context_rows.of_nodes(int(first[start]), int(first[stop]), rows)
                finally:
                    scratch.put(rows)

        self._job: RowSlices | None = RowSlices(work, table_rows.parents, threads)

    @classmethod
    def start(cls, tables: octree.LevelTables, codes: list[np.ndarray],
              bits: list[np.ndarray], level: int, points: int, threads: int
              ) -> _LevelAhead | None:
        if tables.level != level - 1 or tables.table is None:
            return None
        # The last level's table feeds its contexts and nothing after: made slice by slice
        # and dropped (the loop remakes it from the level before's if the model runs there,
        # which a scan's sparse last level seldom needs). On a 1.86 M-point sweep it was the
        # largest array of the encode, 164 MB.
        whole = level + 1 < len(codes)
        table_rows = octree.ChildTableRows.of(tables.table, bits[level - 1], codes[level],
                                              whole)
        if table_rows is None:
            return None
        return cls(tables, level, table_rows, bits[level], points, threads)

    def result(self, level: int) -> _LevelAhead | None:
        """Itself, finished (the caller's thread takes the slices left), when made for
        `level`; else None, its work stopped."""
        if level != self.level:
            self.cancel()
            return None
        if self._job is not None:
            job, self._job = self._job, None
            job.finish()
            if self.table is not None:  # the next level's table is made from it
                self._tables.keep(level, self.table)
        return self

    def cancel(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            job.cancel()


def _sample_rows(made: _LevelAhead | None, neighbours: Callable[[], np.ndarray],
                 codes: np.ndarray, level: int) -> Callable[[np.ndarray], np.ndarray]:
    """How the model's estimate reads its sample's rows of a level's table: from the table
    (`neighbours`, made when first asked for), or, for a last level made ahead (no table),
    searched for alone rather than the whole table made for them. (Not kept in a variable
    of the loop: it would hold the level's table into the next level's walk.)"""
    if made is not None and made.table is None:
        return functools.partial(octree.neighbour_table, codes, level)
    return lambda rows: neighbours()[rows]


def _given(value: np.ndarray) -> Callable[[], np.ndarray]:
    """A function returning `value` (a level's table made ahead, where the loop makes one)."""
    return lambda: value


def _sparse_children(bits: np.ndarray) -> bool:
    """Whether a level's nodes have fewer than SPARSE_CHILDREN occupied children on average."""
    few, per = SPARSE_CHILDREN
    return per * int(np.count_nonzero(bits)) < few * bits.shape[0]


def _estimated(nodes: int, sample: int, confident: bool) -> bool:
    """Whether _model_may_win estimates the model on a level of `nodes` (when choosing)."""
    return nodes >= 4 * sample and not confident


def _lead_can_wait(bits: np.ndarray, sample: int, confident: bool) -> bool:
    """Whether nothing before the model has run on the last level, bits, depends on whether
    mixing leads (where it would be read first): the model runs on it whether it leads or not
    when it is neither sparse nor estimated (the same rules as the loop's and
    _model_may_win's)."""
    return not _estimated(bits.shape[0], sample, confident) and not _sparse_children(bits)


class _MixingLead:
    """Whether mixed probabilities code the levels before the last (a quarter of a surface's
    bits) at least 1 / MIX_LEAD shorter than refined ones: the gain holds or grows until the
    last level, where it halves (cumulative code lengths, levels in order: a machined part's,
    the turbine's and the aerial tile's 9.9-19.8 % before the last level, 4.9-9.1 % with it;
    the organic meshes' and synthetic surfaces' 0.6-4.4, then 0.6-1.7). Ideal code lengths,
    exact integers. The mixer (version `version`) and refine walk each level (add: the next
    one, learned, with its contexts): on the pool (on_pool) as soon as the model has coded it,
    while the encoder's thread goes on with the next level, or else all in leads(levels), on
    the caller's thread. Once it leads, walk_passes walks the last level too, pass by pass as
    the model codes it, and walked() hands the whole walk to the mixed stream. A walk in
    pieces, in order, gives the integers of one walk over all of them."""

    def __init__(self, f0_table: np.ndarray, points: int, version: int, threads: int,
                 on_pool: bool) -> None:
        self._f0_table, self._points, self._version = f0_table, points, version
        # (made here for the pool's walks: the pool's threads allocate nothing that stays)
        self._model = mixing.Model(f0_table, points, version) if on_pool else None
        self._buckets = refine.initial_buckets(f0_table)
        self._walks = InOrder(threads if on_pool else 1)
        self._on_pool = on_pool
        self._later: list[Callable[[], tuple[int, int, np.ndarray]]] = []  # leads() makes
        self._f0: list[np.ndarray] = []  # each level's mixed P(0)s, once walked
        self._added: list[coder.LearnedLevel] = []
        self._levels = 0
        self._threads = threads
        self._passes: InOrder | None = None  # the last level's walk (walk_passes)

    def add(self, parent_bits: np.ndarray | None, bits: np.ndarray,
            level: coder.LearnedLevel) -> None:
        """The next level (in order), learned, with its mixing contexts; parent_bits: the
        level before's bits (None at the root)."""
        self._levels += 1
        self._added.append(level)
        walk = functools.partial(self._walk, parent_bits, bits, level.indices, level.contexts,
                                 level.features)
        if self._on_pool:
            self._walks.submit(walk)
        else:
            self._later.append(walk)

    def _walk(self, parent_bits, bits, indices, contexts, features
              ) -> tuple[int, int, np.ndarray]:
        if self._model is None:
            self._model = mixing.Model(self._f0_table, self._points, self._version)
        occupancy = bits.T.reshape(-1)  # coding order
        _, refined = refine.code_lengths(occupancy, indices, self._buckets, self._f0_table)
        extras = _node_extras([parent_bits, bits], [1], self._version)
        f0 = mixing.walk(self._model, occupancy, indices + coder.GRID_K, contexts.packed(),
                         _bit_passes([bits]), extras,
                         None if features is None else features.T.reshape(-1))
        return adaptive.code_length(occupancy, f0), refined, f0

    def leads(self, levels: int) -> bool:
        """False unless the `levels` levels before were each added. Where mixing leads, the
        mixer's walk over them is kept for the mixed stream (walked())."""
        lengths = self.code_lengths(levels)
        leads = lengths is not None and lengths[0] * MIX_LEAD <= (MIX_LEAD - 1) * lengths[1]
        if not leads:  # its tables (up to ~30 MB) are not kept into the last level
            self._model, self._f0 = None, []
        return leads

    def code_lengths(self, levels: int) -> tuple[int, int] | None:
        """The levels' (mixed, refined) code lengths, or None unless the `levels` levels
        before were each added."""
        if levels == 0 or self._levels < levels:
            return None
        later, self._later = self._later, []  # (holding no level's contexts after)
        for walk in later:
            self._walks.submit(walk)  # (one thread: at once)
        mixed, refined, self._f0 = (list(c) for c in zip(*self._walks.results(), strict=True))
        return sum(mixed), sum(refined)

    def walk_passes(self, parent_bits: np.ndarray | None, bits: np.ndarray,
                    contexts: mixing.LevelContexts, features: np.ndarray | None
                    ) -> Callable[[int, np.ndarray], None]:
        """After leads() said it leads, on the last level (bits; parent_bits: the level
        before's), its contexts and plane features made before the model runs there: the
        on_pass of coder.learned_level, which walks the mixer over each pass as the model
        makes its indices, on the pool (InOrder: one pass after another) while this thread
        goes on with the network's next pass. The mixed stream then walks nothing: the last
        level is most of a surface's walk (the dense surface's: ~0.15 of a 0.67 s encode),
        which ran alone after the model, the pool's thread idle. Pieces in order: the P(0)s
        of one walk. add_walked(level) once the model is through."""
        model = self._model
        if model is None:
            raise ValueError("walk_passes goes on from a lead (leads() said so)")  # the caller's
        m = bits.shape[0]
        packed = contexts.packed()
        extras = _node_extras([parent_bits, bits], [1], self._version)
        plane = None if features is None else features.T.reshape(-1)
        walks = self._passes = InOrder(self._threads)

        def on_pass(k: int, indices: np.ndarray) -> None:
            at = slice(k * m, (k + 1) * m)
            walks.submit(functools.partial(
                mixing.walk, model, bits[:, k], indices + coder.GRID_K, packed[at],
                np.full(m, k, dtype=np.uint8), None if extras is None else extras[at],
                None if plane is None else plane[at]))

        return on_pass

    def add_walked(self, level: coder.LearnedLevel) -> None:
        """The level walk_passes walked, once the model has coded it (and its contexts and
        features are the level's)."""
        self._levels += 1
        self._added.append(level)

    def walked(self) -> _LeadWalk | None:
        """Once, after leads() said it leads: the mixer walked over the levels added (0 ..
        the last but one, in order, and the last one where walk_passes walked it) and their
        P(0)s; the mixed stream's walk goes on from there instead of walking them again."""
        walked_levels = len(self._f0) + (self._passes is not None)
        if self._model is None or walked_levels != len(self._added):
            return None
        walked = _LeadWalk(self._added, self._model, self._f0, self._passes)
        self._model, self._f0, self._added, self._passes = None, [], [], None
        return walked

    def cancel(self) -> None:
        self._walks.cancel()
        if self._passes is not None:
            self._passes.cancel()


def _walked(model: neighbour.Model, neighbours: np.ndarray | None,
            contexts: mixing.LevelContexts | None, bits: np.ndarray,
            extras: nodecontext.LevelExtras | None) -> tuple[np.ndarray, mixing.LevelContexts]:
    """The level's P(0) under `model` walked on, and its contexts (made from the level's
    neighbour table unless given)."""
    if contexts is None:
        contexts = mixing.level_contexts(neighbours, bits, model.points)
    return neighbour.walk_contexts(model, contexts, bits, extras)[0], contexts


def _probe_cost(neighbours: np.ndarray, bits: np.ndarray,
                extras: nodecontext.LevelExtras | None, version: int, threads: int) -> int:
    """The neighbour coder's code length of a level from a fresh model of its own, its tables
    sized for the level (PROBE_POINTS_PER_NODE points a node) rather than for the cloud: what
    the encoder's cold model would spend there (fandisk_large's probe: 1.213 of the learned
    model's cost against 1.208; organic meshes 1-3 % higher, 1.66-2.18), without a snapshot
    and without the first touches of the cloud-sized tables' pages (a 373 k-point surface's
    probe: ~60 ms of a 0.7 s encode that way)."""
    model = neighbour.Model(PROBE_POINTS_PER_NODE * bits.shape[0], version)
    contexts = mixing.level_contexts(neighbours, bits, model.points, threads)
    return neighbour.walk_contexts(model, contexts, bits, extras)[1]


def _time_cost(levels: str, rows: list[int], price: tuple[int, int]) -> int:
    """What a choice's network rows (L levels) and neighbour-coded bits (N) count as."""
    learned = sum(r for r, c in zip(rows, levels, strict=True) if c == "L")
    coded = sum(r for r, c in zip(rows, levels, strict=True) if c == "N")
    return _row_cost(learned, price) + _row_cost(coded, _neighbour_price(price))


def _adaptive_costs(bits: list[np.ndarray]) -> list[int]:
    """The adaptive coder's code length of each level's decisions."""
    return adaptive.LevelPricing(bits).result()[1]


def adaptive_stream_floor(header_bytes: int, code_length: int, decisions: int) -> int:
    """A lower bound of an all-adaptive stream's size, in code-length units, from its header's
    size and its decisions' summed adaptive.code_length: the header and the rANS payload's
    entropy.stream_floor (the adaptive coder writes entropy's Rans64 words)."""
    return (header_bytes << (3 + entropy.COST_FRACTION)) + entropy.stream_floor(code_length,
                                                                              decisions)


def _learned_stream_floor(header_bytes: int, learned: list[coder.LearnedLevel | None],
                         rows: list[int]) -> int:
    """A lower bound of the all-learned refined candidate's size, in code-length units: its
    header and payload as adaptive_stream_floor bounds them (the refined and the static
    payloads are entropy's Rans64 words too), then its side information. From each level's
    LearnedLevel.code_length (the cheaper of the static and the refined probabilities there,
    whose sum is at most either payload's; the refined ones as the stream walks them, every
    level learned) and the rest of its cost, the bits its passes' side information packs to
    (coder._SIDE_BITS, exact)."""
    code_length = sum(lv.code_length for lv in learned)
    side = sum(lv.cost for lv in learned) - code_length
    return adaptive_stream_floor(header_bytes, code_length, sum(rows)) + side


def _pass_logits(networks, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int,
                 depth: int) -> np.ndarray:
    """float64 logits of child k of every node of a level (coder.Predict, given networks)."""
    inputs = networks.inputs(neighbours, bits, k, level, depth)
    return networks.logits_of(inputs, k, depth - 1 - level)


def _networks(state: dict[str, np.ndarray], blob: dict, profile: numerics.Profile):
    """The network of a weights file under a profile. Gather models that fit the native kernel
    (two hidden layers of at most 64 and 32 units, as octree-ctx-v2's) run native.py on the CPU
    profiles (no torch); the GPU profiles and the GPU-emulating ones run torch (its float layers
    are what those devices change), as do v1 models (float first layer) and wider ones. Both
    compute the same function within the calibrated bound."""
    gather = blob.get("first_layer", "float") == "gather"
    cpu = not profile.is_cuda and not profile.emulate
    if gather and cpu and NativeGatherNetworks.fits(blob["hidden"]):
        return NativeGatherNetworks(state, int(blob["first_layer_bits"]))
    return _torch_networks(state, blob, profile.device)


def _torch_networks(state: dict[str, np.ndarray], blob: dict, device: str):
    """The torch form of a weights file's network on `device`."""
    # float32 logits: an MLP per coded bit, float64 would double the coding time; the
    # calibrated bound covers float32 differences (cuda pins TF32 off for it).
    import torch

    from .networks import GatherNetworks, OccupancyMLP, PassNetworks

    model = OccupancyMLP(tuple(blob["hidden"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    if blob.get("first_layer", "float") == "gather":
        return GatherNetworks(model, torch.float32, device, int(blob["first_layer_bits"]))
    return PassNetworks(model, torch.float32, device)


def _failure(detail: str) -> str:
    return (f"point cloud verification failed: {detail}. The decoder's numerics differ from the "
            "encoder's beyond the stream's error bound (or the stream was not protected); "
            "decode under the encoder's profile or re-encode with --safeguard syndrome")


def _adaptive_probabilities(bits: list[np.ndarray], kept: np.ndarray | None, threads: int
                            ) -> Callable[[list[int]], np.ndarray | Callable[[], np.ndarray]]:
    """The adaptive payload's probabilities(chosen) (_start_flagged): slices of every level's
    that the pricing kept (`kept`, a cloud of at most KEEP_ADAPTIVE_BITS decisions), else a
    function that gives them from the model walked again on the pool, keeping the chosen
    levels', while the encoder's thread builds the learned payload."""
    if kept is not None:
        ends = np.cumsum([0] + [b.size for b in bits])
        return lambda chosen: np.concatenate([kept[ends[lv]:ends[lv + 1]] for lv in chosen])
    return lambda chosen: adaptive.LevelPricing(bits[:chosen[-1] + 1], threads,
                                                chosen).probabilities


def _start_flagged(name: str, code: str, levels: str, level_bits: list,
                   probabilities: Callable[[list[int]],
                                           np.ndarray | Callable[[], np.ndarray]],
                   threads: int) -> Callable[[], pb.Payload] | None:
    """The payload of the levels `levels` gives to a binary rANS coder (`code`: A adaptive, N
    neighbour coder), None if none: its level flags, then the rANS stream of those levels'
    bits (level_bits[l], coding order) under their probabilities (probabilities(chosen):
    the chosen levels', concatenated, or a function that gives them: adaptive.start_encode),
    coded on the pool (threads > 1) until the function returned is called."""
    chosen = [lv for lv, c in enumerate(levels) if c == code]
    if not chosen:
        return None
    flags = tuple(c == code for c in levels)
    coded = np.concatenate([level_bits[lv] for lv in chosen])
    data = adaptive.start_encode(coded, probabilities(chosen), threads)
    return lambda: container.make_payload(name, adaptive.level_flags(flags) + data(),
                                          [coded.size], _flagged_symbols(flags, coded))


def _flagged_symbols(levels: tuple[bool, ...], decisions: np.ndarray) -> np.ndarray:
    """What an adaptive or neighbour payload's symbols checksum covers: its level flags, then
    its bits."""
    return np.concatenate([np.asarray(levels, dtype=np.uint8),
                           np.asarray(decisions, dtype=np.uint8)])
