"""What the compiled kernels are built from, and how a build is stamped: the one place the kernel
loader (pcapslim.kernelset), the JIT cache (kernels/policy.py), the ahead-of-time build
(kernels/aot.py, setup.py) and `pcap-slim --version` learn it. Standard library only: nothing
here imports NumPy or numba.
"""

from __future__ import annotations

import hashlib
import os
import struct
from functools import lru_cache

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
KERNEL_DIR = os.path.join(PACKAGE_DIR, "kernels")
AOT_NAME = "_aot"  # the compiled module: pcapslim.kernels._aot
STAMP_FILE = AOT_NAME + ".stamp"  # the hex digest it was built from, beside it


def kernel_sources() -> list[str]:
    """Every file the kernels are compiled from: the kernel modules and the constants."""
    names = [f for f in os.listdir(KERNEL_DIR) if f.endswith(".py")]
    return sorted([os.path.join(KERNEL_DIR, f) for f in names]) + [
        os.path.join(PACKAGE_DIR, "constants.py")
    ]


@lru_cache(maxsize=1)
def sources_digest() -> bytes:
    """SHA-256 over the kernel sources: the compiled module's stamp, and the stamp of numba's
    on-disk cache of the JIT kernels (kernels/policy.py)."""
    h = hashlib.sha256()
    for path in kernel_sources():
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.digest()


def stamp_words(digest: bytes) -> tuple[int, int, int, int]:
    """A 32-byte digest as the four int64 words the compiled module's `stamp()` returns."""
    w0, w1, w2, w3 = struct.unpack("<4q", digest)
    return w0, w1, w2, w3
