"""The CPU inference path of gather models (no torch): one compiled kernel per slice of rows.

Per row: the exact integer first layer (gather.py) -> ReLU -> the second layer -> ReLU -> the
last layer -> logit, rounded to float32 as the torch path's is. The stored weights are float32
(from fp16) and the activations integers below 2^24, so each second-layer product is exact in
float64. Every float sum has one fixed order, written in the source: a second-layer unit adds
the products of the non-zero first-layer units in ascending order (a zero unit's product is
+-0 and would change nothing) to +0; the last layer's products max(acc + b2, 0) * w3 are added
by halves (vectorops.relu_dense_tail), then the bias. No fast-math: the compiler may neither
reassociate nor contract a multiply and an add into an FMA, so each logit is the same on every
x86 or ARM CPU, whatever the thread count or slicing. Tests check the kernel against
numpy_rest (the same sums as numpy operations) bit for bit, and its LLVM IR and assembly for
fast-math flags and FMAs. The float64 sums sit closer to the exact function than the torch
path's float32 BLAS: the two differ by at most ~6 float32 ulps of a logit near 12 (measured
5.7e-6 on the held-out clouds), inside the bound that torch-path streams carry (1.53e-5).

Layers narrower than vectorops' widths are padded with zero units (no value changes); a model
with wider layers runs the torch path. Rows are split into slices (rowslices.py) and run
on a small thread pool (the kernel releases the GIL); each row's logit depends on that row alone,
so results do not depend on the thread count. numba's own parallel loops are not used: their
workqueue threading layer is unsafe when several server threads call in at once.
"""

from __future__ import annotations

import numpy as np

from ..kernels import compiled, numba
from .context import N_HEIGHTS
from .gather import GatherFirstLayer, GatherInputs, gather_first_layer
from .rowslices import Pending, RowSlices, default_threads
from .vectorops import FIRST_UNITS, SECOND_UNITS

if numba is not None:
    from .vectorops import gather_sum, relu_dense_tail

class NativeGatherNetworks:
    """A gather model with two hidden layers (first_layer "gather", hidden (H1, H2), H1 <=
    FIRST_UNITS, H2 <= SECOND_UNITS) from its float32 state dict: the function of
    networks.GatherNetworks (torch) in one kernel."""

    def __init__(self, state: dict[str, np.ndarray], bits: int, threads: int | None = None):
        self.first = GatherFirstLayer(state["net.0.weight"], state["net.0.bias"], bits)
        w2 = np.asarray(state["net.2.weight"], np.float32)
        if not (w2.shape[1] == self.first.hidden <= FIRST_UNITS and w2.shape[0] <= SECOND_UNITS):
            raise ValueError(f"hidden layers {self.first.hidden}, {w2.shape[0]} exceed the "
                             f"native kernel's {FIRST_UNITS}, {SECOND_UNITS}")
        self.tables = [_padded(t, (t.shape[0], FIRST_UNITS)) for t in self.first.tables]
        self.biases = {key: _padded(b, (FIRST_UNITS,)) for key, b in self.first.biases.items()}
        # the aligned copies replace the first layer's own (~14 MB), which nothing else reads
        self.first.tables, self.first.biases = [], {}
        # float32 values held in float64 (exact), with the 2^-bits scale of the integer
        # activations folded in exactly (a power of two), as the torch path does in float32
        w2t = np.ldexp(w2, -bits).astype(np.float32).T.astype(np.float64)
        self.w2t = _padded(w2t, (FIRST_UNITS, SECOND_UNITS))  # a row per first-layer unit
        self.b2 = _padded(np.asarray(state["net.2.bias"], np.float64), (SECOND_UNITS,))
        self.w3 = _padded(np.asarray(state["net.4.weight"], np.float64)[0], (SECOND_UNITS,))
        self.b3 = np.asarray(state["net.4.bias"], np.float64).reshape(1)
        self.threads = threads or default_threads()

    @staticmethod
    def fits(hidden: list[int] | tuple[int, ...]) -> bool:
        """Whether a gather model with these hidden widths runs natively."""
        return len(hidden) == 2 and hidden[0] <= FIRST_UNITS and hidden[1] <= SECOND_UNITS

    def inputs(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int):
        return GatherInputs(neighbours, bits, k)

    def logits_of(self, inputs: GatherInputs, k: int, height: int) -> np.ndarray:
        """float64 logits (float32 values) of a pass's GatherInputs."""
        return self.start_logits(inputs, k, height).result()

    def start_logits(self, inputs: GatherInputs, k: int, height: int) -> Pending:
        """logits_of as a Pending: the pool's threads start on the rows now, the caller
        joins them when it asks for the result."""
        table = self.tables[k]
        bias = self.biases[k, min(height, N_HEIGHTS - 1)]
        rows = np.ascontiguousarray(inputs.neighbours)
        out = np.empty(inputs.rows, dtype=np.float32)  # made here: no pool thread's heap

        def work(start: int, stop: int) -> None:
            if numba is not None:
                _logits_kernel(rows[start:stop], inputs.state, table, bias, self.w2t, self.b2,
                               self.w3, self.b3, out[start:stop])
            else:
                hidden = gather_first_layer(rows[start:stop], inputs.state, table, bias)
                out[start:stop] = numpy_rest(hidden, self.w2t, self.b2, self.w3, self.b3)

        return Pending(lambda: out.astype(np.float64), RowSlices(work, inputs.rows, self.threads))

    def logits(self, features: np.ndarray, k: int, height: int) -> np.ndarray:
        """The same logits from compact uint8 features (context.pass_features, compact=True),
        the first layer as an exact float64 product (the reference of the gather)."""
        hidden = self.first.exact(features, k, height)
        return numpy_rest(hidden, self.w2t, self.b2, self.w3, self.b3).astype(np.float64)


