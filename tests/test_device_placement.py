"""Every codec path is correct on any torch device: network outputs reach numpy only through
numerics.to_host. Checked on a CPU by a device-placement shim: the inputs the codecs hand to
their networks become a tensor subclass standing for a device tensor, whose values cannot be
read on the host (.numpy(), .tolist(), .item()) until it is moved there with .to("cpu") /
.cpu(), exactly the class of bug that broke every image encode on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reprocodec import container, numerics

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
_HOST_READS = {torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}


def _names_cpu(args, kwargs) -> bool:
    for a in [*args, *kwargs.values()]:
        if isinstance(a, str) and a.startswith("cpu"):
            return True
        if isinstance(a, torch.device) and a.type == "cpu":
            return True
    return False


class DeviceTensor(torch.Tensor):
    """A CPU tensor that behaves, for host access, like one on a GPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise AssertionError(f"{func.__name__}() on a device tensor: use numerics.to_host")
        out = super().__torch_function__(func, types, args, kwargs)
        moved = func is torch.Tensor.cpu or (func is torch.Tensor.to and
                                             _names_cpu(args[1:], kwargs))
        if moved and isinstance(out, torch.Tensor):
            return out.as_subclass(torch.Tensor)
        return out


@pytest.fixture
def device_shim(monkeypatch):
    def on_device(tensor):
        return tensor.as_subclass(DeviceTensor)

    original = numerics.prepare_input
    monkeypatch.setattr(numerics, "prepare_input", lambda t: on_device(original(t)))
    import reprocodec.pointcloud.networks as networks

    monkeypatch.setattr(networks, "prepare_input", lambda t: on_device(original(t)))


def test_the_shim_catches_a_host_read_of_a_device_tensor(device_shim):
    t = numerics.prepare_input(torch.ones(3))
    with pytest.raises(AssertionError, match="to_host"):
        (t * 2).numpy()
    assert numerics.to_host(t * 2).tolist() == [2.0, 2.0, 2.0]


def test_image_codec_encodes_and_decodes_with_device_tensors(device_shim):
    from reprocodec.image import ImageCodec
    from reprocodec.image.io import read_image

    codec = ImageCodec.load("bmshj2018-hyperprior-q1")
    pixels = read_image(SAMPLES / "coffee.png")[:64, :96]
    msg = container.unpack(container.pack(codec.encode(pixels)))
    decoded = codec.decode(msg)
    assert decoded.bit_exact and decoded.pixels.shape == pixels.shape
    sample = codec.calibration_sample(pixels)
    assert set(codec.network_floats(sample)) == {"scale_index", "pixels"}


@pytest.mark.parametrize("model", ["octree-ctx-v3", "octree-ctx-v2", "octree-ctx-v1"])
def test_point_cloud_codec_encodes_and_decodes_with_device_tensors(device_shim, model):
    from reprocodec.pointcloud import PointCloudCodec
    from reprocodec.pointcloud.ply import read_ply

    codec = PointCloudCodec.load(model)
    points = read_ply(SAMPLES / "camel_d6.ply")
    msg = container.unpack(container.pack(codec.encode(points, depth=6)))
    out = codec.decode(msg)
    assert out.bit_exact and len(out.voxels) == msg.point_cloud.num_points
    assert np.isfinite(codec.network_floats(codec.calibration_sample(points, 6))[
        "occupancy_logit"]).all()
