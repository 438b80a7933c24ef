"""Every compiled kernel of a point-cloud request loaded before the first request comes.

numba loads a kernel's machine code from its cache when the kernel is first called, or
compiles it when the cache has none for these sources on this machine (a new container's):
a fresh process's first encode of the 30 k-point 1/20 sampling took 0.4-0.6 s more than the
next, 10.7 s more with an empty cache, and its first decode 0.4-0.5 s (2.2 s) more. warm_up
runs small clouds through every coder and every path of the encoder's choices, so that the
services pay this before they report SERVING, and checks each round trip besides.

The clouds are made here (no random numbers, no files): a sphere's shell (the learned model,
both mixers), a sparse sampling of a larger sphere (the adaptive coder, the model's cost
estimated on a level of 16 k nodes, the neighbour coder tried and undone) and the circles of
one sweep of a spinning scanner (the neighbour coder, both models). tests/test_warmup.py
checks that requests of every kind load no kernel after it.
"""

from __future__ import annotations

import numpy as np

from .. import container, numerics
from ..container import FORMAT_VERSION
from ..errors import VerificationError
from ..safeguard import warm_up as warm_up_safeguard
from ..safeguard.modes import Mode
from . import octree

# (cloud, depth, the encoder's `coders`, mode, bitstream format) a warm-up runs, in order,
# and the payload each stream carries (tests/test_warmup.py checks them: each
# coder's kernels are loaded where its payload is decoded). Format 5 too, whose streams a
# decoder still reads: its mixer and neighbour model (version 1) are kernels of their own.
_RUNS = (("shell", 6, "auto", Mode.SYNDROME, FORMAT_VERSION),  # occupancy_refined
         ("shell", 6, "smallest", Mode.SYNDROME, 5),  # occupancy_mixed
         ("sparse shell", 7, "smallest", Mode.SYNDROME, FORMAT_VERSION),  # occupancy_mixed_v3
         ("sparse shell", 7, "smallest", Mode.SYNDROME, 7),  # occupancy_mixed_v2
         # occupancy_refined and occupancy_adaptive, the model's cost estimated on a level
         ("sparse shell", 8, "auto", Mode.SYNDROME, FORMAT_VERSION),
         ("rings", 10, "auto", Mode.SYNDROME, FORMAT_VERSION),  # occupancy_neighbour_v2
         ("rings", 10, "neighbour", Mode.SYNDROME, 5),  # occupancy_neighbour
         ("shell", 5, "adaptive", Mode.SYNDROME, FORMAT_VERSION),
         ("shell", 5, "learned", Mode.FLAGS, FORMAT_VERSION),
         ("shell", 5, "learned", Mode.SIMPLIFIED, FORMAT_VERSION),
         ("shell", 5, "learned", Mode.NONE, FORMAT_VERSION),
         # occupancy: the model's own probabilities (static rANS), which the encoder keeps
         # where adapting them codes no fewer bytes (a few small learned levels)
         ("rings", 4, "learned", Mode.SYNDROME, FORMAT_VERSION))


def sphere(radius: float, spacing: float) -> np.ndarray:
    """Voxels of a sphere about (radius, radius, radius) sampled about `spacing` voxels apart
    along its meridians and parallels (spacing <= 0.5: every voxel of the shell), (N, 3)
    int64. Float trigonometry: another platform may round a point to another voxel, which
    changes nothing here (each run is checked against its own cloud)."""
    step = spacing / radius
    theta = np.arange(step / 2, np.pi, step)
    dphi = step / np.maximum(np.sin(theta), step)  # each parallel's spacing
    count = np.ceil(2 * np.pi / dphi).astype(np.int64)
    t = np.repeat(theta, count)
    phi = (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)) * \
        np.repeat(dphi, count)
    unit = np.column_stack([np.sin(t) * np.cos(phi), np.sin(t) * np.sin(phi), np.cos(t)])
    return _voxels(unit * radius + radius)


def rings(radius: float, count: int) -> np.ndarray:
    """`count` horizontal circles, radii radius (i + 1) / count at heights 2 i, one voxel
    apart along each, and a line on the floor: one sweep of a spinning scanner."""
    r = radius * np.arange(1, count + 1) / count
    per = np.ceil(2 * np.pi * r / 0.7).astype(np.int64)  # points a circle: 0.7 voxels apart
    ring = np.repeat(np.arange(count), per)
    phi = (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)) * 2 * np.pi / per[ring]
    floor = np.arange(0.0, 2 * radius)
    points = np.concatenate([
        np.column_stack([r[ring] * np.cos(phi), r[ring] * np.sin(phi), 2.0 * ring]) +
        [radius, radius, 0], np.column_stack([floor, np.full(floor.size, radius),
                                              np.zeros(floor.size)])])
    return _voxels(points)


def _voxels(points: np.ndarray) -> np.ndarray:
    """The distinct voxels of non-negative points (rounded), in the canonical order."""
    return octree.sort_voxels(np.rint(points).astype(np.int64))


def clouds() -> dict[str, np.ndarray]:
    """The warm-up's clouds by name (about 14 k, 20 k and 17 k voxels)."""
    return {"shell": sphere(30, 0.45), "sparse shell": sphere(120, 3.0),
            "rings": rings(200, 24)}


def warm_up(codec) -> list[list[str]]:
    """Encode and decode each of _RUNS with `codec` (a PointCloudCodec), checking that each
    decode gives the cloud back (VerificationError otherwise); each stream's payload names.
    The safeguard's syndrome kernels first: a stream with no risky element runs none."""
    warm_up_safeguard()
    made, payloads = clouds(), []
    for name, depth, coders, mode, version in _RUNS:
        points = made[name]
        scale = 1 << max(0, int(points.max()).bit_length() - depth)
        voxels = _voxels(points // scale)  # within the depth's grid
        msg = codec.encode(voxels, mode=mode, depth=depth, coders=coders,
                           bitstream_format=version)
        payloads.append([p.name for p in msg.payloads])
        with numerics.failures_expected():
            out = codec.decode(container.unpack(container.pack(msg)))
            if not np.array_equal(out.voxels, voxels):
                raise VerificationError(f"warm-up: the {name} cloud at depth {depth} "
                                        f"({coders}, {mode.value}, format {version}) did not "
                                        "decode to itself")
    return payloads
