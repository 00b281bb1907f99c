"""Which kernels a run uses: compiled ahead of time, or by numba's JIT.

setup.py compiles the kernels of pcapslim.kernels into an extension module at install time
(pcapslim.kernels._aot, see kernels/aot.py). A run uses it when it is installed and was built
from the kernel sources installed beside it (its stamp is their digest); otherwise numba's JIT
compiles the same functions. PCAPSLIM_KERNELS=auto|aot|jit forces a choice; "aot" fails with a
clear message when the module is missing or stale.

The compiled module needs NumPy only, so a run on it never imports numba or llvmlite. Its entry
points take exactly the types they were compiled for and, unlike numba's dispatcher, cannot
check them: the set wraps them in checks of dtype, layout, shape and writability.

Nothing here imports NumPy or numba before a kernel set is loaded: `describe()` (for
`pcap-slim --version`) reads only the stamp file beside the module.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from .constants import FS_PROBES, N_FIELDS, N_FSTATE, N_PFIELDS, N_STATE, N_TFIELDS
from .errors import KernelChoiceError
from .kernelsources import AOT_NAME, KERNEL_DIR, STAMP_FILE, sources_digest, stamp_words

ENV = "PCAPSLIM_KERNELS"
AUTO, AOT, JIT = "auto", "aot", "jit"
CHOICES = (AUTO, AOT, JIT)


def choice() -> str:
    value = os.environ.get(ENV, AUTO).strip().lower() or AUTO
    if value not in CHOICES:
        raise KernelChoiceError(f"{ENV}={value!r}: choose one of {', '.join(CHOICES)}")
    return value


def module_file() -> str | None:
    """The compiled module's file, when one is installed."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(KERNEL_DIR, AOT_NAME + suffix)
        if os.path.exists(path):
            return path
    return None


def aot_problem() -> str | None:
    """Why the compiled module cannot be used, as far as its files tell (None: it can)."""
    if module_file() is None:
        return "compiled module missing"
    try:
        with open(os.path.join(KERNEL_DIR, STAMP_FILE)) as fh:
            stamp = fh.read().strip()
    except OSError:
        return "compiled module has no stamp file"
    if stamp != sources_digest().hex():
        return "compiled module stale: built from other kernel sources"
    return None


def describe() -> str:
    """Which kernels a run would use, and why, for `pcap-slim --version`."""
    wanted = choice()
    if wanted == JIT:
        return f"jit — {ENV}=jit"
    problem = aot_problem()
    if problem is None:
        return "ahead-of-time"
    if wanted == AOT:
        return f"none — {ENV}=aot, but {problem}"
    return f"jit — {problem}"


@dataclass(frozen=True)
class KernelSet:
    """The entry points the engine calls. `fallback` says why the JIT stands in for the
    compiled module ("" when it does not, or when the JIT was asked for)."""

    kind: str  # AOT or JIT
    fallback: str
    # (buf, start, end, le, snaplen, linktype, rec, decide) -> (n, next, status, need)
    index_pcap: Callable[..., tuple[int, int, int, int]]
    # (buf, start, end, state, if_link, if_snap, rec, decide) -> (n, next, status, need)
    index_pcapng: Callable[..., tuple[int, int, int, int]]
    # the same, followed by the forensic flow table and clock (SPEC §8)
    index_pcap_forensic: Callable[..., tuple[int, int, int, int]]
    index_pcapng_forensic: Callable[..., tuple[int, int, int, int]]
    copy_records: Callable[..., int]  # (buf, rec, n, out, out_off, pcapng) -> status
    packet_rows: Callable[..., int]  # see kernels/flows.py
    is_sliced_linktype: Callable[[int], bool]


def active() -> KernelSet:
    """The kernel set of this process, as PCAPSLIM_KERNELS asks (default: auto)."""
    return load(choice())


@cache
def load(wanted: str) -> KernelSet:
    if wanted == JIT:
        return _jit_set("")
    problem = aot_problem()
    if problem is None:
        try:
            module = importlib.import_module(f"{__package__}.kernels.{AOT_NAME}")
        except ImportError as e:
            problem = f"compiled module does not load ({e})"
        else:
            if tuple(module.stamp()) == stamp_words(sources_digest()):
                return _aot_set(module)
            problem = "compiled module stale: its stamp differs from the kernel sources"
    if wanted == AOT:
        raise KernelChoiceError(
            f"{ENV}=aot, but the compiled kernels cannot be used ({problem}); reinstall pcapslim "
            f"(pip install .) where a C compiler is available, or unset {ENV} to use the JIT"
        )
    return _jit_set(problem)