def numpy_rest(hidden: np.ndarray, w2t: np.ndarray, b2: np.ndarray, w3: np.ndarray,
               b3: np.ndarray) -> np.ndarray:
    """float32 logits of first-layer activations (rows, H1) by the kernel's sums, as separate
    numpy float64 multiplies and adds (no FMA, no reassociation): each second-layer unit adds
    the products of inputs 0, 1, .. H1-1 in that order to +0 (zeros included: they change
    nothing), then its bias; the last layer's products max(., 0) * w3 are added by halves as
    vectorops.relu_dense_tail does, then the bias. The kernel's reference, and the path without
    numba. w2t, b2, w3: NativeGatherNetworks' padded arrays."""
    hidden = hidden.astype(np.float64)
    acc = np.zeros((hidden.shape[0], w2t.shape[1]), np.float64)
    for i in range(hidden.shape[1]):
        acc += hidden[:, i:i + 1] * w2t[i]
    p = np.maximum(acc + b2, 0.0) * w3
    while p.shape[1] > 1:
        half = p.shape[1] // 2
        p = p[:, :half] + p[:, half:]
    return (p[:, 0] + b3[0]).astype(np.float32)


ALIGNMENT = 64  # bytes: a cache line, and an AVX-512 register


def _padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`a` with zeros appended up to `shape`, C-contiguous, at an address that is a multiple
    of ALIGNMENT. The kernel loads the table's and w2t's rows (256 bytes each) as whole
    vectors: at numpy's 16-byte alignment each row spans a fifth cache line, and the kernel
    took 200-216 ns a row instead of 165 (/tmp script, the 1/4 sampling's rows, one thread)."""
    if a.shape != shape:
        a = np.pad(a, [(0, n - m) for m, n in zip(a.shape, shape, strict=True)])
    buffer = np.empty(a.nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    aligned = buffer[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    aligned[...] = a
    return aligned


if numba is not None:
    @compiled
    def _logits_kernel(rows, state, table, bias, w2t, b2, w3, b3, out):  # pragma: no cover
        first = np.empty(FIRST_UNITS, np.int32)
        for r in range(rows.shape[0]):
            gather_sum(rows, r, state, table, bias, first)
            out[r] = np.float32(relu_dense_tail(first, w2t, b2, w3) + b3[0])
