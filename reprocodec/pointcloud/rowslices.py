"""Work split into slices of rows on a small shared thread pool (the compiled kernels release
the GIL). Slices write disjoint outputs and each row's result depends on that row alone, so no
result depends on the slicing or the thread count."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

ROWS_PER_TASK = 1 << 13  # the most rows of a slice
MIN_ROWS_PER_TASK = 1 << 10  # the fewest rows worth a task of their own


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


def row_slices(rows: int, threads: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) slices of `rows`: at most ROWS_PER_TASK rows each, and with
    several threads whole rounds of equal slices (within a row), down to MIN_ROWS_PER_TASK, so
    that no thread waits for another's last slice (20,000 rows on 2 threads: 4 slices of
    5,000, not 8,192 + 8,192 and then 3,616 alone)."""
    if rows <= 0:
        return []
    tasks = -(-rows // ROWS_PER_TASK)
    if threads > 1:
        rounds = -(-tasks // threads) * threads
        tasks = max(tasks, min(rounds, rows // MIN_ROWS_PER_TASK))
    size, extra = divmod(rows, tasks)
    bounds = [i * size + min(i, extra) for i in range(tasks + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def for_row_slices(work: Callable[[int, int], None], rows: int, threads: int) -> None:
    """work(start, stop) on the row_slices of `rows`, on `threads` threads (on the caller's
    when one, or when one slice): the slices must write disjoint outputs."""
    slices = row_slices(rows, threads)
    if threads <= 1 or len(slices) <= 1:
        for start, stop in slices:
            work(start, stop)
        return
    futures = [_pool(threads).submit(work, start, stop) for start, stop in slices]
    for f in futures:
        f.result()
