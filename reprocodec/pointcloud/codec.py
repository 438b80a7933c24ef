"""The reproducible lossless point-cloud geometry codec (facade).

    encode                                       decode
    voxels = voxelize(points, depth)
    octree levels (codes, bits)                  codes = [root]
    per level, per pass k:                       per level, per pass k:
      logit = MLP(features)                        logit = MLP(features)        (own floats)
      index = protect(logit)                       index = resolve(logit)       (exact)
      rANS encode bit with CDF[index]              bit = rANS decode with CDF[index]
                                                 voxels = leaves; checksums of indices, voxels

With mode `none` each side uses its own floats; a flipped index desynchronises rANS, and the
checksums (or the node-count guard) report it instead of returning a wrong cloud.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import container, numerics, options
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
from . import coder, octree
from .coder import TENSOR
from .context import N_PASSES, pass_features
from .models import DEFAULT_MODEL, PointCloudModelInfo, weights_path
from .networks import PassNetworks, load_weights

PAYLOAD = "occupancy"
MAX_POINTS = 1 << 25  # voxels per cloud this codec accepts (TooLarge beyond: see encode)
# Coded occupancy bits a decoder accepts: a dense 2^25-point surface needs about 1e8.
MAX_CODED_BITS = 1 << 28


@dataclass
class DecodedPointCloud:
    voxels: np.ndarray  # (N, 3) int64, unique, sorted by (x, y, z)
    points: np.ndarray  # (N, 3) float64 world coordinates: origin + voxels * scale
    depth: int
    bit_exact: bool
    seconds: float


class PointCloudCodec:
    kind = "point_cloud"

    def __init__(self, pt_path: Path, info: PointCloudModelInfo):
        import torch

        self.info = info
        self.model, table, _ = load_weights(str(pt_path))
        self.tables = coder.cdf_tables(table)
        self.weights_sha256 = bytes.fromhex(info.weights_sha256)
        self.profile = numerics.current_profile()
        # float32 logits: an MLP per coded bit, float64 would double the coding time; the
        # calibrated bound covers float32 differences (cuda pins TF32 off for it).
        self.dtype = torch.float32
        self.networks = PassNetworks(self.model, self.dtype, self.profile.device)
        self._torch = torch
        b = info.tensor_bound(TENSOR)
        self.bound = ErrorBound(b["kind"], float(b["value"]))
        self.decision = coder.occupancy_decision(self.bound)
        self.decisions = {TENSOR: self.decision}

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, weights_dir: str | Path | None = None
             ) -> PointCloudCodec:
        if weights_dir is None:
            pt_path, info = weights_path(name)
        else:
            pt_path, info = weights_path(name, Path(weights_dir))
        return cls(pt_path, info)

    def _predict(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int,
                 depth: int) -> np.ndarray:
        inputs = pass_features(neighbours, bits, k, level, depth, compact=True)
        return self.networks.logits(inputs, k, depth - 1 - level)

    # ----------------------------------------------------------------------------- encode

    def encode(self, points: np.ndarray, mode: Mode | str = Mode.SYNDROME,
               depth: int = octree.DEFAULT_DEPTH) -> pb.Bitstream:
        """(data, mode, **options) as every codec (reprocodec.registry.Codec)."""
        mode = options.parse_mode(mode)
        vox = octree.voxelize(points, depth)
        n = vox.voxels.shape[0]
        if n > MAX_POINTS:
            raise TooLargeError(f"{n} voxels exceed this codec's limit of {MAX_POINTS}; "
                                "split the cloud or use a smaller depth")
        msg = pb.Bitstream(
            magic=container.MAGIC, format_version=container.FORMAT_VERSION,
            codec=pb.CODEC_KIND_POINT_CLOUD, model=self.info.name,
            weights_sha256=self.weights_sha256,
            point_cloud=container.point_cloud_header(depth, n, vox.origin, vox.scale),
            output_checksum=checksum(vox.voxels), encoder_profile=self.profile.name,
        )
        if n == 0:
            return msg
        codes, bits = octree.build_levels(vox.voxels, depth)
        coded = coder.compress(codes, bits, depth, self._predict, self.tables, mode,
                               self.decision)
        total = coded.indices.size
        occupancy = np.concatenate([b.T.reshape(-1) for b in bits])  # coding order
        msg.payloads.append(container.make_payload(PAYLOAD, coded.data, [total], occupancy))
        msg.protected.append(self.decision.record(coded.indices, coded.side_info, mode,
                                                  coded.risky_count, coded.candidate_count))
        return msg

    # ----------------------------------------------------------------------------- decode

    def decode(self, msg: pb.Bitstream, verify: bool = True) -> DecodedPointCloud:
        """Decode a container. verify=False (benchmarks only) returns whatever the decoder
        produced even if the checksums disagree, so real failures can be counted; a decode that
        loses sync (more nodes than the stream codes) still raises VerificationError."""
        start = time.perf_counter()
        container.validate(msg)  # framing, CRCs, ranges: before any byte reaches rANS
        depth, n = self._check_header(msg)
        if n == 0:
            if msg.payloads or msg.protected:
                raise ContainerError("an empty point cloud stream carries no payload")
            voxels = np.zeros((0, 3), np.int64)
            return self._result(msg, voxels, depth, True, start)
        if len(msg.payloads) != 1 or len(msg.protected) != 1:
            raise ContainerError("a point cloud stream has one payload and one protected tensor")
        data = container.payload_bytes(msg, PAYLOAD)
        t = container.protected_tensor(msg, TENSOR)
        total = int(t.shape[0])
        if len(t.shape) != 1 or list(msg.payloads[0].shape) != [total] or total % N_PASSES:
            raise ContainerError("occupancy payload and protected tensor shapes disagree")
        if total > N_PASSES * n * depth:
            raise ContainerError(f"{total} coded bits is impossible for {n} points")
        if total > MAX_CODED_BITS:
            raise TooLargeError(f"{total} coded occupancy bits exceed this decoder's limit of "
                                f"{MAX_CODED_BITS}; decode on a larger deployment")
        mode, bound = self.decision.check_record(t, [total])

        leaves, indices, occupancy = coder.decompress(
            data, t.side_info, total, depth, self._predict, self.tables, mode, bound,
            self.decision, verify=verify,
        )
        if verify and checksum(occupancy) != msg.payloads[0].symbols_checksum:
            raise VerificationError(_failure("its occupancy bits fail their checksum"))
        if verify and checksum(indices) != t.indices_checksum:
            raise VerificationError(_failure("its occupancy indices do not match the encoder's"))
        if verify and leaves.size != n:
            raise VerificationError(_failure(f"it decoded {leaves.size} points, not {n}"))
        voxels = octree.sort_voxels(octree.morton_decode(leaves))
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
        out = []
        for level in range(depth):
            neighbours = octree.neighbour_table(codes[level], level)
            for k in range(N_PASSES):
                out.append(self._predict(neighbours, bits[level], k, level, depth))
        return {TENSOR: np.concatenate(out)}

    def _result(self, msg, voxels, depth, bit_exact, start) -> DecodedPointCloud:
        cloud = msg.point_cloud
        points = np.asarray(cloud.origin, np.float64) + voxels * float(cloud.scale)
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


def _failure(detail: str) -> str:
    return (f"point cloud verification failed: {detail}. The decoder's numerics differ from the "
            "encoder's beyond the stream's error bound (or the stream was not protected); "
            "decode under the encoder's profile or re-encode with --safeguard syndrome")
