"""Input as read-only uint8 windows: a memory mapping of the whole file, or bounded buffers
filled by sequential reads of the file or of what it decompresses to."""

from __future__ import annotations

import mmap
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from .capdir import check_regular
from .compression import Decompressor, detect
from .follow import Growing
from .helpers import helper, kept
from .pagecache import populate
from .shutdown import quiet_thread

if TYPE_CHECKING:  # numpy.typing costs a run 20 ms to import
    import numpy.typing as npt

    Bytes: TypeAlias = npt.NDArray[np.uint8]


def open_capture(path: str | os.PathLike[str], follow_symlinks: bool = True) -> int:
    """A read-only descriptor of the capture at `path`, opened without blocking (a FIFO or a
    device never holds the caller) and checked to be a regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        check_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Source:
    """A capture file opened for windowed reads; `window` is the only way to its bytes.

    Offsets are in the capture's bytes: the file's own, or, for a compressed file, those of
    what it decompresses to. `disk_size` is the file's size; `codec` names the compression
    (None: none)."""

    disk_size: int
    codec: str | None = None
    # windows stay valid while the next one is indexed (the copy stage may run behind)
    stable_windows: bool = False
    # called with a buffer before it is refilled: whoever may still read it waits for that
    before_refill: Callable[[Bytes], None] | None = None
    # windows before the current one that may still be read (a mapping keeps their pages)
    behind: int = 1

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        """(buf, base, start, end): buf[start:end] holds capture bytes [base+start, base+end),
        starting at pos and running for `want` bytes or to the end of the capture."""
        raise NotImplementedError

    def at_end(self, pos: int) -> bool:
        """Whether the capture is known to end at or before `pos`."""
        raise NotImplementedError

    def progress(self, pos: int) -> tuple[int, int]:
        """(bytes of the file read to reach capture offset pos, the file's size: at least
        that many, for a file still growing while it is read)."""
        return min(pos, self.disk_size), self.disk_size

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


POPULATE_STEP = 1 << 20  # the helper maps a window in in steps of this many bytes


class MappedSource(Source):
    """The whole file mapped read-only; windows are views, nothing is copied.

    Mapping the pages of a file costs about as much as the index pass over them (0.04 s per GiB
    here). A helper thread maps each next window in while the current one is indexed, so the
    index pass finds its pages mapped. Behind the window before the current one (which the copy
    stage may still read) the pages are unmapped again (MADV_DONTNEED: they stay in the page
    cache, and a later read of them maps them back in), so the process's resident size stays
    a few windows whatever the file's size."""

    stable_windows = True

    def __init__(self, fd: int, ahead: bool = True) -> None:
        self.size = self.disk_size = os.fstat(fd).st_size
        self._map: mmap.mmap | None = None
        self._ahead: _Populator | None = None
        self._map_ahead = ahead  # a core to spare for mapping the next window in
        self._last = 0  # where the window before this one began (`behind` 1)
        self._released = 0  # [0, released) is unmapped
        if self.size:
            self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._arr: Bytes = np.frombuffer(self._map, dtype=np.uint8)
        else:
            self._arr = np.zeros(0, dtype=np.uint8)

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        stop = min(pos + want, self.size)
        self._release(min(self._last, pos) if self.behind else pos)
        self._last = pos
        # more to go: map the next window in meanwhile (not behind a read of the file's header)
        if stop < self.size and self._map_ahead and want >= POPULATE_STEP:
            if self._ahead is None:
                self._ahead = _Populator(self._arr.ctypes.data, stop)
            self._ahead.floor = stop
            self._ahead.request(min(stop + want, self.size))
        return self._arr, 0, pos, stop

    def _release(self, upto: int) -> None:
        upto = int(upto)
        end = upto - upto % mmap.PAGESIZE
        if self._map is not None and end > self._released:
            # from a step before: the helper may have been mapping one in as the reader passed
            start = max(0, self._released - POPULATE_STEP)
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            self._released = end

    def at_end(self, pos: int) -> bool:
        return pos >= self.size

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        del self._arr
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it, and
                self._map.madvise(mmap.MADV_DONTNEED)  # holds no pages meanwhile
            self._map = None


