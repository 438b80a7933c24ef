"""Keep the services' resident memory from creeping up: glibc malloc tuning, once and per request.

A request allocates hundreds of MB of short-lived numpy/torch buffers from whichever worker
thread serves it. glibc gives each thread its own malloc arena (up to 8 per core) and returns
freed memory to the OS only from the top of each heap, so after a few hundred mixed requests the
freed space sits fragmented across many arenas and RSS keeps rising although nothing leaks
(bench/soak.py measured tens of MB per minute). Two standard remedies, both no-ops where the C
library is not glibc (musl, macOS):

- `limit_arenas(n)`: mallopt(M_ARENA_MAX, n) before the worker threads start (the same as the
  MALLOC_ARENA_MAX environment variable, which wins when set), so freed memory is shared;
- `trim()`: malloc_trim(0), which hands every free page of every arena back to the OS
  (madvise), not only the top of the heap: `IdleTrim` calls it once the service has been idle
  a moment after a request (not between back-to-back requests, which would fault the pages in
  again).

and one for speed within a request, `fix_thresholds(mb)`: see there.

None of them touches a value a codec computes: this is purely where the allocator keeps free
pages.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading

log = logging.getLogger("reprocodec.server")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's <malloc.h>
DEFAULT_ARENAS = 2
DEFAULT_MMAP_MB = 32  # glibc's own ceiling for its dynamic mmap threshold (64-bit)
DEFAULT_TRIM_DELAY = 1.0  # seconds without a request before IdleTrim trims
# ... and at once after a request whose memory estimate (server.core.request_memory) is at
# least this: its freed heap is large, and faulting it in again is a small share of such a
# request's time. A 0.97 M-point sweep's decode (estimate 765 MiB), back to back in one
# process: 1.32-1.40 s and a peak of 486 MiB untrimmed, 1.23-1.37 s and 453 MiB trimmed
# before each (the first decode's freed buffers were not reused as they fell).
TRIM_AFTER_BYTES = 640 << 20


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before worker threads allocate). True when applied; an
    operator's MALLOC_ARENA_MAX in the environment is left to glibc."""
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ or arenas <= 0:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def fix_thresholds(mmap_mb: int = DEFAULT_MMAP_MB) -> bool:
    """Fix glibc's mmap threshold at `mmap_mb` MiB and its trim threshold at twice that (0:
    keep glibc's dynamic ones). glibc starts both low (128 KiB) and raises them only as
    mmapped blocks are freed, and every thread's arena gives its heap top back to the OS
    past the trim threshold: a request's many short-lived buffers of 0.1-30 MB went back and
    were faulted in again within the same request. A 5,908-point cloud's encode and decode
    took ~1,200 page faults and 7-9 ms of system time each time on a 2-vCPU VM, none and 0.9
    ms with the thresholds fixed (its encode's median 14.9 -> 12.0 ms). Larger blocks are
    still mmapped and unmapped when freed, and trim() returns the rest after each request;
    a 2 M-point surface's encode peaked at 479 MB instead of 455, a 1 M-point scan's at 517
    instead of 515 (one encode a process). True when applied; an operator's
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ in the environment is left to glibc."""
    if _LIBC is None or mmap_mb <= 0 or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    mmap = int(mmap_mb) << 20
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, mmap)) and \
        bool(_LIBC.mallopt(M_TRIM_THRESHOLD, 2 * mmap))


def trim() -> bool:
    """Return free heap pages to the OS; True when glibc released something."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class IdleTrim:
    """trim() once no request has run for `delay` seconds (0: as soon as none runs), and at
    once after a large request (end(large=True): TRIM_AFTER_BYTES). The service calls
    begin() when a request starts using memory and end() when it is done.
    Trimming after every request handed back pages the next request faulted in again: on a
    2-vCPU VM, back to back, a 30 k-point cloud's encode took 1.24 times as long (min of 15,
    50 -> 62 ms) and a 106 k-point LiDAR sweep's 1.17 times; between bursts the heap still
    goes back (the soak's concern: RSS at rest)."""

    def __init__(self, delay: float = DEFAULT_TRIM_DELAY) -> None:
        if delay < 0:
            raise ValueError(f"trim delay {delay} s is negative")
        self.delay = delay
        self._lock = threading.Lock()
        self._running = 0
        self._pending = 0  # the armed timer's number (0: none armed)
        self._armed = 0  # timers armed so far
        self._timer: threading.Timer | None = None

    def begin(self) -> None:
        with self._lock:
            self._running += 1
            self._disarm()

    def end(self, large: bool = False) -> None:
        with self._lock:
            self._running -= 1
            if not large and self._running:
                return  # the last request to end arms the timer
            if not large and self.delay > 0:
                self._armed += 1
                self._pending = self._armed
                self._timer = threading.Timer(self.delay, self._fire, args=(self._armed,))
                self._timer.daemon = True
                self._timer.start()
                return
            self._disarm()  # trimmed now: no timer needed
        trim()

    def close(self) -> None:
        """Cancel a pending trim (the service is stopping)."""
        with self._lock:
            self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._pending = None, 0

    def _fire(self, number: int) -> None:
        with self._lock:
            if number != self._pending or self._running:  # disarmed, or a request came
                return
            self._timer, self._pending = None, 0
        trim()  # (outside the lock: a request may start meanwhile, as glibc allows)
