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
    """work(start, stop) on the row_slices of `rows`, on `threads` threads: the caller's and
    threads - 1 of the pool's, each taking the next slice not yet taken until none is left
    (one thread: the caller's alone). The slices must write disjoint outputs. The caller
    works rather than waits: on two cores, handing every slice to two pool threads and
    waking the caller after cost a wake-up each way per pass, and made the neighbour-coded
    LiDAR sweep slower to decode on two threads than on one."""
    slices = row_slices(rows, threads)
    if threads <= 1 or len(slices) <= 1:
        for start, stop in slices:
            work(start, stop)
        return
    pending = iter(slices)
    lock = threading.Lock()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            with lock:
                piece = next(pending, None)
            if piece is None:
                return
            try:
                work(*piece)
            except BaseException:
                failed.set()  # the others stop taking slices
                raise

    helpers = [_pool(threads - 1).submit(drain) for _ in range(min(threads, len(slices)) - 1)]
    try:
        drain()
    finally:
        for f in helpers:  # every slice's writes are done before this returns or raises
            if not f.cancel():  # (a helper still queued behind other calls' has nothing left)
                f.exception()
    for f in helpers:
        if not f.cancelled():
            f.result()  # a helper's error, if the caller's own went through