class _Populator:
    """Maps ranges of a mapping in, in order, on one helper thread; never below `floor` (what
    the reader has passed already: a helper running late does not map it in again)."""

    def __init__(self, address: int, start: int) -> None:
        self._address = address
        self._requested = start  # [start, requested) is mapped or queued
        self.floor = 0
        self._last: Future[None] | None = None  # the jobs run in order: the last one ends last

    def request(self, upto: int) -> None:
        if upto > self._requested:
            start, self._requested = self._requested, upto
            self._last = helper("map").submit(self._populate, start, upto)

    def _populate(self, start: int, end: int) -> None:
        # in steps, each above the floor as it is then: a range the reader passes meanwhile is
        # not mapped in behind it (it would stay resident)
        for at in range(start, end, POPULATE_STEP):
            lo = max(at, self.floor)
            hi = min(at + POPULATE_STEP, end)
            if hi > lo:
                populate(self._address + lo, hi - lo)

    def close(self) -> None:
        """Wait for the helper: the mapping must outlive every range it maps."""
        if self._last is not None:
            self._last.result()


class StreamSource(Source):
    """Sequential reads into two buffers used in turn: while the copy stage still reads one
    window, the next is read into the other. A buffer grows only when a single record needs
    it. `read_into(view, offset)` fills a view with the bytes at `offset` (0 at the end)."""

    stable_windows = True

    def __init__(
        self, read_into: Callable[[memoryview, int], int], capacity: int, disk_size: int
    ) -> None:
        self._read_into = read_into
        self.disk_size = disk_size
        # this thread's pair for every file it reads (fresh ones would be faulted in afresh:
        # more than the reads of a small file); a buffer grown for one record is this file's
        self._bufs: list[Bytes] = list(
            kept(("stream", capacity), lambda: [np.empty(capacity, np.uint8) for _ in range(2)])
        )
        self._cur = 0  # the buffer of the current window
        self._base = 0  # capture offset of the current buffer's first byte
        self._filled = 0  # valid bytes in the current buffer
        self._eof = False  # the capture ends at self._base + self._filled

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        if pos < self._base:
            raise ValueError("a stream source reads forward only")
        stop = pos + want
        end = self._base + self._filled
        if stop > end and not self._eof:
            keep_from = pos - self._base
            keep = max(self._filled - keep_from, 0)
            nxt = 1 - self._cur
            if want > self._bufs[nxt].shape[0]:
                self._bufs[nxt] = np.empty(want, dtype=np.uint8)
            elif self.before_refill is not None:
                self.before_refill(self._bufs[nxt])
            new = self._bufs[nxt]
            new[:keep] = self._bufs[self._cur][keep_from : keep_from + keep]
            self._cur, self._base, self._filled = nxt, pos, keep
            view = memoryview(new)  # type: ignore[arg-type]
            while self._filled < want:
                got = self._read_into(view[self._filled : want], self._base + self._filled)
                if got == 0:
                    self._eof = True
                    break
                self._filled += got
            end = self._base + self._filled
        return self._bufs[self._cur], self._base, pos - self._base, min(stop, end) - self._base

    def at_end(self, pos: int) -> bool:
        return self._eof and pos >= self._base + self._filled

    def progress(self, pos: int) -> tuple[int, int]:
        return pos, max(self.disk_size, pos)  # a followed file grows past its first size

    def close(self) -> None:
        pass


