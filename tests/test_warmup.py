"""warm_up: every compiled kernel a request runs is loaded before the first one (point clouds
and images)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from reprocodec.errors import VerificationError  # noqa: E402
from reprocodec.pointcloud import warmup  # noqa: E402
from reprocodec.pointcloud.codec import PointCloudCodec  # noqa: E402

EVERY_PAYLOAD = {"occupancy", "occupancy_refined", "occupancy_mixed", "occupancy_mixed_v2",
                 "occupancy_mixed_v3",
                 "occupancy_adaptive", "occupancy_neighbour", "occupancy_neighbour_v2"}


def test_warm_up_decodes_a_stream_of_every_payload():
    """Each coder's decoder runs only on its own payload: the warm-up's streams carry all
    of them (the encoder's choice follows the weights: a new model may need other clouds)."""
    payloads = PointCloudCodec.load(threads=2).warm_up()
    assert {name for names in payloads for name in names} == EVERY_PAYLOAD


def test_the_clouds_are_what_they_say():
    clouds = warmup.clouds()
    shell = clouds["shell"] - 30
    radius = np.sqrt((shell ** 2).sum(axis=1))
    assert np.all(np.abs(radius - 30) <= 1.0) and len(np.unique(shell, axis=0)) == len(shell)
    sparse = warmup.sphere(120, 3.0)
    assert 16_384 <= len(sparse) < len(warmup.sphere(120, 0.45)) // 5  # a level to estimate
    rings = clouds["rings"]
    assert set(np.unique(rings[:, 2])) == set(range(0, 48, 2))  # 24 circles, floor at 0


def test_a_round_trip_that_fails_is_reported(monkeypatch):
    codec = PointCloudCodec.load(threads=1)
    decode = codec.decode

    def dropping(msg):
        out = decode(msg)
        out.voxels = out.voxels[1:]
        return out

    monkeypatch.setattr(codec, "decode", dropping)
    with pytest.raises(VerificationError, match="warm-up: the shell cloud"):
        codec.warm_up()


def test_failures_are_expected_only_under_a_noise_profile(monkeypatch):
    """A noise:EPS decoder is meant to fail beyond its bound (to show it): its warm-up's
    failed checks do not stop it serving; under any other profile they do."""
    from reprocodec import numerics

    monkeypatch.setattr(numerics, "_applied", numerics.parse_profile("noise:0.05"))
    with numerics.failures_expected():
        raise VerificationError("beyond the bound")
    monkeypatch.setattr(numerics, "_applied", numerics.parse_profile("cpu"))
    with pytest.raises(VerificationError), numerics.failures_expected():
        raise VerificationError("a real failure")


_NOISY_WARM_UP = """
import numpy as np
from reprocodec import container, numerics
from reprocodec.errors import VerificationError
from reprocodec.pointcloud import warmup
from reprocodec.pointcloud.codec import PointCloudCodec
numerics.apply_profile("noise:0.05")
codec = PointCloudCodec.load(threads=1)
codec.warm_up()
msg = codec.encode(warmup.clouds()["shell"], depth=6)
try:
    codec.decode(container.unpack(container.pack(msg)))
    print("decoded")
except VerificationError:
    print("refused")
"""


def test_a_noise_profile_warms_up_and_still_refuses_requests():
    """noise:0.05 (the occupancy logits' bound is 2.3e-5): the warm-up's decodes fail and the
    codec warms up all the same; a request's decode is refused as before."""
    done = subprocess.run([sys.executable, "-c", _NOISY_WARM_UP], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused"]


# In a fresh process (this one's kernels are loaded by whatever ran before): after warm_up on
# one thread, requests of every kind (each coder chosen, every mode and format, float and
# integer points, the shipped sample, on one thread and two) add no signature to any of the
# package's compiled kernels.
_NO_LOADS_AFTER_WARM_UP = """
import gc
from importlib.resources import files
from pathlib import Path
import numba, numpy as np
from reprocodec import container
from reprocodec.pointcloud import read_input
from reprocodec.pointcloud.codec import PointCloudCodec
from reprocodec.safeguard.modes import Mode

def signatures():
    return {id(d): (d.py_func.__qualname__, set(d.signatures)) for d in gc.get_objects()
            if isinstance(d, numba.core.registry.CPUDispatcher)
            and d.py_func.__module__.startswith("reprocodec")}

codec = PointCloudCodec.load(threads=1)  # the services' default --cloud-threads
codec.warm_up()
before = signatures()
rng = np.random.default_rng(1)
surface = rng.normal(size=(60_000, 3))
surface /= np.linalg.norm(surface, axis=1, keepdims=True)
azimuth = np.linspace(0, 2 * np.pi, 1024, endpoint=False)
sweep = np.concatenate([np.stack([r * np.cos(azimuth), r * np.sin(azimuth),
                                  np.full(azimuth.size, -1.7 + 0.01 * r)], 1)
                        for r in np.geomspace(3, 60, 24)]) + rng.normal(0, 0.02, (24 * 1024, 3))
camel = read_input(Path(str(files("reprocodec").joinpath("samples", "camel_d6.ply"))))
runs = [(surface, 9, {}), (surface[::20], 10, {}), (surface.astype(np.float32), 8, {}),
        (sweep, 12, {}), (camel, 6, {}), (camel, 6, {"coders": "smallest"})]
runs += [(surface[:5000], 7, {"mode": mode}) for mode in Mode]
runs += [(surface[:5000], 7, {"bitstream_format": v, "coders": "smallest"})
         for v in sorted(container.SUPPORTED_VERSIONS)]
payloads = set()
for threads in (1, 2):  # the row pool's paths (the next level made ahead, say) too
    codec.threads = threads
    for points, depth, options in runs:
        msg = codec.encode(points, depth=depth, **options)
        payloads.update(p.name for p in msg.payloads)
        codec.decode(container.unpack(container.pack(msg)))
loaded = sorted(name for key, (name, sigs) in signatures().items()
                if sigs - before.get(key, (name, set()))[1])
print(sorted(payloads))
print(loaded)
"""


def test_requests_load_no_kernel_after_a_warm_up():
    done = subprocess.run([sys.executable, "-c", _NO_LOADS_AFTER_WARM_UP], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    payloads, loaded = done.stdout.splitlines()[-2:]
    assert len(eval(payloads)) >= 4  # the requests took several coders' paths
    assert loaded == "[]", f"kernels loaded by requests after warm_up: {loaded}"


# The same for images: a small random model of each architecture, every mode and level, RGB
# and grey pixels.
_NO_IMAGE_LOADS_AFTER_WARM_UP = """
import gc, sys
import numba, numpy as np
from reprocodec import container
from reprocodec.image.codec import ImageCodec
from reprocodec.image.testing import write_random_model
from reprocodec.safeguard.modes import Mode

def signatures():
    return {id(d): (d.py_func.__qualname__, set(d.signatures)) for d in gc.get_objects()
            if isinstance(d, numba.core.registry.CPUDispatcher)
            and d.py_func.__module__.startswith("reprocodec")}

loaded = []
rng = np.random.default_rng(2)
pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
for seed, architecture in enumerate(("bmshj2018-hyperprior", "mbt2018-mean-checkerboard")):
    name = write_random_model(sys.argv[1], architecture, seed=seed)
    codec = ImageCodec.load(name, sys.argv[1])
    codec.warm_up()
    before = signatures()
    for mode in Mode:
        for level in ("both", "decoding", "reconstruction"):
            for image in (pixels, pixels[..., :1].copy()):
                msg = codec.encode(image, mode=mode, level=level)
                codec.decode(container.unpack(container.pack(msg)))
    loaded += [n for key, (n, sigs) in signatures().items()
               if sigs - before.get(key, (n, set()))[1]]
print(sorted(loaded))
"""


def test_image_requests_load_no_kernel_after_a_warm_up(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", _NO_IMAGE_LOADS_AFTER_WARM_UP, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
