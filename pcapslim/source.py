"""Input as read-only uint8 windows: a memory mapping of the whole file, or a bounded buffer
filled by sequential reads."""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from .pagecache import populate

if TYPE_CHECKING:  # numpy.typing costs a run 20 ms to import
    import numpy.typing as npt

    Bytes: TypeAlias = npt.NDArray[np.uint8]


class Source:
    """A capture file opened for windowed reads; `window` is the only way to its bytes."""

    size: int

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        """(buf, base, start, end): buf[start:end] holds file bytes [base+start, base+end),
        starting at pos and running for `want` bytes or to the end of the file."""
        raise NotImplementedError

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


class MappedSource(Source):
    """The whole file mapped read-only; windows are views, nothing is copied.

    Mapping the pages of a file costs about as much as the index pass over them (0.04 s per GiB
    here). A helper thread maps each next window in while the current one is indexed, so the
    index pass finds its pages mapped."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self._map: mmap.mmap | None = None
        self._ahead: _Populator | None = None
        if self.size:
            self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._arr: Bytes = np.frombuffer(self._map, dtype=np.uint8)
        else:
            self._arr = np.zeros(0, dtype=np.uint8)

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        stop = min(pos + want, self.size)
        if stop < self.size:  # more than this window to go: map the next one meanwhile
            if self._ahead is None:
                self._ahead = _Populator(self._arr.ctypes.data, stop)
            self._ahead.request(min(stop + want, self.size))
        return self._arr, 0, pos, stop

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        del self._arr
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it
                pass
            self._map = None


class _Populator:
    """Maps ranges of a mapping in, in order, on one helper thread."""

    def __init__(self, address: int, start: int) -> None:
        self._address = address
        self._requested = start  # [start, requested) is mapped or queued
        self._pool = ThreadPoolExecutor(1, "pcapslim-map")

    def request(self, upto: int) -> None:
        if upto > self._requested:
            start, self._requested = self._requested, upto
            self._pool.submit(populate, self._address + start, upto - start)

    def close(self) -> None:
        """Wait for the helper: the mapping must outlive every range it maps."""
        self._pool.shutdown(wait=True)


class BufferedSource(Source):
    """Sequential reads into one buffer that grows only when a single record needs it."""

    def __init__(self, fd: int, capacity: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size
        self._buf: Bytes = np.empty(capacity, dtype=np.uint8)
        self._base = 0  # file offset of self._buf[0]
        self._filled = 0  # valid bytes in self._buf

    def window(self, pos: int, want: int) -> tuple[Bytes, int, int, int]:
        if pos < self._base:
            raise ValueError("BufferedSource reads forward only")
        stop = min(pos + want, self.size)
        if stop > self._base + self._filled:
            keep_from = pos - self._base
            keep = max(self._filled - keep_from, 0)
            need = stop - pos
            if need > self._buf.shape[0]:
                grown = np.empty(need, dtype=np.uint8)
                grown[:keep] = self._buf[keep_from : keep_from + keep]
                self._buf = grown
            elif keep:
                self._buf[:keep] = self._buf[keep_from : keep_from + keep].copy()
            self._base = pos
            self._filled = keep
            view = memoryview(self._buf)  # type: ignore[arg-type]
            while self._base + self._filled < stop:
                got = os.preadv(self._fd, [view[self._filled :]], self._base + self._filled)
                if got == 0:  # the file shrank under us; the caller sees a short window
                    break
                self._filled += got
            stop = min(stop, self._base + self._filled)
        return self._buf, self._base, pos - self._base, stop - self._base

    def close(self) -> None:
        pass


def open_source(fd: int, use_mmap: bool, capacity: int) -> Source:
    if use_mmap:
        return MappedSource(fd)
    return BufferedSource(fd, capacity)
