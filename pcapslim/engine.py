"""The slimming pipeline: windows of input -> index kernel -> plan -> copy kernel -> writer.

Memory stays bounded by the window size and the record budget, whatever the file size; the
only exception is a single record larger than a window, which gets a window of its own size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from .constants import (
    CATEGORY_NAMES,
    F_CAT,
    F_END,
    F_KIND,
    F_LINK,
    F_OUTLEN,
    F_START,
    F_TUNNEL,
    FLOW_PROBES,
    FLOW_SLOTS,
    FS_PROBES,
    KIND_OTHER_PACKET,
    KIND_SHB,
    MAX_CAPLEN,
    N_CATEGORIES,
    N_FIELDS,
    N_FSTATE,
    N_STATE,
    N_TFIELDS,
    RULES_COMPATIBLE,
    RULES_FORENSIC,
    ST_BAD_BLOCK_LEN,
    ST_BAD_EPB,
    ST_BAD_IDB,
    ST_BAD_OPB,
    ST_BAD_SHB,
    ST_CORRUPT_CAPLEN,
    ST_IFACE_FULL,
    ST_LEN_MISMATCH,
    ST_NEED_MORE,
    ST_OK,
    TUNNEL_NAMES,
)
from .errors import CorruptCaptureError, PcapslimError
from .follow import Growing
from .formats import CaptureFormat, detect_format
from .helpers import helper, kept
from .kernelset import KernelSet, active
from .offsetmap import OffsetMapWriter
from .sinks import CompressedSink, FdSink, Sink
from .source import Source, open_source
from .stats import SlimStats

WINDOW_BYTES = 8 << 20  # input bytes indexed per kernel call, at most
# Every window in flight is resident (mapped pages count in a process's resident size): one
# file checked holds two (the current one and the one mapped ahead), one slimmed three (the
# copy stage reads the one before) plus its output and the re-read of its tmp. The window of a
# run is what keeps those under RESIDENT_WINDOWS_BYTES whatever the files' sizes.
RESIDENT_WINDOWS_BYTES = 12 << 20
MIN_WINDOW_BYTES = 1 << 20
IN_PLACE_MIN_WINDOW_BYTES = 2 << 20  # slimming up to two files at once
VERIFY_WINDOW_BYTES = 1 << 20  # the re-read of a tmp only counts its records: small windows
VERIFY_MAX_RECORDS = 1 << 12  # and small record tables
MAX_RECORDS = 1 << 14  # rows of the record table per kernel call (about 1.7 MB: stays in cache)
SECTION_LEN_OFF = 16  # offset of the section length inside a section header block
UNSPECIFIED_SECTION_LEN = b"\xff" * 8  # -1 in either byte order

ProgressCallback = Callable[[int, int], None]  # (input bytes done, input bytes total)
if TYPE_CHECKING:
    import numpy.typing as npt

    from .source import Bytes

    # (buf, records, count)
    WindowCallback: TypeAlias = Callable[[Bytes, npt.NDArray[np.int64], int], None]

_STATUS_TEXT = {
    ST_BAD_BLOCK_LEN: "block length is below 12 or not a multiple of 4",
    ST_LEN_MISMATCH: "leading and trailing block lengths differ",
    ST_BAD_SHB: "section header block is shorter than 28 bytes or has an unknown byte-order magic",
    ST_BAD_IDB: "interface description block is shorter than 20 bytes",
    ST_BAD_EPB: "enhanced packet block is shorter than 32 bytes or its captured length does "
    "not fit in it",
    ST_BAD_OPB: "packet block is shorter than 32 bytes or its captured length does not fit in it",
}


class _Rewrite(Exception):
    """A compressed output needs section lengths set behind its end: write it again, with the
    patches made on the way (output offsets)."""

    def __init__(self, patches: list[int]) -> None:
        self.patches = patches


class _Sections:
    """pcapng sections whose size changed get their section length set to -1."""

    def __init__(self) -> None:
        self.shb_out: int | None = None  # output offset of the current section header
        self.specified = False  # its section length is not -1 already
        self.delta = 0  # output minus input bytes of the current section
        self.patches: list[int] = []

    def feed(
        self,
        buf: Bytes,
        rec: npt.NDArray[np.int64],
        n: int,
        out_base: int,
        out_off: npt.NDArray[np.int64],
    ) -> None:
        kinds = rec[:n, F_KIND]
        delta = rec[:n, F_OUTLEN] - (rec[:n, F_END] - rec[:n, F_START])
        prev = 0
        for k in np.flatnonzero(kinds == KIND_SHB):
            self.delta += int(delta[prev:k].sum())
            self.close()
            self.shb_out = out_base + int(out_off[k])
            at = int(rec[k, F_START]) + SECTION_LEN_OFF
            self.specified = bytes(buf[at : at + 8]) != UNSPECIFIED_SECTION_LEN
            self.delta = 0
            prev = int(k)
        self.delta += int(delta[prev:n].sum())

    def close(self) -> None:
        if self.shb_out is not None and self.delta != 0 and self.specified:
            self.patches.append(self.shb_out + SECTION_LEN_OFF)


def count_window(
    stats: SlimStats,
    rec: npt.NDArray[np.int64],
    n: int,
    cat_counts: npt.NDArray[np.int64],
    linktype: int | None,
) -> None:
    """Add a window's records to the counts; `linktype` is every record's link type when the
    format has only one (classic pcap: every record is a packet of the file's link type)."""
    stats.records += n
    cat_counts += np.bincount(rec[:n, F_CAT], minlength=N_CATEGORIES)
    tunnels = rec[:n, F_TUNNEL]
    if tunnels.any():  # packets found inside tunnels (SPEC §10), by kind
        for bit, name in enumerate(TUNNEL_NAMES):
            stats.tunnels[name] += int(np.count_nonzero(tunnels & (1 << bit)))
    if linktype is not None:
        stats.in_pkts += n
        key = str(linktype)
        stats.linktypes[key] = stats.linktypes.get(key, 0) + n
        return
    kinds = rec[:n, F_KIND]
    packets = kinds <= KIND_OTHER_PACKET
    stats.in_pkts += int(np.count_nonzero(packets))
    links = rec[:n, F_LINK][packets]
    links = links[links >= 0]
    if links.size and links.min() == links.max():  # the common case: one link type
        key = str(int(links[0]))
        stats.linktypes[key] = stats.linktypes.get(key, 0) + int(links.size)
    elif links.size:
        values, counts = np.unique(links, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            stats.linktypes[str(v)] = stats.linktypes.get(str(v), 0) + c


def window_for(in_place: bool, concurrency: int, forensic: bool = False) -> int:
    """The window of a run that slims (or only checks) `concurrency` files at once; under the
    forensic rules, whose flow table (16 MiB) is resident beside the windows, half as much."""
    per_file = RESIDENT_WINDOWS_BYTES // max(1, concurrency) // (2 if forensic else 1)
    window = per_file // (5 if in_place else 2)
    # slimmed in windows of 1 MiB, two files at once took 13 % longer than in 2 MiB ones (4 x
    # 256 MiB here), for 8 MiB less resident
    least = IN_PLACE_MIN_WINDOW_BYTES if in_place and concurrency <= 2 else MIN_WINDOW_BYTES
    return max(least, min(WINDOW_BYTES, window - window % (1 << 20)))


def process(
    path: str,
    fd: int,
    sink: Sink | None,
    *,
    on_progress: ProgressCallback | None = None,
    use_mmap: bool = True,
    spare_core: bool = True,
    window_bytes: int = WINDOW_BYTES,
    max_records: int = MAX_RECORDS,
    decide: bool = True,
    on_window: WindowCallback | None = None,
    rules: str = RULES_COMPATIBLE,
    flow_slots: int = FLOW_SLOTS,
    flow_probes: int = FLOW_PROBES,
    offsets: OffsetMapWriter | None = None,
    compress_level: int | None = None,
    follow: Growing | None = None,
) -> SlimStats:
    """Slim the capture open on `fd` into `sink` (or only analyse it when sink is None).
    With decide=False nothing is cut: the records are only found and counted. `on_window` sees
    every indexed window (the buffer and its filled record-table rows) before it is copied.
    `rules` is "compatible" (SPEC §1) or "forensic" (SPEC §8); the forensic rules keep their
    state in a table of `flow_slots` directions (a power of two), probing `flow_probes` slots
    before the least recently used one is taken over. `offsets` is fed every record's old and
    new position.

    A gzip or zstd file is read through its decompressor, and slimmed into the same
    compression (at `compress_level`, the codec's default when None); analysed, it is
    compressed only to count the bytes a slim copy would take. With `spare_core`, helper
    threads map the next window in, copy and compress beside the index pass."""
    if rules not in (RULES_COMPATIBLE, RULES_FORENSIC):
        raise ValueError(f"rules must be {RULES_COMPATIBLE!r} or {RULES_FORENSIC!r}, not {rules!r}")
    if flow_slots < 1 or flow_slots & (flow_slots - 1) or not 1 <= flow_probes <= flow_slots:
        raise ValueError("flow_slots must be a power of two and flow_probes within 1..flow_slots")
    t0 = time.perf_counter()
    stats = SlimStats(path=path, rules=rules)
    forensic = rules == RULES_FORENSIC and decide
    run = _Run(
        path,
        sink,
        stats,
        on_progress,
        on_window,
        window_bytes,
        max_records,
        decide,
        forensic,
        active(),
        flow_slots,
        flow_probes,
        offsets,
        spare_core,
    )
    out: CompressedSink | None = None
    inline: list[int] = []  # output offsets of section lengths to set on the way
    try:
        while True:
            with open_source(fd, use_mmap, window_bytes, path, follow, spare_core) as src:
                src.behind = 1 if sink is not None else 0  # the copy stage reads the window before
                stats.in_bytes = src.disk_size
                stats.compression = src.codec
                head_buf, _, h0, h1 = src.window(0, 24)
                head = bytes(head_buf[h0:h1])
                del head_buf  # no view outlives the source: its mapping closes with it
                fmt = detect_format(head, path, src.codec)
                stats.format = fmt.name
                if src.codec is not None and decide and out is None:
                    if sink is not None and not isinstance(sink, FdSink):
                        raise TypeError("a compressed slim copy is written to a file (an FdSink)")
                    out = CompressedSink(sink, src.codec, compress_level, spare_core)
                    run.sink = out
                try:
                    out_pos, end = _run(run, src, fmt, inline)
                except _Rewrite as again:  # the second pass knows every patch in advance
                    assert out is not None and not inline
                    inline = again.patches
                    out.restart()
                    stats = run.stats = SlimStats(path=path, rules=rules)
                    continue
                if follow is not None:  # its size was not known when reading began
                    stats.in_bytes = src.progress(end)[0]
            break
    except BaseException:
        if out is not None:
            out.abandon()
        raise
    stats.in_bytes_uncompressed = end
    stats.out_bytes_uncompressed = out_pos
    if out is not None:
        out.finish()
        stats.out_bytes = out.disk_bytes
        if sink is None and stats.truncated == 0 and out_pos == end:
            stats.out_bytes = stats.in_bytes  # nothing to cut: in place, it stays as it is
    else:
        stats.out_bytes = out_pos
    stats.elapsed_ms = int((time.perf_counter() - t0) * 1000)
    return stats


class _CopyStage:
    """Copies and writes one window on a background thread while the next one is indexed.

    At most one job is in flight. Each job owns one of two record tables and one of two output
    buffers, so the main thread fills the other pair meanwhile. Without a sink nothing runs;
    with a buffered source (whose buffer the next window reuses) the jobs run inline.
    """

    def __init__(
        self,
        path: str,
        sink: Sink | None,
        pcapng: bool,
        window_bytes: int,
        max_records: int,
        pipelined: bool,
        kernels: KernelSet,
        inline: list[int],
    ) -> None:
        self.path = path
        self.kernels = kernels
        self.inline = inline  # output offsets where the section length becomes -1
        self.out_pos = 0  # output offset of the next job's first byte
        self.sink = sink
        self.pcapng = pcapng
        self.window_bytes = window_bytes
        # two record tables and two output buffers, this thread's for every file it takes
        self.recs: list[npt.NDArray[np.int64]] = kept(
            ("records", max_records),
            lambda: [np.zeros((max_records, N_FIELDS), dtype=np.int64) for _ in range(2)],
        )
        self.outs: list[Bytes] = kept("outputs", lambda: [np.empty(0, dtype=np.uint8)] * 2)
        self.submitted = 0
        self._pool = helper("copy") if pipelined and sink else None
        self._pending: Future[None] | None = None
        self._pending_buf: Bytes | None = None  # the input the job in flight reads

    @property
    def rec(self) -> npt.NDArray[np.int64]:
        """The record table the next window is indexed into."""
        return self.recs[self.submitted % 2]

    def submit(self, buf: Bytes, n: int, out_off: npt.NDArray[np.int64], total: int) -> None:
        self.wait()
        slot = self.submitted % 2
        self.submitted += 1
        if self.sink is None:
            return
        if self.outs[slot].shape[0] < total:
            self.outs[slot] = np.empty(max(total, self.window_bytes), dtype=np.uint8)
        args = (buf, self.recs[slot], n, self.outs[slot], out_off, total, self.out_pos)
        self.out_pos += total
        if self._pool is None:
            self._copy_and_write(*args)
        else:
            self._pending = self._pool.submit(self._copy_and_write, *args)
            self._pending_buf = buf

    def release(self, buf: Bytes) -> None:
        """`buf` is about to be overwritten: let the job in flight finish if it reads it."""
        if self._pending is not None and self._pending_buf is buf:
            self.wait()

    def _copy_and_write(
        self,
        buf: Bytes,
        rec: npt.NDArray[np.int64],
        n: int,
        out: Bytes,
        out_off: npt.NDArray[np.int64],
        total: int,
        at: int,
    ) -> None:
        assert self.sink is not None
        if self.kernels.copy_records(buf, rec, n, out, out_off, self.pcapng) != 0:
            raise PcapslimError(
                f"{self.path}: internal error: the output plan does not fit its buffer near "
                f"byte offset {int(rec[0, F_START])}; nothing was replaced (please report this)"
            )
        for off in self.inline:
            if at <= off < at + total:
                out[off - at : off - at + 8] = 0xFF  # section length -1, in either byte order
        # the other output buffer is the next job's: this one is not written again before
        # the sink's next write
        self.sink.write_held(out[:total])

    def write_raw(self, data: Bytes) -> None:
        self.wait()
        if self.sink is not None:
            self.sink.write(data)
        self.out_pos += len(data)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()


@dataclass
class _Run:
    """What one call of `process` was asked to do."""

    path: str
    sink: Sink | None
    stats: SlimStats
    on_progress: ProgressCallback | None
    on_window: WindowCallback | None
    window_bytes: int
    max_records: int
    decide: bool  # decide packets (false: only find and check the records)
    forensic: bool  # by the rules of SPEC §8 instead of §1
    kernels: KernelSet
    flow_slots: int  # forensic direction table: rows
    flow_probes: int  # and slots probed per lookup
    offsets: OffsetMapWriter | None  # where every record goes
    spare_core: bool  # copy on a helper thread beside the index pass


def _run(run: _Run, src: Source, fmt: CaptureFormat, inline: list[int]) -> tuple[int, int]:
    """(output bytes, capture bytes read)."""
    stage = _CopyStage(
        run.path,
        run.sink,
        fmt.name == "pcapng",
        run.window_bytes,
        run.max_records,
        pipelined=src.stable_windows and run.spare_core,
        kernels=run.kernels,
        inline=inline,
    )
    src.before_refill = stage.release
    try:
        result = _index_all(run, src, fmt, stage)
        stage.wait()
    finally:
        stage.close()
        src.before_refill = None
    return result


def _index_all(run: _Run, src: Source, fmt: CaptureFormat, stage: _CopyStage) -> tuple[int, int]:
    path, stats, decide, window_bytes = run.path, run.stats, run.decide, run.window_bytes
    ks = run.kernels
    cat_counts = np.zeros(N_CATEGORIES, dtype=np.int64)
    state = np.zeros(N_STATE, dtype=np.int64)
    flow_table = np.zeros((run.flow_slots, N_TFIELDS), dtype=np.int64) if run.forensic else None
    flow_state = None
    if run.forensic:
        flow_state = np.zeros(N_FSTATE, dtype=np.int64)
        flow_state[FS_PROBES] = run.flow_probes
    if_link = np.zeros(16, dtype=np.int64)
    if_snap = np.zeros(16, dtype=np.int64)
    sections = _Sections()
    pcapng = fmt.name == "pcapng"
    pos = fmt.header_len
    if pos:
        buf, _, s, _ = src.window(0, pos)
        stage.write_raw(buf[s : s + pos])
    out_pos = pos
    want = window_bytes
    while not src.at_end(pos):
        buf, base, start, end = src.window(pos, want)
        rec = stage.rec
        n, nxt, status, need = index_window(
            ks, fmt, buf, start, end, rec, decide, state, if_link, if_snap, flow_table, flow_state
        )
        if n:
            out_off, total = output_offsets(rec, n)
            if pcapng:
                sections.feed(buf, rec, n, out_pos, out_off)
            if run.offsets is not None:
                run.offsets.add(base + rec[:n, F_START], out_pos + out_off)
            count_window(stats, rec, n, cat_counts, None if pcapng else fmt.linktype)
            if run.on_window is not None:
                run.on_window(buf, rec, n)
            stage.submit(buf, n, out_off, total)
            out_pos += total
        record_no = stats.records + 1  # the record the status speaks of
        pos = base + nxt
        want = window_bytes
        if status == ST_NEED_MORE:
            if src.at_end(base + end):  # the file ends inside this record: keep it verbatim
                tail = base + end - pos
                stage.write_raw(buf[pos - base : end])
                stats.tail_bytes = tail
                out_pos += tail
                pos = base + end
            elif n == 0:
                want = max(window_bytes, need)
        elif status == ST_IFACE_FULL:
            if_link = np.concatenate([if_link, np.zeros_like(if_link)])
            if_snap = np.concatenate([if_snap, np.zeros_like(if_snap)])
        elif status == ST_CORRUPT_CAPLEN:  # the kernel gives the captured length in `need`
            raise CorruptCaptureError(
                path,
                record_no,
                pos,
                f"captured length {need} exceeds {MAX_CAPLEN} bytes and the snaplen",
            )
        elif status != ST_OK:
            raise CorruptCaptureError(path, record_no, pos, _STATUS_TEXT[status])
        if run.on_progress is not None:
            run.on_progress(*src.progress(pos))
    sections.close()
    stage.wait()
    if stage.sink is not None and sections.patches and not stage.inline:
        if not stage.sink.seekable:
            raise _Rewrite(sections.patches)
        for off in sections.patches:
            stage.sink.patch(off, UNSPECIFIED_SECTION_LEN)
    finish_counts(stats, cat_counts, ks)
    return int(out_pos), int(pos)


def index_window(
    ks: KernelSet,
    fmt: CaptureFormat,
    buf: Bytes,
    start: int,
    end: int,
    rec: npt.NDArray[np.int64],
    decide: bool,
    state: npt.NDArray[np.int64],
    if_link: npt.NDArray[np.int64],
    if_snap: npt.NDArray[np.int64],
    flow_table: npt.NDArray[np.int64] | None,
    flow_state: npt.NDArray[np.int64] | None,
) -> tuple[int, int, int, int]:
    """Index buf[start:end] with the kernel for the format and the rules (a flow table: the
    forensic ones): (records, where indexing stopped, status, bytes needed)."""
    if fmt.name == "pcapng":
        if flow_table is None:
            return ks.index_pcapng(buf, start, end, state, if_link, if_snap, rec, decide)
        return ks.index_pcapng_forensic(
            buf, start, end, state, if_link, if_snap, rec, decide, flow_table, flow_state
        )
    le = int(fmt.little_endian)
    if flow_table is None:
        return ks.index_pcap(buf, start, end, le, fmt.snaplen, fmt.linktype, rec, decide)
    return ks.index_pcap_forensic(
        buf, start, end, le, fmt.snaplen, fmt.linktype, rec, decide, flow_table, flow_state
    )


def output_offsets(rec: npt.NDArray[np.int64], n: int) -> tuple[npt.NDArray[np.int64], int]:
    """Where each of records 0..n-1 starts in the window's output, and the output's size."""
    outlen = rec[:n, F_OUTLEN]
    out_off = np.empty(n, dtype=np.int64)
    out_off[0] = 0
    np.cumsum(outlen[:-1], out=out_off[1:])
    return out_off, int(out_off[-1] + outlen[-1])


def finish_counts(stats: SlimStats, cat_counts: npt.NDArray[np.int64], ks: KernelSet) -> None:
    """The per-category counts of a whole capture, and its link types no rule slices."""
    for code, name in enumerate(CATEGORY_NAMES, start=1):
        stats.truncated_by[name] = int(cat_counts[code])
    stats.truncated = int(cat_counts[1:].sum())
    stats.unsliced_linktypes = sorted(
        int(k) for k in stats.linktypes if not ks.is_sliced_linktype(int(k))
    )