class PrefetchSource(Source):
    """A stream read ahead on a helper thread, straight into the buffers the windows are.

    The helper fills segments (SEGMENT bytes each, behind HEADROOM free bytes) in turn while
    the engine indexes the current one and the copy stage copies the one before. A window
    that must carry the unfinished record at the end of the last one moves it into the next
    segment's headroom, so the bytes are written once, by the decompressor, and read where
    they landed. Windows may be shorter than asked where the rest of the current segment is
    too long to carry (the engine indexes what it gets and asks again from where it
    stopped); asked again at the same place, a window holds all that was asked, gathered
    into a buffer of its own if it must (a record larger than a segment)."""

    stable_windows = True
    SEGMENT = 4 << 20
    HEADROOM = 256 << 10
    BUFFERS = 3  # the window before the current one, the current one, the next being filled

    def __init__(
        self,
        read_into: Callable[[memoryview, int], int],
        capacity: int,
        disk_size: int,
        consumed: Callable[[], int] | None = None,
    ) -> None:
        self.disk_size = disk_size
        self._consumed = consumed
        self._segment = self.segment_for(capacity)
        self._head = min(self.HEADROOM, self._segment)
        self._ahead = _Prefetcher(read_into, self._segment, self._head, self.BUFFERS)
        self._buf: Bytes = np.empty(0, dtype=np.uint8)  # the current window's array
        self._held: list[Bytes] = []  # helper buffers the current window lives in
        self._prev: tuple[Bytes, list[Bytes]] | None = None  # the same for the window before
        self._base = 0  # capture offset of self._buf[0]
        self._lo = self._hi = 0  # self._buf[lo:hi] holds capture bytes
        self._eof = False  # the capture ends at self._base + self._hi
        self._short_at = -1  # where the last window shorter than asked began

    @classmethod
    def segment_for(cls, capacity: int) -> int:
        """The bytes of each segment read ahead for windows of `capacity` bytes."""
        return max(1, min(capacity, cls.SEGMENT))

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        if pos < self._base + self._lo:
            raise ValueError("a stream source reads forward only")
        end = self._base + self._hi
        keep = end - pos  # bytes of the current window from pos on
        if keep < 0:
            raise ValueError("a stream source cannot skip bytes it has not handed out")
        if pos + want > end and not self._eof:
            if keep > self._head and pos != self._short_at:
                self._short_at = pos  # too long to carry: indexed where it is
            else:
                self._next(pos, keep, want)
                end = self._base + self._hi
        return self._buf, self._base, pos - self._base, min(pos + want, end) - self._base

    def _next(self, pos: int, keep: int, want: int) -> None:
        if self._prev is not None:  # no one reads the window before the current one any more
            buf, held = self._prev
            if self.before_refill is not None:
                self.before_refill(buf)
            for b in held:
                self._ahead.give(b)
        carried = self._buf[self._hi - keep : self._hi] if keep > 0 else self._buf[:0]
        seg, n = self._ahead.take()
        eof = n < self._segment
        if keep > self._head or (keep + n < want and not eof and pos == self._short_at):
            new, hi, eof = self._gather(carried, seg, n, want, eof)
            lo, held = 0, []
        else:
            new, lo, hi, held = seg, self._head - keep, self._head + n, [seg]
            new[lo : self._head] = carried
            if keep + n < want and not eof:
                self._short_at = pos
        self._prev = (self._buf, self._held)
        self._buf, self._held = new, held
        self._base, self._lo, self._hi, self._eof = pos - lo, lo, hi, eof

    def _gather(
        self, carried: Bytes, seg: Bytes, n: int, want: int, eof: bool
    ) -> tuple[Bytes, int, bool]:
        """(a buffer of its own holding the carried bytes and whole segments after them until
        `want` bytes or the end, its byte count, whether the stream ended). Each segment goes
        back to the helper once copied, so that it can go on filling."""
        keep = len(carried)
        out = np.empty(max(want + self._segment, keep + n), dtype=np.uint8)
        out[:keep] = carried
        total = keep
        while True:
            out[total : total + n] = seg[self._head : self._head + n]
            total += n
            self._ahead.give(seg)
            if total >= want or eof:
                return out, total, eof
            seg, n = self._ahead.take()
            eof = n < self._segment

    def at_end(self, pos: int) -> bool:
        return self._eof and pos >= self._base + self._hi

    def progress(self, pos: int) -> tuple[int, int]:
        done = pos if self._consumed is None else self._consumed()
        return done, max(self.disk_size, done)

    def close(self) -> None:
        self._ahead.close()


