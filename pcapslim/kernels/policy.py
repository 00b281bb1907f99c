"""The one decorator policy for serial kernels: cached on disk, GIL released."""

from __future__ import annotations

import numba

jit = numba.njit(cache=True, nogil=True)
