"""Keep the services' resident memory from creeping up: glibc malloc tuning, once and per request.

A request allocates hundreds of MB of short-lived numpy/torch buffers from whichever worker
thread serves it. glibc gives each thread its own malloc arena (up to 8 per core) and returns
freed memory to the OS only from the top of each heap, so after a few hundred mixed requests the
freed space sits fragmented across many arenas and RSS keeps rising although nothing leaks
(bench/soak.py measured tens of MB per minute). Two standard remedies, both no-ops where the C
library is not glibc (musl, macOS):

- `limit_arenas(n)`: mallopt(M_ARENA_MAX, n) before the worker threads start (the same as the
  MALLOC_ARENA_MAX environment variable, which wins when set), so freed memory is shared;
- `trim()`: malloc_trim(0) after a request ends, which hands every free page of every arena
  back to the OS (madvise), not only the top of the heap.

Neither touches a value a codec computes: this is purely where the allocator keeps free pages.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("reprocodec.server")

M_ARENA_MAX = -8  # glibc's <malloc.h>
DEFAULT_ARENAS = 2


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


def trim() -> bool:
    """Return free heap pages to the OS; True when glibc released something."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