class _Prefetcher:
    """Fills buffers from `read_into` on a helper thread, in order, each with `segment` bytes
    behind `head` free ones (fewer only at the end); an error reaches the reader where it
    happened in the stream."""

    def __init__(
        self, read_into: Callable[[memoryview, int], int], segment: int, head: int, count: int
    ) -> None:
        self._source = read_into
        self._segment, self._head = segment, head
        self._full: queue.Queue[tuple[Bytes, int] | BaseException] = queue.Queue()
        self._free: queue.Queue[Bytes] = queue.Queue()
        # this thread's buffers for every stream it reads (fresh ones are faulted in afresh)
        for buf in kept(("segments", head + segment, count), lambda: [
            np.empty(head + segment, dtype=np.uint8) for _ in range(count)
        ]):  # fmt: skip
            self._free.put(buf)
        self._stop = threading.Event()
        self._ended = False  # the reader has taken the last buffer, or an error
        self._thread = threading.Thread(target=self._produce, name="pcapslim-read", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        quiet_thread()
        offset = 0
        try:
            while not self._stop.is_set():
                buf = self._free.get()
                if self._stop.is_set():
                    break
                view = memoryview(buf)[self._head :]  # type: ignore[arg-type]
                n = 0
                while n < self._segment:
                    got = self._source(view[n:], offset + n)
                    if got == 0:
                        break
                    n += got
                offset += n
                self._full.put((buf, n))
                if n < self._segment:
                    return  # the end
        except BaseException as e:  # delivered to the reader, in order
            self._full.put(e)

    def take(self) -> tuple[Bytes, int]:
        """The next filled buffer and its byte count (short of a segment: the last one)."""
        if self._ended:
            return np.empty(self._head, dtype=np.uint8), 0
        item = self._full.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._ended = item[1] < self._segment
        return item

    def give(self, buf: Bytes) -> None:
        """A buffer taken earlier that no one reads any more."""
        self._free.put(buf)

    def close(self) -> None:
        self._stop.set()
        self._free.put(np.empty(0, dtype=np.uint8))  # wake the helper if it waits for room
        while self._thread.is_alive():
            try:
                self._full.get(timeout=0.05)  # or for the reader to take a buffer
            except queue.Empty:
                pass
        self._thread.join()


def _file_reader(fd: int, follow: Growing | None) -> Callable[[memoryview, int], int]:
    """read_into for the file itself (with `follow`, for a file still being written)."""

    def read_into(view: memoryview, offset: int) -> int:
        def read() -> int:
            return os.preadv(fd, [view], offset)

        return read() if follow is None else follow.read_at(read, offset)

    return read_into


def buffered_source(fd: int, capacity: int, follow: Growing | None = None) -> Source:
    """Sequential reads of the file itself (with `follow`, of a file still being written)."""
    return StreamSource(_file_reader(fd, follow), capacity, os.fstat(fd).st_size)


# a file read ahead on a helper thread spans more than this many segments: a smaller one is
# read whole before its pass could start, and the thread's start is all the helper adds
READ_AHEAD_MIN_SEGMENTS = 2


class DecompressedSource(PrefetchSource):
    """What a gzip or zstd file decompresses to, as a stream decompressed ahead."""

    def __init__(
        self, fd: int, codec: str, capacity: int, path: str, follow: Growing | None = None
    ) -> None:
        self.codec = codec
        self._dec = Decompressor(fd, codec, path, follow)

        def read_into(view: memoryview, offset: int) -> int:
            return self._dec.readinto(view)

        super().__init__(read_into, capacity, self._dec.disk_size, lambda: self._dec.consumed)

    def close(self) -> None:
        super().close()
        self._dec.close()


def open_source(
    fd: int,
    use_mmap: bool,
    capacity: int,
    path: str = "",
    follow: Growing | None = None,
    spare_core: bool = True,
) -> Source:
    """A compressed file (by its magic bytes) is always read as a stream; a plain one is
    mapped, or read in a stream when use_mmap is false. With `spare_core`, helper threads map
    the next window in, or read a file of several segments ahead. With `follow`, the file is
    still being written: it is read as a stream that waits at its end until the writer is
    done."""
    if follow is not None:
        follow.wait_beyond(3)
    codec = detect(os.pread(fd, 4, 0))
    if codec is not None:
        return DecompressedSource(fd, codec, capacity, path, follow)
    if use_mmap and follow is None:
        return MappedSource(fd, spare_core)
    size = os.fstat(fd).st_size
    segment = PrefetchSource.segment_for(capacity)
    if spare_core and follow is None and size > READ_AHEAD_MIN_SEGMENTS * segment:
        return PrefetchSource(_file_reader(fd, None), capacity, size)
    return buffered_source(fd, capacity, follow)
