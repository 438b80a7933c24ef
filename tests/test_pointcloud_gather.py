"""The exact kernels of the fast point-cloud path: neighbour tables made from the parent
level's, and the integer gather-sum first layer (networks.GatherNetworks, octree-ctx-v2 and v3).

Each is checked against an independent reference: octree.neighbour_table's binary searches;
the first layer as a float64 matrix product of the same integer weights over the features of
context.pass_features (exact, so equal, not close), and the float network within the weights'
rounding; the numpy fallback against the compiled kernel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reprocodec import container
from reprocodec.pointcloud import PointCloudCodec, context, gather, networks, octree, rowslices
from reprocodec.pointcloud.models import DEFAULT_MODEL, weights_path
from reprocodec.pointcloud.ply import read_ply
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


@pytest.fixture(scope="module")
def elephant():
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    return octree.build_levels(voxels, 7)


def _sparse_levels():
    rng = np.random.default_rng(3)
    voxels = octree.sort_voxels(rng.integers(0, 1 << 9, (3000, 3)))
    return octree.build_levels(voxels, 9)


@pytest.fixture(scope="module")
def v2():
    return networks.load_weights(str(weights_path(DEFAULT_MODEL)[0]))


def test_default_model_has_the_gather_first_layer():
    from reprocodec.pointcloud.native import NativeGatherNetworks

    codec = PointCloudCodec.load()
    assert isinstance(codec.networks, NativeGatherNetworks)  # the CPU profiles' path
    assert isinstance(PointCloudCodec.load("octree-ctx-v1").networks, networks.PassNetworks)


@pytest.mark.parametrize("cloud", ["elephant", "sparse"])
@pytest.mark.parametrize("threads", [1, 3])
def test_child_neighbour_tables_equal_the_binary_searches(elephant, monkeypatch, cloud,
                                                          threads):
    if octree.numba is None:
        pytest.skip("numba is not installed")  # a dependency: only a light install lacks it
    monkeypatch.setattr(rowslices, "ROWS_PER_TASK", 100)  # many slices of parents
    codes, bits = elephant if cloud == "elephant" else _sparse_levels()
    binary_searches, searched = octree.neighbour_table, []

    def spy(codes, level, rows=None):
        searched.append(level)
        return binary_searches(codes, level, rows)

    monkeypatch.setattr(octree, "neighbour_table", spy)
    tables = octree.LevelTables(threads)
    for level in range(len(codes)):
        got = tables.table_of(codes[level], level, bits[level - 1] if level else None)
        want = binary_searches(codes[level], level)
        assert got.dtype == want.dtype == np.int32
        np.testing.assert_array_equal(got, want)
    assert searched == [0]  # every later table came from the kernel
    # a level whose parent was not the last one asked falls back to the searches
    level = len(codes) - 2
    np.testing.assert_array_equal(
        octree.LevelTables().table_of(codes[level], level, bits[level - 1]),
        binary_searches(codes[level], level))
    assert searched == [0, level]
    # an occupancy whose non-zero entries are not all 1 counts each as one child
    level = len(codes) - 1
    parent = binary_searches(codes[level - 1], level - 1)
    np.testing.assert_array_equal(
        octree.child_neighbour_table(parent, bits[level - 1].astype(np.uint8) * 2,
                                     codes[level], level, threads),
        binary_searches(codes[level], level))


def test_gather_table_rows_are_the_weight_column_sums(v2):
    """Row (t, s) of pass k's table against the features of a row whose neighbour t alone is
    present in state s (all others absent)."""
    model = v2[0]
    w = np.rint(np.ldexp(model.net[0].weight.detach().double().numpy(), 10)).astype(np.int64)
    rng = np.random.default_rng(0)
    for k in (0, 3, 7):
        table = networks.gather_table(w, k).reshape(27, networks.GATHER_STATES, -1)
        for t in rng.choice(27, 6, replace=False):
            node_bits = np.zeros((2, 8), dtype=bool)
            node_bits[0] = rng.random(8) < 0.5
            rows = np.full((1, 27), 2, dtype=np.int32)  # every neighbour absent (M = 2)
            rows[0, t] = 0
            features = context.pass_features(rows, node_bits, k, 0, 1).astype(np.int64)
            cells = features[0, :2 * context.N_CELLS]
            absent = table[:, networks.GATHER_STATES - 1].sum(axis=0) - table[
                t, networks.GATHER_STATES - 1]
            state = int(np.packbits(node_bits[0] & (np.arange(8) < k))[0])
            want = w[:, :2 * context.N_CELLS] @ cells
            np.testing.assert_array_equal(table[t, state] + absent, want)


@pytest.mark.parametrize("compiled", [True, False])
def test_gather_logits_equal_the_exact_float64_reference(elephant, v2, monkeypatch, compiled):
    """logits_of (the gather, chunked) is bit-identical to logits() of the uint8 features
    (the first layer as an exact float64 product): the integer first layer is exact."""
    if not compiled:
        monkeypatch.setattr(gather, "numba", None)
    monkeypatch.setattr(networks, "CHUNK_ROWS", 700)  # several chunks per pass
    model, _, blob = v2
    net = networks.GatherNetworks(model, torch.float32, "cpu", int(blob["first_layer_bits"]))
    codes, bits = elephant
    for level in (2, 5, 6):
        table = octree.neighbour_table(codes[level], level)
        for k in range(8):
            got = net.logits_of(net.inputs(table, bits[level], k, level, 7), k, 6 - level)
            want = net.logits(context.pass_features(table, bits[level], k, level, 7,
                                                    compact=True), k, 6 - level)
            np.testing.assert_array_equal(got, want)


def test_integer_first_layer_is_the_float_one_within_its_rounding(elephant, v2):
    """The gather's pre-activations times 2^-bits against the float64 first layer of the
    unrounded weights: within (set features + 3) half grid steps (weights, bias and the two
    one-hot columns each rounded by at most half a step), and not identical (the test could
    fail)."""
    model, _, blob = v2
    bits = int(blob["first_layer_bits"])
    net = networks.GatherNetworks(model, torch.float64, "cpu", bits)
    w = model.net[0].weight.detach().double().numpy()
    b = model.net[0].bias.detach().double().numpy()
    codes, occupancy = elephant
    level, worst = 6, 0.0
    table = octree.neighbour_table(codes[level], level)
    for k in range(8):
        inputs = net.inputs(table, occupancy[level], k, level, 7)
        hidden = networks.gather_first_layer(table, inputs.state, net.tables[k],
                                             net.biases[k, 0], np.float64)
        features = context.pass_features(table, occupancy[level], k, level, 7)
        exact = np.maximum(features.astype(np.float64) @ w.T + b, 0)
        tolerance = (features.sum(axis=1, keepdims=True) + 3) * 2.0 ** -(bits + 1)
        diff = np.abs(np.ldexp(hidden, -bits) - exact)
        assert (diff <= tolerance).all()
        worst = max(worst, float(diff.max()))
    assert 0 < worst


def test_gather_refuses_weights_whose_sums_are_not_exact_in_float32(v2):
    model, _, _ = v2
    with pytest.raises(ValueError, match="not exact in float32"):
        networks.GatherNetworks(model, torch.float32, "cpu", 20)
    assert networks.gather_bits(model) >= 8


def test_encoder_and_decoder_use_the_same_indices(elephant):
    """A round trip with the default model reproduces every index the encoder protected (the
    decoder's own logits, from the gather path, resolve to the encoder's) and the cloud."""
    from reprocodec.pointcloud import coder

    codec = PointCloudCodec.load()
    codec.refine = False  # the static payload, decoded below as coder.decompress reads it
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    msg = container.unpack(container.pack(codec.encode(voxels, depth=7, coders="learned")))
    assert [p.name for p in msg.payloads] == ["occupancy"]
    out = coder.decompress(
        container.payload_bytes(msg, "occupancy"), msg.protected[0].side_info,
        int(msg.protected[0].shape[0]), 7, codec._predict, codec.tables,
        codec.decision.check_record(msg.protected[0], [int(msg.protected[0].shape[0])])[0],
        codec.bound, codec.decision)
    np.testing.assert_array_equal(octree.sort_voxels(octree.morton_decode(out.leaves)), voxels)
    codes, bits = octree.build_levels(voxels, 7)
    encoder_indices = np.concatenate([coder.learned_level(
        octree.neighbour_table(codes[lv], lv), bits[lv], lv, 7, codec._start_predict,
        codec.tables, Mode.SYNDROME, codec.decision).indices for lv in range(7)])
    np.testing.assert_array_equal(out.indices, encoder_indices)


def test_training_ships_a_gather_model_that_round_trips(tmp_path):
    """pointcloud_train --from-weights re-ships trained weights with the gather first layer on
    the finest exact grid; the codec loads them with the gather first layer and codes losslessly."""
    from reprocodec.train import pointcloud_train

    v1 = weights_path("octree-ctx-v1")[0]
    assert pointcloud_train.main(["--from-weights", str(v1), "--name", "octree-test-gather",
                                  "--out", str(tmp_path)]) == 0
    _, _, blob = networks.load_weights(str(tmp_path / "octree-test-gather.pt"))
    assert blob["first_layer"] == "gather" and 8 <= blob["first_layer_bits"] <= 14
    codec = PointCloudCodec.load("octree-test-gather", tmp_path)
    assert isinstance(codec.networks.first, networks.GatherFirstLayer)
    camel = octree.sort_voxels(read_ply(SAMPLES / "camel_d6.ply"))
    out = codec.decode(container.unpack(container.pack(codec.encode(camel, depth=6))))
    np.testing.assert_array_equal(out.voxels, camel)


def test_sparse_training_variants_are_sparser_subsets():
    from reprocodec.train.pointcloud_train import sparse_variants

    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    keys = set(map(tuple, voxels.tolist()))
    variants = sparse_variants(voxels, np.random.default_rng(0))
    assert len(variants) == 3
    for v in variants:
        assert 0 < v.shape[0] < 0.6 * voxels.shape[0]
        assert set(map(tuple, v.tolist())) <= keys


def test_coarse_training_clouds_are_the_parent_levels():
    """pointcloud_train --coarse: a cloud re-voxelized at a coarser depth is exactly the octree's
    occupied nodes at that level (so its samples are what the codec sees coding that depth);
    fine levels are subsampled 4x less per depth down, never above 1."""
    from reprocodec.train.pointcloud_train import coarse_clouds, fine_keep

    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    codes, _ = octree.build_levels(voxels, 7)
    clouds = coarse_clouds(voxels, 7, [4, 6, 7, 9])
    assert [d for _, d in clouds] == [4, 6]
    for cloud, d in clouds:
        assert cloud.max() < (1 << d)
        np.testing.assert_array_equal(np.sort(octree.morton_encode(cloud)), codes[d])
    assert fine_keep(9, 0.4) == 0.4 and fine_keep(10, 0.4) == 0.1 and fine_keep(8, 0.4) == 1.0
