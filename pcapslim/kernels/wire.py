"""Byte access and the Internet checksum.

Every read widens to int64 before arithmetic (numba keeps int(uint8) a uint8, and int64
mixed with uint64 becomes float64), so the JIT-off run computes the
same values as the JIT-on run (NumPy 2 keeps uint8 arithmetic in uint8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .policy import jit

CACHE_LINE = 64
PREFETCH_AHEAD = 2048  # bytes the index kernels keep requested ahead of the record they read


@intrinsic
def _prefetch(typingctx, arr, idx):
    """llvm.prefetch(read, high locality) of &arr[idx]; never faults, whatever idx is."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _memcpy(typingctx, dst, o, src, s, n):
    """llvm.memcpy of n bytes from &src[s] to &dst[o]; the caller checks the bounds."""
    sig = types.void(dst, o, src, s, n)

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        r = context.make_array(signature.args[2])(context, builder, args[2])
        dp = builder.gep(d.data, [args[1]])
        sp = builder.gep(r.data, [args[3]])
        cgutils.raw_memcpy(builder, dp, sp, args[4], 1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _load_be32(typingctx, arr, idx):
    """The big-endian 32-bit word at &arr[idx] (any alignment), widened to int64."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i32 = ir.IntType(32)
        word = builder.load(builder.bitcast(ptr, i32.as_pointer()), align=1, typ=i32)
        bswap = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32]), "llvm.bswap.i32"
        )
        return builder.zext(builder.call(bswap, [word]), ir.IntType(64))

    return sig, codegen


prefetch: Callable[..., Any]
raw_copy: Callable[..., Any]
load_be32: Callable[..., Any]

if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]

    def prefetch(buf, i):
        """A hint only: nothing to do without the JIT."""

    def raw_copy(dst, o, src, s, n):
        dst[o : o + n] = src[s : s + n]

    def load_be32(buf, i):
        return be32(buf, i)

else:
    prefetch = _prefetch
    raw_copy = _memcpy
    load_be32 = _load_be32


@jit
def copy_checked(dst, o, src, s, n):
    """Copy src[s:s+n] to dst[o:o+n]; return o + n, or -1 (nothing copied) when either range
    falls outside its array."""
    if n < 0 or o < 0 or s < 0 or o + n > dst.shape[0] or s + n > src.shape[0]:
        return -1
    raw_copy(dst, o, src, s, n)
    return o + n


@jit
def prefetch_upto(buf, cursor, limit):
    """Request the cache lines from cursor up to limit; return the new cursor. Records are read
    in order, so streaming the bytes ahead hides the memory latency of the record chain."""
    while cursor < limit:
        prefetch(buf, cursor)
        cursor += CACHE_LINE
    return cursor


@jit
def be16(buf, i):
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@jit
def be32(buf, i):
    return (
        (np.int64(buf[i]) << 24)
        | (np.int64(buf[i + 1]) << 16)
        | (np.int64(buf[i + 2]) << 8)
        | np.int64(buf[i + 3])
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
def pad4(n):
    """n rounded up to a multiple of 4 (pcapng padding)."""
    return (n + 3) & ~3


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
    """Unfolded one's complement sum (RFC 1071) of buf[start:start+length]; an odd last byte
    is padded. Adds 32-bit big-endian words: 2**16 = 1 modulo 0xFFFF, so `fold` gives the same
    result as adding 16-bit words."""
    s = 0
    i = start
    stop = start + (length & ~3)
    while i < stop:
        s += load_be32(buf, i)
        i += 4
    if length & 2:
        s += (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])
        i += 2
    if length & 1:
        s += np.int64(buf[i]) << 8
    return s


@jit
def fold(s):
    """One's complement of the folded sum: the checksum field value."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF
