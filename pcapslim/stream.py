"""The streaming filter (`pcap-slim -`): a capture read from a pipe, slimmed record by record as
it arrives, written to another pipe or to a file.

A packet is written as soon as the read that brought it returns: a read takes what the pipe
holds (a slow `tcpdump -U` hands over a packet at a time), and while more is already waiting it
reads on, up to a batch, so that a fast producer still gets large writes. The decisions are the
kernels' own, with the forensic rules' table kept across the whole stream; memory is bounded by
the batch and the largest record. A pcapng section length cannot be patched on a pipe: every
section header goes out with its length -1 (unspecified). The input ending inside a record (the
capture process was killed): every complete record is slimmed, the rest is kept verbatim
(SPEC §4). A stop (SIGTERM, SIGINT) ends at the next record boundary: the output is whole
records. A reader that goes away (EPIPE) ends the run quietly.
"""

from __future__ import annotations

import os
import select
import signal
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from .compression import GZIP, ZSTD, detect, require
from .constants import (
    F_KIND,
    FLOW_PROBES,
    FLOW_SLOTS,
    FS_PROBES,
    KIND_SHB,
    MAX_CAPLEN,
    N_CATEGORIES,
    N_FIELDS,
    N_FSTATE,
    N_STATE,
    N_TFIELDS,
    RULES_FORENSIC,
    ST_CORRUPT_CAPLEN,
    ST_IFACE_FULL,
    ST_NEED_MORE,
    ST_OK,
)
from .engine import (
    _STATUS_TEXT,
    MAX_RECORDS,
    SECTION_LEN_OFF,
    UNSPECIFIED_SECTION_LEN,
    count_window,
    finish_counts,
    index_window,
    output_offsets,
)
from .errors import CorruptCaptureError, PcapslimError, UnknownFormatError
from .formats import MIN_FILE_LEN, detect_format
from .kernelset import active
from .stats import SlimStats

READ_BYTES = 1 << 20  # one read, at most (a pipe holds 64 KiB unless it was made larger)
PIPE_BYTES = 1 << 20  # the size asked for an input pipe: fewer, larger reads
BATCH_BYTES = 4 << 20  # reads taken back to back while more is waiting, before they are slimmed
POLL_S = 0.1  # how often a wait for input looks whether the run was asked to stop


class ReaderGone(Exception):
    """The reader of the output went away (EPIPE)."""


