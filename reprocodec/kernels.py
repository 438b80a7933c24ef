"""numba for the package's compiled kernels (None in the light client install, which has no
numba: the same functions then run as Python), their one decorator `compiled`, and a compile
cache that knows what the kernels are built from.

numba's cache keys a compiled function on its own file's contents only. A kernel's machine
code also holds what it calls or reads in other modules, compiled into it: vectorops' vector
intrinsics, entropy's inlined rANS steps, nodecontext's contexts, module constants such as
the safeguard's hash keys. A checkout that changed only those would load the old machine code
from the cache, silently: a decision path running code that is not the source. So every
function of this package that numba caches is keyed here on the contents of all its kernel
sources (KERNEL_SOURCES) as well: changing any of them recompiles each kernel on its next
first call. Functions outside the package keep numba's own key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

try:
    import numba
    from numba.core import caching
except ImportError:  # the light client install
    numba = None  # type: ignore[assignment]

PACKAGE = Path(__file__).resolve().parent
# The modules with kernels, and those whose functions or constants the kernels compile in
KERNEL_SOURCES = ("kernels.py", "entropy.py", "pointcloud", "safeguard")


def sources_stamp(root: Path = PACKAGE) -> bytes:
    """SHA-256 of the kernel sources under `root` (each file's relative path and bytes, in
    sorted order)."""
    paths: list[Path] = []
    for name in KERNEL_SOURCES:
        path = root / name
        paths.extend(path.rglob("*.py") if path.is_dir() else [path])
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def _key_on_sources() -> None:
    """Make numba's cache locators key this package's functions on sources_stamp() too (the
    sources this process runs: read once, here). A numba without this private class keeps
    its own keys (tests/test_kernels.py then fails: the pinned range has it)."""
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    if mixin is None:
        return
    numba_stamp = mixin.get_source_stamp
    if getattr(numba_stamp, "keyed_on_sources", False):
        return
    stamp = sources_stamp()

    def get_source_stamp(self):
        own = numba_stamp(self)
        return (own, stamp) if Path(self._py_file).resolve().is_relative_to(PACKAGE) else own

    get_source_stamp.keyed_on_sources = True  # type: ignore[attr-defined]
    mixin.get_source_stamp = get_source_stamp


if numba is not None:
    _key_on_sources()


def compiled(fn=None, **options):
    """numba.njit(cache=True, nogil=True, **options)(fn) (nogil: concurrent requests run in
    parallel), or fn itself without numba. As @compiled or @compiled(inline="always")."""
    if fn is None:
        return lambda f: compiled(f, **options)
    return numba.njit(cache=True, nogil=True, **options)(fn) if numba is not None else fn
