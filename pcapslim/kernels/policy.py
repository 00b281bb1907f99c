"""The decorator policy for serial kernels: cached on disk, GIL released, and no reference
counting. The kernels allocate nothing (every array comes from the caller), so numba's runtime
has nothing to manage; with it on, the atomic reference count updates around the calls between
kernels took a third of the forensic pass and a quarter of the default one.

numba checks a cached function against its own source file only, yet a kernel compiles in the
helpers and constants it uses from the other files: an edit there would leave it stale. The
cache locators installed here stamp every kernel with a digest of all those files together.

The cache lives in NUMBA_CACHE_DIR when it is set, else in the user's cache directory
(~/.cache/numba), never beside the sources: an installed package's tree is not a run's to
write, and a cache left there outlives the package (pip does not know it, and a later editable
install of the same package would find that directory in the way).
"""

from __future__ import annotations

import os
from typing import Any

import numba

from ..kernelsources import KERNEL_DIR, sources_digest


def _install_locators() -> None:
    from numba.core import caching

    impl: Any = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or any(getattr(c, "pcapslim", False) for c in impl._locator_classes):
        return
    covering = []
    for name in ("UserProvidedCacheLocator", "UserWideCacheLocator"):
        base = getattr(caching, name, None) or getattr(caching, "_" + name, None)
        if base is None:
            return  # an unknown numba layout: keep its own locators

        class Covering(base):  # type: ignore[misc,valid-type]
            pcapslim = True

            @classmethod
            def from_function(cls, py_func: Any, py_file: str) -> Any:
                if os.path.dirname(os.path.abspath(py_file)) != KERNEL_DIR:
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self) -> Any:
                return sources_digest()

        covering.append(Covering)
    impl._locator_classes = covering + list(impl._locator_classes)


_install_locators()

# `_nrt` is numba's switch for its runtime; its type stubs do not list it
jit = numba.njit(cache=True, nogil=True, _nrt=False)  # type: ignore[call-overload]
# The per-packet decision helpers, inlined into the index kernels whatever LLVM's cost model
# says: numba passes each array as a dozen scalars, and calling them per packet cost the
# default rules a quarter of the index pass and the forensic rules a third.
hot = numba.njit(cache=True, nogil=True, _nrt=False, forceinline=True)  # type: ignore[call-overload]