class _Input:
    """The capture's bytes from a file descriptor (a pipe or a file), decompressed when they
    start with a gzip or zstd magic."""

    def __init__(self, fd: int, stopping: Callable[[], bool]) -> None:
        self.fd = fd
        self.stopping = stopping
        self.eof = False
        self.raw_bytes = 0
        self._decompress: Callable[[bytes], bytes] | None = None
        self._pending = b""  # the first bytes, read to tell the codec
        self.codec: str | None = None

    def start(self) -> None:
        try:  # a larger pipe: a fast producer is read in fewer calls (Linux; best effort)
            import fcntl

            fcntl.fcntl(self.fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass  # not a pipe, or above the system's limit: the default size
        while len(self._pending) < 4 and not self.eof:
            self._pending += self._read_raw(READ_BYTES)
        self.codec = detect(self._pending)
        if self.codec == ZSTD:
            require(ZSTD)
            import zstandard

            d = zstandard.ZstdDecompressor().decompressobj()
            self._decompress = d.decompress
        elif self.codec == GZIP:
            gz = [zlib.decompressobj(zlib.MAX_WBITS | 16)]

            def gunzip(data: bytes) -> bytes:  # members one after another, as gzip allows
                out = gz[0].decompress(data)
                while gz[0].eof and gz[0].unused_data:
                    rest = gz[0].unused_data
                    gz[0] = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    out += gz[0].decompress(rest)
                return out

            self._decompress = gunzip

    def _read_raw(self, n: int) -> bytes:
        """Up to n bytes: what is there once something is; b"" at the end or on a stop."""
        while True:
            if self.stopping():
                return b""
            ready, _, _ = select.select([self.fd], [], [], POLL_S)
            if ready:
                data = os.read(self.fd, n)
                if not data:
                    self.eof = True
                self.raw_bytes += len(data)
                return data

    def read(self) -> bytes:
        """The next bytes of the capture: one read, then more while more is already waiting."""
        if self._pending:
            first, self._pending = self._pending, b""
        else:
            first = self._read_raw(READ_BYTES)
        chunks, size = [first], len(first)
        while first and size < BATCH_BYTES and not self.eof:
            if not select.select([self.fd], [], [], 0)[0]:
                break
            more = self._read_raw(READ_BYTES)
            if not more:
                break
            chunks.append(more)
            size += len(more)
        data = b"".join(chunks) if len(chunks) > 1 else first
        return self._decompress(data) if self._decompress is not None and data else data


def slim_stream(
    fd_in: int,
    write: Callable[[bytes | memoryview], None],
    *,
    rules: str = "compatible",
    name: str = "-",
    stopping: Callable[[], bool] = lambda: False,
) -> SlimStats:
    """Slim the capture read from fd_in, handing every slim byte to `write` as soon as it is
    made. Raises UnknownFormatError (nothing written) when the input is no capture,
    CorruptCaptureError after the records before a corrupt one."""
    t0 = time.perf_counter()
    stats = SlimStats(path=name, rules=rules)
    inp = _Input(fd_in, stopping)
    inp.start()
    stats.compression = inp.codec
    buf = bytearray()
    while len(buf) < MIN_FILE_LEN and not inp.eof and not stopping():
        buf += inp.read()
    fmt = detect_format(bytes(buf[:MIN_FILE_LEN]), name, inp.codec)
    stats.format = fmt.name
    pcapng = fmt.name == "pcapng"
    ks = active()
    forensic = rules == RULES_FORENSIC
    table = np.zeros((FLOW_SLOTS, N_TFIELDS), dtype=np.int64) if forensic else None
    fstate = np.zeros(N_FSTATE, dtype=np.int64)
    fstate[FS_PROBES] = FLOW_PROBES
    state = np.zeros(N_STATE, dtype=np.int64)
    if_link = np.zeros(16, dtype=np.int64)
    if_snap = np.zeros(16, dtype=np.int64)
    rec = np.zeros((MAX_RECORDS, N_FIELDS), dtype=np.int64)
    cat_counts = np.zeros(N_CATEGORIES, dtype=np.int64)
    read_total = len(buf)
    out_total = 0
    if fmt.header_len:
        write(bytes(buf[: fmt.header_len]))
        out_total = fmt.header_len
        del buf[: fmt.header_len]
    while True:
        view = np.frombuffer(buf, dtype=np.uint8) if buf else np.zeros(0, dtype=np.uint8)
        n, pos, status, need = index_window(
            ks, fmt, view, 0, len(buf), rec, True, state, if_link, if_snap, table, fstate
        )
        if n:
            out_off, total = output_offsets(rec, n)
            out = np.empty(total, dtype=np.uint8)
            if ks.copy_records(view, rec, n, out, out_off, pcapng) != 0:
                raise PcapslimError(f"{name}: a record fell outside its buffer (a bug)")
            if pcapng:  # no section length can be patched later on a pipe: unspecified
                for i in np.flatnonzero(rec[:n, F_KIND] == KIND_SHB).tolist():
                    at = int(out_off[i]) + SECTION_LEN_OFF
                    out[at : at + 8] = np.frombuffer(UNSPECIFIED_SECTION_LEN, dtype=np.uint8)
            count_window(stats, rec, n, cat_counts, None if pcapng else fmt.linktype)
            del view
            write(out.data)
            out_total += len(out)
        else:
            del view
        if status == ST_CORRUPT_CAPLEN:
            raise CorruptCaptureError(name, stats.records + 1, read_total - len(buf) + pos,
                                      f"captured length {need} exceeds {MAX_CAPLEN} bytes and "
                                      "the snaplen")  # fmt: skip
        if status not in (ST_OK, ST_NEED_MORE, ST_IFACE_FULL):
            raise CorruptCaptureError(name, stats.records + 1, read_total - len(buf) + pos,
                                      _STATUS_TEXT[status])  # fmt: skip
        del buf[:pos]
        if status == ST_IFACE_FULL:
            if_link = np.concatenate([if_link, np.zeros_like(if_link)])
            if_snap = np.concatenate([if_snap, np.zeros_like(if_snap)])
            continue
        if status == ST_OK and n == MAX_RECORDS:
            continue  # the record table was full: the rest of the buffer next
        if stopping():
            break  # whole records written: the one in hand is not complete
        data = inp.read()
        if not data:
            if stopping():
                break  # a stop: whole records only, even when the input ended meanwhile
            if inp.eof and buf:  # the input ends inside a record: kept verbatim (SPEC §4)
                write(bytes(buf))
                stats.tail_bytes = len(buf)
                out_total += len(buf)
                buf.clear()
            if inp.eof:
                break
            continue
        buf += data
        read_total += len(data)
    finish_counts(stats, cat_counts, ks)
    stats.in_bytes = inp.raw_bytes
    stats.in_bytes_uncompressed = read_total
    stats.out_bytes = stats.out_bytes_uncompressed = out_total
    stats.elapsed_ms = int((time.perf_counter() - t0) * 1000)
    return stats


class StopFlag:
    """SIGTERM and SIGINT set it: the stream ends at the next record boundary."""

    def __init__(self) -> None:
        self.set = False
        self._saved: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.set

    def __enter__(self) -> StopFlag:
        def handler(signum: int, frame: object) -> None:
            self.set = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)


def fd_writer(fd: int) -> Callable[[bytes | memoryview], None]:
    """Every byte to fd, in order; ReaderGone when its reader went away."""

    def write(data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            raise ReaderGone from None

    return write


__all__ = ["ReaderGone", "StopFlag", "UnknownFormatError", "fd_writer", "slim_stream"]


class FileOutput:
    """A slim copy written to a file the way pcap-slim writes files: into a tmp beside it,
    fsynced, renamed over the name, the directory fsynced; a reader never sees a partial file.
    A name ending .gz or .zst is compressed (each batch flushed, so the file follows the
    stream)."""

    def __init__(self, path: str) -> None:
        import tempfile

        self.path = os.path.abspath(path)
        d, base = os.path.split(self.path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
        self.fd = fd
        self._raw = fd_writer(fd)
        self._compress: Callable[[bytes | memoryview], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        self._end: Callable[[], bytes] | None = None
        if self.path.endswith(".zst"):
            require(ZSTD)
            import zstandard

            z = zstandard.ZstdCompressor(level=3).compressobj()
            self._compress = z.compress
            self._flush = lambda: z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._end = z.flush
        elif self.path.endswith(".gz"):
            g = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            self._compress = g.compress
            self._flush = lambda: g.flush(zlib.Z_SYNC_FLUSH)
            self._end = g.flush
        self.disk_bytes = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._compress is not None and self._flush is not None:
            data = self._compress(data) + self._flush()
        self.disk_bytes += len(data)
        self._raw(data)

    def commit(self) -> None:
        if self._end is not None:
            tail = self._end()
            self.disk_bytes += len(tail)
            self._raw(tail)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.path)
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
