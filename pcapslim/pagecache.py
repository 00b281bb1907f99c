"""Hints to the kernel about the page cache: map the input ahead of the index pass, and hand the
output to the disk while it is being produced. Both change only when work happens, never what
is read or written; where the C library or the kernel lacks a call, it is simply not made.

They are called through ctypes, which releases the GIL for the call, so that they run beside
the kernels on the other core.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

MADV_POPULATE_READ = 22  # Linux 5.14: fault the pages of a range in, readable
SYNC_FILE_RANGE_WRITE = 2  # start write-back of the dirty pages of a range, do not wait
PAGE = 4096


@cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on


@cache
def _call(name: str, argtypes: tuple[Any, ...]) -> Any:
    try:
        fn = getattr(_libc(), name)
    except AttributeError:
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def populate(address: int, length: int) -> bool:
    """Map the pages of [address, address + length) of a readable mapping; False when the
    kernel cannot (then the pages come in on first touch, as without the hint)."""
    fn = _call("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    address, length = int(address), int(length)  # ctypes takes no NumPy integers
    start = address & ~(PAGE - 1)
    return fn is not None and fn(start, length + (address - start), MADV_POPULATE_READ) == 0


def start_writeback(fd: int, offset: int, count: int) -> bool:
    """Start writing [offset, offset + count) of fd to the disk without waiting for it."""
    fn = _call("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
    return fn is not None and fn(fd, int(offset), int(count), SYNC_FILE_RANGE_WRITE) == 0