def _jit_set(fallback: str) -> KernelSet:
    from .kernels.copy import copy_records
    from .kernels.decide import is_sliced_linktype
    from .kernels.flows import packet_rows
    from .kernels.index import index_pcap, index_pcapng

    def pcap(buf, start, end, le, snaplen, link, rec, decide):  # type: ignore[no-untyped-def]
        return index_pcap(buf, start, end, le, snaplen, link, rec, decide, None, None)

    def pcapng(buf, start, end, state, if_link, if_snap, rec, decide):  # type: ignore[no-untyped-def]
        return index_pcapng(buf, start, end, state, if_link, if_snap, rec, decide, None, None)

    return KernelSet(
        JIT,
        fallback,
        pcap,
        pcapng,
        index_pcap,
        index_pcapng,
        copy_records,
        packet_rows,
        is_sliced_linktype,
    )


# --- checks in front of the compiled entry points ------------------------------------------
_U8 = "|u1"
_I64 = "<i8" if sys.byteorder == "little" else ">i8"


def _array(a: Any, dtype: str, ndim: int, what: str, writable: bool = False) -> None:
    try:
        ok = (
            a.dtype.str == dtype
            and a.ndim == ndim
            and a.flags.c_contiguous
            and (a.flags.writeable or not writable)
        )
    except AttributeError:
        ok = False
    if not ok:
        kind = "writable " if writable else ""
        raise TypeError(f"{what} must be a {kind}C-contiguous {ndim}-d array of {dtype}")


def _table(a: Any, columns: int, what: str) -> None:
    _array(a, _I64, 2, what, writable=True)
    if a.shape[1] != columns:
        raise TypeError(f"{what} must have {columns} columns, not {a.shape[1]}")


def _vector(a: Any, length: int, what: str) -> None:
    _array(a, _I64, 1, what, writable=True)
    if a.shape[0] < length:
        raise TypeError(f"{what} must hold at least {length} values")


def _rows(rec: Any, n: int) -> None:
    _table(rec, N_FIELDS, "the record table")
    if not 0 <= n <= rec.shape[0]:
        raise ValueError(f"{n} records do not fit a table of {rec.shape[0]} rows")


def _flow_state(ftable: Any, fstate: Any) -> None:
    _table(ftable, N_TFIELDS, "the flow table")
    rows = ftable.shape[0]
    if rows == 0 or rows & (rows - 1):
        raise ValueError("the flow table needs a power-of-two number of rows")
    _vector(fstate, N_FSTATE, "the flow state")
    if not 1 <= fstate[FS_PROBES] <= rows:
        raise ValueError("the flow table is probed 1 to its row count slots at a time")


def _interfaces(state: Any, if_link: Any, if_snap: Any) -> None:
    _vector(state, N_STATE, "the pcapng state")
    _vector(if_link, 0, "the interface link types")
    _vector(if_snap, if_link.shape[0], "the interface snaplens")


def _aot_set(m: Any) -> KernelSet:
    def pcap(buf, start, end, le, snaplen, link, rec, decide):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _rows(rec, 0)
        return m.index_pcap(buf, start, end, le, snaplen, link, rec, decide, None, None)

    def pcap_forensic(buf, start, end, le, snaplen, link, rec, decide, ftable, fstate):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _rows(rec, 0)
        _flow_state(ftable, fstate)
        return m.index_pcap_forensic(
            buf, start, end, le, snaplen, link, rec, decide, ftable, fstate
        )

    def pcapng(buf, start, end, state, if_link, if_snap, rec, decide):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _interfaces(state, if_link, if_snap)
        _rows(rec, 0)
        return m.index_pcapng(buf, start, end, state, if_link, if_snap, rec, decide, None, None)

    def pcapng_forensic(buf, start, end, state, if_link, if_snap, rec, decide, ftable, fstate):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _interfaces(state, if_link, if_snap)
        _rows(rec, 0)
        _flow_state(ftable, fstate)
        return m.index_pcapng_forensic(
            buf, start, end, state, if_link, if_snap, rec, decide, ftable, fstate
        )

    def copy(buf, rec, n, out, out_off, is_pcapng):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _rows(rec, n)
        _array(out, _U8, 1, "the output buffer", writable=True)
        _vector(out_off, n, "the output offsets")
        return m.copy_records(buf, rec, n, out, out_off, is_pcapng)

    def rows(buf, rec, n, is_pcapng, le, nanosecond, state, tsres, out, a, b):  # type: ignore[no-untyped-def]
        _array(buf, _U8, 1, "the input")
        _rows(rec, n)
        _vector(state, N_STATE, "the pcapng state")
        _vector(tsres, 0, "the interface resolutions")
        _table(out, N_PFIELDS, "the packet rows")
        if out.shape[0] < n:
            raise ValueError(f"{n} packets do not fit {out.shape[0]} packet rows")
        _vector(a, 4, "endpoint scratch a")
        _vector(b, 4, "endpoint scratch b")
        return m.packet_rows(buf, rec, n, is_pcapng, le, nanosecond, state, tsres, out, a, b)

    return KernelSet(
        AOT,
        "",
        pcap,
        pcapng,
        pcap_forensic,
        pcapng_forensic,
        copy,
        rows,
        m.is_sliced_linktype,
    )
