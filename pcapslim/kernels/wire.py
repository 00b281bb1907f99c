"""Byte access and the Internet checksum.

Every read widens to int64 before arithmetic (numba keeps int(uint8) a uint8, and int64
mixed with uint64 becomes float64), so the JIT-off run computes the
same values as the JIT-on run (NumPy 2 keeps uint8 arithmetic in uint8).
"""

from __future__ import annotations

import numpy as np

from .policy import jit


@jit
def be16(buf, i):
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@jit
def be32(buf, i):
    return (
        (np.int64(buf[i]) << 24) | (np.int64(buf[i + 1]) << 16) | (np.int64(buf[i + 2]) << 8) | np.int64(buf[i + 3])
    )


@jit
def u16(buf, i, le):
    if le:
        return np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)
    return be16(buf, i)


@jit
def u32(buf, i, le):
    if le:
        return (
            np.int64(buf[i])
            | (np.int64(buf[i + 1]) << 8)
            | (np.int64(buf[i + 2]) << 16)
            | (np.int64(buf[i + 3]) << 24)
        )
    return be32(buf, i)


@jit
def put16be(buf, i, v):
    buf[i] = (v >> 8) & 0xFF
    buf[i + 1] = v & 0xFF


@jit
def put32(buf, i, v, le):
    if le:
        buf[i] = v & 0xFF
        buf[i + 1] = (v >> 8) & 0xFF
        buf[i + 2] = (v >> 16) & 0xFF
        buf[i + 3] = (v >> 24) & 0xFF
    else:
        buf[i] = (v >> 24) & 0xFF
        buf[i + 1] = (v >> 16) & 0xFF
        buf[i + 2] = (v >> 8) & 0xFF
        buf[i + 3] = v & 0xFF


@jit
def sum16(buf, start, length):
    """Unfolded sum of big-endian 16-bit words (RFC 1071); an odd last byte is padded."""
    s = 0
    i = start
    stop = start + length - 1
    while i < stop:
        s += (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])
        i += 2
    if length & 1:
        s += np.int64(buf[start + length - 1]) << 8
    return s


@jit
def fold(s):
    """One's complement of the folded sum: the checksum field value."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF
