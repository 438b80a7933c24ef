"""The native (numba, no torch) inference path of gather models (pointcloud/native.py) and the
torch-free weights reader (pointcloud/weightsfile.py).

The kernel equals its numpy reference (the same float64 sums in the same order) bit for bit,
and its compiled code holds no fast-math flag and no FMA, so it is the same on every CPU;
streams from the torch path (the previous release) decode on the native path and back; the
thread count changes nothing; the codec never imports torch for a gather model; the reader
returns what torch.load does on every shipped point-cloud weights file and runs no other
pickle global.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reprocodec import container
from reprocodec.pointcloud import PointCloudCodec, list_models, native, octree, rowslices
from reprocodec.pointcloud.gather import GatherFirstLayer, gather_first_layer
from reprocodec.pointcloud.models import DEFAULT_MODEL, weights_path
from reprocodec.pointcloud.ply import read_ply
from reprocodec.pointcloud.weightsfile import WeightsFileError, read_blob, read_weights
from reprocodec.safeguard import Mode

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


@pytest.fixture(scope="module")
def elephant():
    return octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))


@pytest.fixture(scope="module")
def codec():
    codec = PointCloudCodec.load()
    assert isinstance(codec.networks, native.NativeGatherNetworks)
    return codec


def _torch_codec() -> PointCloudCodec:
    """The default model on the torch path (as the previous release, and the GPU profiles,
    run it)."""
    from reprocodec.pointcloud.networks import GatherNetworks, load_weights

    codec = PointCloudCodec.load()
    model, _, blob = load_weights(str(weights_path(DEFAULT_MODEL)[0]))
    codec.networks = GatherNetworks(model, torch.float32, "cpu", int(blob["first_layer_bits"]))
    return codec


def _passes(voxels, depth):
    codes, bits = octree.build_levels(voxels, depth)
    tables = octree.LevelTables()
    for level in range(depth):
        neighbours = tables.table_of(codes[level], level, bits[level - 1] if level else None)
        for k in range(8):
            yield neighbours, bits[level], k, level


def test_native_logits_equal_the_numpy_reference_bit_for_bit(codec, elephant, monkeypatch):
    """The compiled kernel against numpy_rest (the same sums as numpy operations), and the
    path without numba (which is numpy_rest) against the kernel's output."""
    net = codec.networks
    passes = list(_passes(elephant, 7))
    compiled = [net.logits_of(net.inputs(nb, bits, k, level, 7), k, 6 - level)
                for nb, bits, k, level in passes]
    monkeypatch.setattr(native, "numba", None)
    for (neighbours, bits, k, level), got in zip(passes, compiled, strict=True):
        inputs = net.inputs(neighbours, bits, k, level, 7)
        hidden = gather_first_layer(neighbours, inputs.state, net.tables[k],
                                    net.biases[k, 6 - level])
        want = native.numpy_rest(hidden, net.w2t, net.b2, net.w3, net.b3)
        assert got.dtype == np.float64 and want.dtype == np.float32
        assert np.array_equal(got.view(np.int64), want.astype(np.float64).view(np.int64))
        without_numba = net.logits_of(inputs, k, 6 - level)
        assert np.array_equal(without_numba.view(np.int64), got.view(np.int64))


def test_the_kernel_has_no_fast_math_and_no_fma(codec, elephant):
    """How "the same on every CPU" is checked: LLVM may contract or reassociate float
    operations only under fast-math flags (fmul/fadd 'contract', 'reassoc', 'fast') or an
    fmuladd intrinsic; none is in the IR, and no FMA instruction is in the machine code."""
    net = codec.networks
    *_, (neighbours, bits, k, level) = _passes(elephant, 7)
    inputs = net.inputs(neighbours, bits, k, level, 7)
    # a fresh compile (numba does not inspect code loaded from its cache), same options
    kernel = native.numba.njit(nogil=True)(native._logits_kernel.py_func)
    out = np.empty(inputs.rows, np.float32)
    kernel(np.ascontiguousarray(neighbours), inputs.state, net.tables[k],
           net.biases[k, 0], net.w2t, net.b2, net.w3, net.b3, out)
    np.testing.assert_array_equal(out, net.logits_of(inputs, k, 0))
    for signature in kernel.signatures:
        ir = kernel.inspect_llvm(signature)
        float_ops = [line for line in ir.splitlines()
                     if any(f" {op} " in line for op in ("fadd", "fmul", "fsub"))]
        assert float_ops, "the IR has no float operations: the check is vacuous"
        for flag in ("fast", "contract", "reassoc", "afn", "arcp", "nnan", "ninf", "nsz"):
            assert not any(f" {flag} " in line for line in float_ops), flag
        assert "fmuladd" not in ir and "llvm.fma" not in ir
        asm = kernel.inspect_asm(signature).lower()
        assert not any(op in asm for op in ("vfmadd", "vfmsub", "vfnmadd", "fmla", "fmadd"))


