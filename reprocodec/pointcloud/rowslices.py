"""Work split into slices of rows on a small shared thread pool (the compiled kernels release
the GIL). Slices write disjoint outputs and each row's result depends on that row alone, so no
result depends on the slicing or the thread count."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

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


def on_pool(work: Callable[[], Any], threads: int) -> Future:
    """work() on the pool the row slices of `threads` threads use (threads > 1)."""
    return _pool(threads - 1).submit(work)


class InOrder:
    """Work items run one after another on the pool (threads > 1), each started once the one
    before has finished, so that they may carry state from one to the next while the caller
    does other work; with one thread each runs at once, on the caller's. results() waits for
    every item's result, in order (and raises the first error); cancel() drops the items not
    started yet and waits for the one running."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._futures: list[Future] = []

    def submit(self, work: Callable[[], Any]) -> Future:
        """work()'s future (its result: also in results())."""
        if self._threads <= 1:
            done: Future = Future()
            done.set_result(work())
            self._futures.append(done)
            return done
        before = self._futures[-1] if self._futures else None

        def after_before() -> Any:
            if before is not None:
                before.result()  # its error (or cancellation) stops the items after it
            return work()

        self._futures.append(on_pool(after_before, self._threads))
        return self._futures[-1]

    def results(self) -> list[Any]:
        return [f.result() for f in self._futures]

    def cancel(self) -> None:
        for f in reversed(self._futures):  # the last first: none starts after this
            f.cancel()
        for f in self._futures:
            if not f.cancelled():
                f.exception()  # waits for it; its error, if any, is the caller's to drop


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
    RowSlices(work, rows, threads).finish()


class RowSlices:
    """for_row_slices in two steps, so that the caller can do other work between them: made,
    it hands the slices to threads - 1 pool threads at once; finish() has the caller take
    the slices still left, then waits for every slice to be done (and raises the first
    error); cancel() stops the slices not yet taken and waits for the others. With one
    thread, finish() does all the work."""

    def __init__(self, work: Callable[[int, int], None], rows: int, threads: int) -> None:
        self._work = work
        self._slices = row_slices(rows, threads)
        self._pending = iter(self._slices)
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._helpers = []
        if threads > 1 and len(self._slices) > 1:
            self._helpers = [_pool(threads - 1).submit(self._drain)
                             for _ in range(min(threads, len(self._slices)) - 1)]

    def _drain(self) -> None:
        while not self._failed.is_set():
            with self._lock:
                piece = next(self._pending, None)
            if piece is None:
                return
            try:
                self._work(*piece)
            except BaseException:
                self._failed.set()  # the others stop taking slices
                raise

    def finish(self) -> None:
        try:
            self._drain()
        finally:
            self._wait()
        for f in self._helpers:
            if not f.cancelled():
                f.result()  # a helper's error, if the caller's own went through

    def cancel(self) -> None:
        self._failed.set()
        self._wait()

    def _wait(self) -> None:
        for f in self._helpers:  # every slice's writes are done before this returns or raises
            if not f.cancel():  # (a helper still queued behind other calls' has nothing left)
                f.exception()


class Pending:
    """A result being made on the pool (a RowSlices job), or already made (job None):
    result() finishes the job, the caller helping, then returns value(); cancel() stops it
    (the caller gave up on the result)."""

    def __init__(self, value: Callable[[], Any], job: RowSlices | None = None) -> None:
        self._value, self._job = value, job

    def result(self) -> Any:
        if self._job is not None:
            job, self._job = self._job, None
            job.finish()
        return self._value()

    def cancel(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            job.cancel()
