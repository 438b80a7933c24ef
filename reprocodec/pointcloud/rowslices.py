"""Work split into fixed slices of rows on a small shared thread pool (the compiled kernels
release the GIL). Slices write disjoint outputs and each row's result depends on that row
alone, so no result depends on the thread count."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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

