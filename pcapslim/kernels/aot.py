"""The ahead-of-time build: every kernel entry point the engine calls, compiled by numba.pycc into
one extension module, `pcapslim.kernels._aot`, from the same functions the JIT compiles.

setup.py runs `compile_module` at install time. The module needs NumPy only, never numba; it
carries the digest of the kernel sources it was built from (`stamp()`, and a `.stamp` file
beside it that `pcap-slim --version` reads without loading NumPy), and pcapslim.kernelset
uses it only when that digest matches the sources installed with it.

Signatures: input buffers are read-only (a memory map is), everything else is C-contiguous
int64; the forensic flow state is either two arrays or None, as with the JIT, so the default
rules get entry points that contain no forensic code at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from numba import types

from ..kernelsources import AOT_NAME, STAMP_FILE, stamp_words
from .copy import copy_records
from .decide import is_sliced_linktype
from .flows import packet_rows
from .index import index_pcap, index_pcapng

I64 = types.int64
BOOL = types.boolean
NONE = types.none
BUF = types.Array(types.uint8, 1, "C", readonly=True)  # input bytes
OUT = types.Array(types.uint8, 1, "C")  # output bytes
VEC = types.Array(types.int64, 1, "C")
TABLE = types.Array(types.int64, 2, "C")
INDEX_RESULT = types.UniTuple(I64, 4)  # records, next position, status, bytes needed

PCAP_ARGS = (BUF, I64, I64, I64, I64, I64, TABLE, BOOL)  # buf start end le snaplen link rec decide
PCAPNG_ARGS = (BUF, I64, I64, VEC, VEC, VEC, TABLE, BOOL)  # ... state if_link if_snap rec decide

# exported name -> (jitted function, signature)
EXPORTS: dict[str, tuple[Any, Any]] = {
    "index_pcap": (index_pcap, INDEX_RESULT(*PCAP_ARGS, NONE, NONE)),
    "index_pcap_forensic": (index_pcap, INDEX_RESULT(*PCAP_ARGS, TABLE, VEC)),
    "index_pcapng": (index_pcapng, INDEX_RESULT(*PCAPNG_ARGS, NONE, NONE)),
    "index_pcapng_forensic": (index_pcapng, INDEX_RESULT(*PCAPNG_ARGS, TABLE, VEC)),
    "copy_records": (copy_records, I64(BUF, TABLE, I64, OUT, VEC, BOOL)),
    "packet_rows": (packet_rows, I64(BUF, TABLE, I64, BOOL, I64, BOOL, VEC, VEC, TABLE, VEC, VEC)),
    "is_sliced_linktype": (is_sliced_linktype, BOOL(I64)),
}


def _stamp_function(words: tuple[int, int, int, int]) -> Callable[[], tuple[int, ...]]:
    w0, w1, w2, w3 = words

    def stamp():
        return (w0, w1, w2, w3)

    return stamp


@contextmanager
def _releasing_the_gil() -> Iterator[None]:
    """pycc compiles its entry points with default flags, whose Python wrappers hold the GIL
    for the whole call; the JIT policy releases it (nogil=True), and the copy stage and the
    workers are threads that need it released. The flags pycc creates are made to say so."""
    import importlib

    pycc_compiler: Any = importlib.import_module("numba.pycc.compiler")
    base = pycc_compiler.Flags

    class ReleasingFlags(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    pycc_compiler.Flags = ReleasingFlags
    try:
        yield
    finally:
        pycc_compiler.Flags = base


def compile_module(path: str, digest: bytes, verbose: bool = False) -> None:
    """Compile every entry point of EXPORTS, plus `stamp()` giving `digest`, into the extension
    module file `path`, and write the digest beside it (STAMP_FILE, hex)."""
    from numba.pycc import CC  # type: ignore[attr-defined]  # ImportError where numba no longer has its AOT compiler

    cc = CC(AOT_NAME, source_module=__name__)
    cc.output_dir = os.path.dirname(os.path.abspath(path))
    cc.output_file = os.path.basename(path)
    cc.use_nrt = False  # the kernels allocate nothing; no runtime to link in
    cc.verbose = verbose
    for name, (fn, sig) in EXPORTS.items():
        cc.export(name, sig)(fn.py_func)
    cc.export("stamp", types.UniTuple(I64, 4)())(_stamp_function(stamp_words(digest)))
    with _releasing_the_gil():
        cc.compile()
    with open(os.path.join(cc.output_dir, STAMP_FILE), "w") as fh:
        fh.write(digest.hex() + "\n")