def test_torch_path_streams_decode_on_the_native_path_and_back(codec, elephant):
    """A stream encoded with the torch float layers (the previous release) decodes bit-exactly
    on the native path, and a native stream on the torch path, all levels learned."""
    torch_codec = _torch_codec()
    sparse = octree.sort_voxels(np.random.default_rng(5).integers(0, 1 << 8, (4000, 3)))
    for voxels, depth in ((elephant, 7), (sparse, 8)):
        for encoder, decoder in ((torch_codec, codec), (codec, torch_codec)):
            msg = container.unpack(container.pack(
                encoder.encode(voxels, depth=depth, coders="learned")))
            out = decoder.decode(msg)
            assert out.bit_exact
            np.testing.assert_array_equal(out.voxels, voxels)


def test_unprotected_torch_path_streams_get_a_torch_retry(elephant, monkeypatch):
    """Mode-none streams of the previous release ran torch's float layers; an unprotected index
    can sit within the two paths' ~6e-6 of a grid boundary, so a stream the native path cannot
    verify is decoded once more on the torch path. Forced here by moving the native logits by
    half a logit (no unprotected stream survives that); protected streams never take the retry."""
    from reprocodec.errors import VerificationError
    from reprocodec.safeguard import Mode

    torch_codec = _torch_codec()
    torch_codec.refine = False  # the previous release's static payload
    unprotected = container.pack(torch_codec.encode(elephant, Mode.NONE, depth=7))
    protected = container.pack(torch_codec.encode(elephant, Mode.SYNDROME, depth=7))
    codec = PointCloudCodec.load()
    real = codec.networks.logits_of
    monkeypatch.setattr(codec.networks, "logits_of", lambda *a: real(*a) + 0.5)
    out = codec.decode(container.unpack(unprotected))
    assert out.bit_exact
    np.testing.assert_array_equal(out.voxels, elephant)
    with pytest.raises(VerificationError):
        codec.decode(container.unpack(protected))
    monkeypatch.setattr(codec, "_torch_predict", lambda msg: None)  # without the retry
    with pytest.raises(VerificationError):
        codec.decode(container.unpack(unprotected))


def test_native_and_torch_logits_differ_within_the_calibrated_bound(codec, elephant):
    torch_net, net = _torch_codec().networks, codec.networks
    worst = 0.0
    for neighbours, bits, k, level in _passes(elephant, 7):
        inputs = net.inputs(neighbours, bits, k, level, 7)
        diff = np.abs(net.logits_of(inputs, k, 6 - level)
                      - torch_net.logits_of(inputs, k, 6 - level))
        worst = max(worst, float(diff.max()))
    assert 0 < worst < codec.bound.value / 2


def test_thread_count_changes_nothing(elephant, monkeypatch):
    monkeypatch.setattr(rowslices, "ROWS_PER_TASK", 256)  # many slices per pass and table
    one, two = PointCloudCodec.load(threads=1), PointCloudCodec.load(threads=2)
    assert one.networks.threads == 1 and two.networks.threads == 2
    for neighbours, bits, k, level in _passes(elephant, 7):
        a = one._predict(neighbours, bits, k, level, 7)
        b = two._predict(neighbours, bits, k, level, 7)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))
    streams = [container.pack(c.encode(elephant, depth=7, coders=coders))
               for coders in ("learned", "auto") for c in (one, two)]
    assert streams[0] == streams[1] and streams[2] == streams[3]
    for decoder, stream in ((one, streams[1]), (two, streams[0]), (two, streams[2])):
        out = decoder.decode(container.unpack(stream))
        np.testing.assert_array_equal(out.voxels, octree.voxelize(elephant, 7).voxels)
    with pytest.raises(ValueError):
        one.threads = 0


