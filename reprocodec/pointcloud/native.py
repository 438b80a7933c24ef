"""The CPU inference path of gather models (no torch): one compiled kernel per chunk of rows.

Per row: the exact integer first layer (gather.py) -> ReLU -> the second layer -> ReLU -> the
last layer -> logit, rounded to float32 as the torch path's is. The stored weights are float32
(from fp16) and the activations integers below 2^24, so each second-layer product is exact in
float64; the sums run in float64 in one fixed source order (the products of inputs 0, 1, ..
in that order, then the bias) with no fastmath, so the compiler may neither reassociate nor
contract a multiply and an add into an FMA: each logit is the same on every x86 or ARM CPU,
whatever the thread count or chunking. Tests check the kernel against numpy_rest (the same
sums as numpy operations) bit for bit, and its LLVM IR and assembly for fast-math flags and
FMAs. float64 sums put the logits closer to the exact function than float32 ones: the torch
path's float32 BLAS differs from them by at most ~4 float32 ulps at |logit| 12, half what a
float32 sequential sum differs by, well inside the bound that torch-path streams carry.
Zero activations are skipped: their products are +-0, and adding +-0 to a sum that starts at
+0 leaves it unchanged bit for bit.

Rows are split into fixed ROWS_PER_TASK slices and run on a small thread pool (the kernel
releases the GIL); each row's logit depends on that row alone, so results do not depend on
the thread count. numba's own parallel loops are not used: their workqueue threading layer
is unsafe when several server threads call in at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .context import N_HEIGHTS, numba
from .gather import GATHER_STATES, GatherFirstLayer, GatherInputs, gather_first_layer

ROWS_PER_TASK = 1 << 13


def default_threads() -> int:
    """The cores this process may run on (the CLI's and in-process default)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, "reprocodec-rows")
        return pool


def for_row_slices(work: Callable[[int, int], None], rows: int, threads: int) -> None:
    """work(start, stop) on consecutive ROWS_PER_TASK slices of `rows`, on `threads` threads
    (on the caller's when one): the slices must write disjoint outputs."""
    starts = range(0, rows, ROWS_PER_TASK)
    if threads <= 1 or rows <= ROWS_PER_TASK:
        for start in starts:
            work(start, min(start + ROWS_PER_TASK, rows))
        return
    futures = [_pool(threads).submit(work, s, min(s + ROWS_PER_TASK, rows)) for s in starts]
    for f in futures:
        f.result()


class NativeGatherNetworks:
    """A gather model with two hidden layers (first_layer "gather", hidden (H1, H2)) from its
    float32 state dict: the function of networks.GatherNetworks (torch) in one kernel."""

    def __init__(self, state: dict[str, np.ndarray], bits: int, threads: int | None = None):
        self.first = GatherFirstLayer(state["net.0.weight"], state["net.0.bias"], bits)
        # float32 values held in float64 (exact); the 2^-bits scale of the integer
        # activations folded in exactly (a power of two), as the torch path does in float32
        w2 = np.ldexp(np.asarray(state["net.2.weight"], np.float32), -bits).astype(np.float32)
        self.w2t = np.ascontiguousarray(w2.T, dtype=np.float64)  # (H1, H2): a row per input
        self.b2 = np.asarray(state["net.2.bias"], np.float64)
        self.w3 = np.ascontiguousarray(np.asarray(state["net.4.weight"], np.float64)[0])
        self.b3 = np.asarray(state["net.4.bias"], np.float64).reshape(1)
        self.threads = threads or default_threads()

    def inputs(self, neighbours: np.ndarray, bits: np.ndarray, k: int, level: int, depth: int):
        return GatherInputs(neighbours, bits, k)

    def logits_of(self, inputs: GatherInputs, k: int, height: int) -> np.ndarray:
        """float64 logits (float32 values) of a pass's GatherInputs."""
        table = self.first.tables[k]
        bias = self.first.biases[k, min(height, N_HEIGHTS - 1)]
        rows = np.ascontiguousarray(inputs.neighbours)
        out = np.empty(inputs.rows, dtype=np.float32)

        def work(start: int, stop: int) -> None:
            if numba is not None:
                _logits_kernel(rows[start:stop], inputs.state, table, bias, self.w2t, self.b2,
                               self.w3, self.b3, out[start:stop])
            else:
                hidden = gather_first_layer(rows[start:stop], inputs.state, table, bias)
                out[start:stop] = numpy_rest(hidden, self.w2t, self.b2, self.w3, self.b3)

        for_row_slices(work, inputs.rows, self.threads)
        return out.astype(np.float64)

    def logits(self, features: np.ndarray, k: int, height: int) -> np.ndarray:
        """The same logits from compact uint8 features (context.pass_features, compact=True),
        the first layer as an exact float64 product (the reference of the gather)."""
        hidden = self.first.exact(features, k, height)
        return numpy_rest(hidden, self.w2t, self.b2, self.w3, self.b3).astype(np.float64)


def numpy_rest(hidden: np.ndarray, w2t: np.ndarray, b2: np.ndarray, w3: np.ndarray,
               b3: np.ndarray) -> np.ndarray:
    """float32 logits of first-layer activations (rows, H1) by the kernel's sums, as separate
    numpy float64 multiplies and adds (no FMA, no reassociation): for each second-layer unit
    the products of inputs 0, 1, .. H1-1 added in that order, then its bias; ReLU; the last
    layer likewise; the logit rounded to float32. The kernel's reference, and the path
    without numba."""
    hidden = hidden.astype(np.float64)
    acc = np.zeros((hidden.shape[0], w2t.shape[1]), np.float64)
    for i in range(w2t.shape[0]):
        acc += hidden[:, i:i + 1] * w2t[i]
    h2 = np.maximum(acc + b2, 0.0)
    total = np.zeros(hidden.shape[0], np.float64)
    for j in range(w3.size):
        total += h2[:, j] * w3[j]
    return (total + b3[0]).astype(np.float32)


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _logits_kernel(rows, state, table, bias, w2t, b2, w3, b3, out):  # pragma: no cover
        hidden = bias.size
        absent = state.size - 1  # the sentinel row M: its table rows are zero
        first = np.empty(hidden, np.int32)
        values = np.empty(hidden, np.float64)
        units = np.empty(hidden, np.int64)
        acc = np.empty(b2.size, np.float64)
        for r in range(rows.shape[0]):
            for u in range(hidden):
                first[u] = bias[u]
            for t in range(27):
                j = rows[r, t]
                if j == absent:
                    continue
                row = t * GATHER_STATES + state[j]
                for u in range(hidden):
                    first[u] += table[row, u]
            # The ReLU's non-zero units in order, without a branch per unit (about half are
            # zero, unpredictably): a zero unit's products would add +-0, no change.
            n = 0
            for u in range(hidden):
                units[n] = u
                values[n] = first[u]  # an integer below 2^24: exact
                n += first[u] > 0
            for j in range(acc.size):
                acc[j] = 0.0
            for m in range(n):
                x, i = values[m], units[m]
                for j in range(acc.size):
                    acc[j] = acc[j] + x * w2t[i, j]
            total = 0.0
            for j in range(acc.size):
                total = total + max(acc[j] + b2[j], 0.0) * w3[j]
            out[r] = np.float32(total + b3[0])
