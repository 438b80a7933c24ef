"""The compile cache's key (reprocodec/kernels.py): a kernel's cached machine code is not used
once any kernel source changed, not only the kernel's own file."""

from __future__ import annotations

import shutil

import numba  # the server extra, which the tests run with (the light client has no kernels)
import numpy as np
from numba.core import caching

from reprocodec import kernels


def _locator(fn):
    return fn._cache._impl.locator  # the locator of the dispatcher's own cache


def test_the_stamp_covers_every_kernel_source(tmp_path):
    """Editing a module a kernel calls into (vectorops' intrinsics, the safeguard's hash keys)
    changes the stamp; a module outside KERNEL_SOURCES does not."""
    for name in kernels.KERNEL_SOURCES:
        source = kernels.PACKAGE / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    shutil.copy(kernels.PACKAGE / "container.py", tmp_path / "container.py")
    assert kernels.sources_stamp(tmp_path) == kernels.sources_stamp()
    before = kernels.sources_stamp(tmp_path)
    (tmp_path / "container.py").write_text("# not a kernel source\n")
    assert kernels.sources_stamp(tmp_path) == before
    for edited in ("pointcloud/vectorops.py", "safeguard/hashing.py", "entropy.py"):
        path = tmp_path / edited
        text = path.read_bytes()
        path.write_bytes(text + b"\n")
        assert kernels.sources_stamp(tmp_path) != before, edited
        path.write_bytes(text)
    assert kernels.sources_stamp(tmp_path) == before


def test_package_kernels_are_keyed_on_the_sources_and_others_are_not():
    """numba keys this package's cached functions on (its own key, sources_stamp()): those
    whose code comes partly from other modules (native's network kernel: vectorops'
    intrinsics; the safeguard's syndromes: hashing's keys) as much as the others. A function
    outside the package keeps numba's own key."""
    from reprocodec.pointcloud import native
    from reprocodec.safeguard import native as safeguard_native

    stamp = kernels.sources_stamp()
    for fn in (native._logits_kernel, safeguard_native.syndromes_kernel):
        own, keyed = _locator(fn).get_source_stamp()
        assert keyed == stamp and own != stamp

    def outside(x):  # pragma: no cover - compiled
        return x + 1

    fn = numba.njit(cache=True)(outside)  # (tests/ is outside the package)
    assert not isinstance(_locator(fn).get_source_stamp(), tuple)
    assert fn(np.int64(1)) == 2


def test_compiled_is_the_one_decorator():
    """compiled(fn) and compiled(**options)(fn) compile with the cache and without the GIL."""
    def add(a, b):  # pragma: no cover - compiled
        return a + b

    plain, inlined = kernels.compiled(add), kernels.compiled(inline="always")(add)
    for fn in (plain, inlined):
        assert fn.targetoptions["nogil"] and isinstance(fn._cache, caching.FunctionCache)
        assert fn(2, 3) == 5
    assert inlined.targetoptions["inline"] == "always"