def test_the_server_runs_one_thread_per_cloud_request_unless_told():
    from server.backend import Codecs
    from server.main import build_parser

    for argv, threads in (([], 1), (["--cloud-threads", "2"], 2)):
        args = build_parser("decoder").parse_args(argv)
        codecs = Codecs(None, args.max_pixels, args.cloud_threads)
        entry = codecs.models[DEFAULT_MODEL]
        assert codecs.codec(entry).threads == codecs.codec(entry).networks.threads == threads


def test_gather_models_code_without_torch():
    script = (
        "import sys, numpy as np\n"
        "from reprocodec import container, numerics\n"
        "from reprocodec.pointcloud import PointCloudCodec, octree\n"
        "numerics.apply_profile('cpu')\n"  # as the CLI does
        "from reprocodec.pointcloud.ply import read_ply\n"
        f"v = octree.sort_voxels(read_ply({str(SAMPLES / 'elephant_d7.ply')!r}))\n"
        "c = PointCloudCodec.load()\n"
        "for coders in ('learned', 'auto'):\n"
        "    out = c.decode(container.unpack(container.pack(c.encode(v, depth=7, "
        "coders=coders))))\n"
        "    assert np.array_equal(out.voxels, v)\n"
        "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _same(a, b) -> None:
    if isinstance(b, torch.Tensor):
        assert isinstance(a, np.ndarray) and a.dtype == b.numpy().dtype
        np.testing.assert_array_equal(a, b.numpy())
    elif isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b)
        for key in b:
            _same(a[key], b[key])
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_weights_reader_equals_torch_load(name):
    path = str(weights_path(name)[0])
    _same(read_blob(path), torch.load(path, map_location="cpu", weights_only=True))
    state, table, _ = read_weights(path)
    assert all(v.dtype == np.float32 for v in state.values()) and table.dtype == np.int32


def _archive(tmp_path, payload: bytes, storages: dict[str, bytes] | None = None) -> str:
    path = tmp_path / "w.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w/data.pkl", payload)
        z.writestr("w/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"w/data/{key}", data)
    return str(path)


def test_weights_reader_runs_no_other_global(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(WeightsFileError, match="builtins.print is not allowed"):
        read_blob(_archive(tmp_path, pickle.dumps({"x": Evil()})))


def test_crafted_weights_files_give_one_error_type(tmp_path):
    """Whatever part of a crafted archive is wrong, the reader says WeightsFileError (a
    ValueError), never KeyError, EOFError or the like from zipfile or the unpickler."""
    buf = io.BytesIO()
    torch.save({"t": torch.arange(4, dtype=torch.int32)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    not_zip = tmp_path / "x.pt"
    not_zip.write_bytes(b"PK\x03\x04 not really a zip archive")
    cases = {
        "no storage entry": _archive(tmp_path, pkl),  # data/0 missing: KeyError in zipfile
        "truncated pickle": _archive(tmp_path, pkl[:len(pkl) // 2], {"0": bytes(16)}),
        "not a zip": str(not_zip),
    }
    for path in cases.values():
        with pytest.raises(WeightsFileError):
            read_blob(path)
        with pytest.raises(WeightsFileError):
            read_weights(path)
    # a well-formed archive whose dict is not a model: read_weights refuses it by name
    with pytest.raises(WeightsFileError, match="is not an octree-context model"):
        read_weights(_archive(tmp_path, pkl, {"0": bytes(16)}))
    path = str(weights_path(DEFAULT_MODEL)[0])
    blob = read_blob(path)
    for key in ("state_dict", "cdf_table", "logit_step"):
        broken = dict(blob)
        del broken[key]
        crafted = tmp_path / f"no_{key}.pt"
        torch.save({k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else
                        {n: torch.from_numpy(t) for n, t in v.items()} if k == "state_dict"
                        else v) for k, v in broken.items()}, crafted)
        with pytest.raises(WeightsFileError):
            read_weights(str(crafted))


def test_weights_reader_checks_storage_sizes(tmp_path):
    buf = io.BytesIO()
    torch.save({"t": torch.arange(4, dtype=torch.int32)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert read_blob(_archive(tmp_path, pkl, {"0": bytes(16)}))["t"].tolist() == [0] * 4
    with pytest.raises(ValueError, match="has 12 bytes"):
        read_blob(_archive(tmp_path, pkl, {"0": bytes(12)}))


def test_narrower_layers_are_padded_with_zero_units(elephant):
    """A gather model narrower than the kernel's vectors (16, 8 units) runs natively, padded
    with zero units: the same logits as its numpy reference and, within float rounding, as
    the torch path of the same weights."""
    from reprocodec.pointcloud.context import N_FEATURES
    from reprocodec.pointcloud.networks import GatherNetworks, OccupancyMLP

    rng = np.random.default_rng(1)
    shapes = {"net.0.weight": (16, N_FEATURES), "net.0.bias": (16,), "net.2.weight": (8, 16),
              "net.2.bias": (8,), "net.4.weight": (1, 8), "net.4.bias": (1,)}
    state = {k: rng.normal(0, 0.3, s).astype(np.float16).astype(np.float32)
             for k, s in shapes.items()}
    assert native.NativeGatherNetworks.fits((16, 8))
    net = native.NativeGatherNetworks(state, 10, threads=1)
    first = GatherFirstLayer(state["net.0.weight"], state["net.0.bias"], 10)  # unpadded
    model = OccupancyMLP((16, 8))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    torch_net = GatherNetworks(model, torch.float32, "cpu", 10)
    for neighbours, bits, k, level in _passes(elephant, 7):
        inputs = net.inputs(neighbours, bits, k, level, 7)
        got = net.logits_of(inputs, k, 6 - level)
        hidden = gather_first_layer(neighbours, inputs.state, first.tables[k],
                                    first.biases[k, 6 - level])
        want = native.numpy_rest(hidden, net.w2t, net.b2, net.w3, net.b3)
        np.testing.assert_array_equal(got, want.astype(np.float64))
        np.testing.assert_allclose(got, torch_net.logits_of(inputs, k, 6 - level), atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [0, 1, 1023, 3000, 20_000, 93_413, 1 << 20])
def test_row_slices_cover_every_row_once_in_balanced_rounds(rows, threads):
    slices = rowslices.row_slices(rows, threads)
    covered = [i for start, stop in slices for i in range(start, stop)]
    assert covered == list(range(rows))
    sizes = [stop - start for start, stop in slices]
    assert all(0 < s <= rowslices.ROWS_PER_TASK for s in sizes)
    if sizes:
        assert max(sizes) - min(sizes) <= 1  # equal slices: no thread waits on a long one
    if threads > 1 and rows >= threads * rowslices.MIN_ROWS_PER_TASK:
        assert len(slices) % threads == 0  # whole rounds of the pool
    if threads == 1:
        assert len(slices) == -(-rows // rowslices.ROWS_PER_TASK)


@pytest.mark.parametrize("threads", [2, 3])
def test_for_row_slices_runs_each_slice_once_with_the_caller_working(threads):
    """Every slice runs exactly once; the calling thread takes slices itself (it does not wait
    idle on the pool), and so does the pool."""
    rows = 40 * rowslices.MIN_ROWS_PER_TASK
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def work(start: int, stop: int) -> None:
        time.sleep(0.02)  # long enough for the pool's thread to take slices too
        with lock:
            seen.append((start, stop, threading.get_ident()))

    rowslices.for_row_slices(work, rows, threads)
    assert sorted((a, b) for a, b, _ in seen) == rowslices.row_slices(rows, threads)
    ids = {t for _, _, t in seen}
    assert threading.get_ident() in ids and len(ids) >= 2


def test_for_row_slices_raises_after_every_started_slice_has_finished():
    """A slice's error reaches the caller, the other threads take no new slice after it, and
    none is still running when the call returns (a kernel never writes after it)."""
    rows = 40 * rowslices.MIN_ROWS_PER_TASK
    running, done, lock = [0], [], threading.Lock()

    def work(start: int, stop: int) -> None:
        with lock:
            running[0] += 1
        try:
            if start == 0:
                raise RuntimeError("slice 0")
            time.sleep(0.02)
        finally:
            with lock:
                running[0] -= 1
                done.append(start)

    with pytest.raises(RuntimeError, match="slice 0"):
        rowslices.for_row_slices(work, rows, 2)
    assert running[0] == 0
    assert len(done) < len(rowslices.row_slices(rows, 2))  # the rest were never started


def test_row_slices_job_works_while_the_caller_does_something_else():
    """RowSlices, made, has the pool's thread take slices at once, before finish(); finish()
    has the caller take the rest and returns when every slice is done; cancel() stops the
    slices not yet taken and returns when none is running."""
    rows = 40 * rowslices.MIN_ROWS_PER_TASK
    seen, running, lock = [], [0], threading.Lock()

    def work(start: int, stop: int) -> None:
        with lock:
            running[0] += 1
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            seen.append((start, stop, threading.get_ident()))

    def slices_done(at_least: int) -> bool:  # the caller busy elsewhere, the pool working
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= at_least:
                    return True
            time.sleep(0.002)
        return False

    job = rowslices.RowSlices(work, rows, 2)
    assert slices_done(1)
    with lock:
        assert all(t != threading.get_ident() for _, _, t in seen)
    job.finish()
    assert sorted((a, b) for a, b, _ in seen) == rowslices.row_slices(rows, 2)
    assert running[0] == 0

    seen.clear()
    job = rowslices.RowSlices(work, rows, 2)
    assert slices_done(1)
    job.cancel()
    with lock:
        after_cancel = len(seen)
    # one pool thread, 20 ms a slice: it cannot have taken every slice by the first one's end
    assert running[0] == 0 and 0 < after_cancel < len(rowslices.row_slices(rows, 2))
    time.sleep(0.05)
    assert len(seen) == after_cancel  # nothing ran after cancel() returned

    one = rowslices.RowSlices(work, rows, 1)  # one thread: finish() does it all
    seen.clear()
    time.sleep(0.03)
    assert not seen
    one.finish()
    assert {t for _, _, t in seen} == {threading.get_ident()}


def test_in_order_runs_items_one_after_another_on_the_pool():
    """InOrder: each item starts once the one before has finished, on a pool thread (the
    caller's own work goes on meanwhile); results() in order; with one thread each item
    runs at once on the caller's thread."""
    log, lock = [], threading.Lock()

    def item(i: int, seconds: float):
        def work() -> int:
            with lock:
                log.append(("start", i, threading.get_ident()))
            time.sleep(seconds)
            with lock:
                log.append(("end", i, threading.get_ident()))
            return i * i
        return work

    for threads in (2, 3):
        log.clear()
        chain = rowslices.InOrder(threads)
        for i, seconds in enumerate((0.03, 0.01, 0.02, 0.0)):  # later ones shorter
            chain.submit(item(i, seconds))
        assert chain.results() == [0, 1, 4, 9]
        assert [(what, i) for what, i, _ in log] == [
            (what, i) for i in range(4) for what in ("start", "end")]
        assert threading.get_ident() not in {t for _, _, t in log}
    log.clear()
    one = rowslices.InOrder(1)
    one.submit(item(5, 0.0))
    assert log == [("start", 5, threading.get_ident()), ("end", 5, threading.get_ident())]
    assert one.results() == [25]


def test_in_order_stops_at_an_error_and_cancel_leaves_nothing_running():
    """An item's error is results()' and no item after it runs; cancel() drops the items not
    started and returns once the running one has finished."""
    ran, lock, started = [], threading.Lock(), threading.Event()

    def item(i: int, fail: bool = False, seconds: float = 0.0):
        def work() -> None:
            started.set()
            time.sleep(seconds)
            if fail:
                raise RuntimeError(f"item {i}")
            with lock:
                ran.append(i)
        return work

    chain = rowslices.InOrder(2)
    for i in range(3):
        chain.submit(item(i, fail=i == 1))
    with pytest.raises(RuntimeError, match="item 1"):
        chain.results()
    assert ran == [0]
    ran.clear()
    started.clear()
    chain = rowslices.InOrder(2)
    for i in range(4):
        chain.submit(item(i, seconds=0.05))
    assert started.wait(30)  # item 0 running
    chain.cancel()
    assert ran == [0]  # it had started, and finished before cancel() returned
    time.sleep(0.1)
    assert ran == [0]  # the others never ran


def test_native_logits_started_equal_logits_of():
    """start_logits (the pool starts, the caller collects) gives logits_of's values."""
    codec = PointCloudCodec.load(threads=2)
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    codes, bits = octree.build_levels(voxels, 7)
    neighbours = octree.neighbour_table(codes[6], 6)
    for k in (0, 5):
        pending = codec._start_predict(neighbours, bits[6], k, 6, 7)
        np.testing.assert_array_equal(pending.result(), codec._predict(neighbours, bits[6], k, 6,
                                                                       7))


def test_learned_level_starts_the_next_pass_and_cancels_it_on_an_error():
    """The encoder's learned_level starts pass k + 1's network before it protects pass k, and
    when protecting raises (a cancelled request, say), the started pass is cancelled."""
    from reprocodec.errors import EncoderError
    from reprocodec.pointcloud import coder
    from reprocodec.pointcloud.rowslices import Pending

    codec = PointCloudCodec.load(threads=1)
    voxels = octree.sort_voxels(read_ply(SAMPLES / "elephant_d7.ply"))
    codes, bits = octree.build_levels(voxels, 7)
    neighbours = octree.neighbour_table(codes[5], 5)
    events: list[str] = []

    class Recorded(Pending):
        def __init__(self, k: int) -> None:
            super().__init__(lambda: codec._predict(neighbours, bits[5], k, 5, 7))
            self.k = k

        def result(self):
            events.append(f"result {self.k}")
            return super().result()

        def cancel(self) -> None:
            events.append(f"cancel {self.k}")

    def start(table, level_bits, k, level, depth):
        events.append(f"start {k}")
        return Recorded(k)

    class Failing:
        def __init__(self, fail_at: int) -> None:
            self.calls, self.fail_at = 0, fail_at

        def protect_pass(self, logits, mode):
            events.append(f"protect {self.calls}")
            self.calls += 1
            if self.calls > self.fail_at:
                raise EncoderError("cancelled")
            return codec.decision.protect_pass(logits, mode)

    whole = coder.learned_level(neighbours, bits[5], 5, 7, start, codec.tables, Mode.SYNDROME,
                                Failing(8))
    assert events[:5] == ["start 0", "result 0", "start 1", "protect 0", "result 1"]
    assert events.count("start 7") == 1 and "start 8" not in events
    reference = coder.learned_level(neighbours, bits[5], 5, 7, codec._start_predict,
                                    codec.tables, Mode.SYNDROME, codec.decision)
    np.testing.assert_array_equal(whole.indices, reference.indices)
    assert whole.cost == reference.cost
    events.clear()
    with pytest.raises(EncoderError):
        coder.learned_level(neighbours, bits[5], 5, 7, start, codec.tables, Mode.SYNDROME,
                            Failing(2))
    assert events[-2:] == ["protect 2", "cancel 3"] and "start 4" not in events


def test_prefetch_is_a_hint_that_changes_nothing_and_never_faults():
    """vectorops.prefetch, which the count models' walks call PREFETCH_AHEAD bits ahead: the
    compiled code holds the llvm.prefetch hint (so it is not silently a no-op), and hints at
    any index, in or far outside the array, leave every value and the result as they were."""
    from reprocodec.pointcloud.vectorops import prefetch

    def total(a, hints):
        s = np.int64(0)
        for i in range(hints.size):
            prefetch(a, hints[i])
            s += a[i % a.size]
        return s

    kernel = native.numba.njit(nogil=True)(total)
    a = np.arange(1000, dtype=np.int32).reshape(500, 2)[:, 0].copy()
    before = a.copy()
    hints = np.array([0, 499, 500, 1 << 40, -1, -(1 << 40)], dtype=np.int64)
    assert kernel(a, hints) == a[: hints.size].sum()
    np.testing.assert_array_equal(a, before)
    (signature,) = kernel.signatures
    assert "llvm.prefetch" in kernel.inspect_llvm(signature)


def test_network_arrays_are_cache_line_aligned():
    """The kernel loads table and w2t rows as whole vectors: every array it reads row by row
    starts on an ALIGNMENT boundary (a misaligned row spans one more cache line)."""
    net = PointCloudCodec.load(threads=1).networks
    arrays = [*net.tables, *net.biases.values(), net.w2t, net.b2, net.w3]
    assert all(a.ctypes.data % native.ALIGNMENT == 0 and a.flags.c_contiguous for a in arrays)
