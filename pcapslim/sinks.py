"""Where slim bytes go: a file descriptor (with write-back started early, and a reader that may
follow it), a compressor in front of one, or only a count of what a compressed copy would take.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .compression import Compressor
from .follow import Growing
from .helpers import helper
from .pagecache import start_writeback

if TYPE_CHECKING:
    from .source import Bytes
    from .throttle import IoThrottle

WRITEBACK_BYTES = 16 << 20  # output handed to the disk in steps of this size


class Sink(Protocol):
    """Where slim bytes go: appended in order, plus 8-byte patches at earlier offsets where
    the sink is `seekable`."""

    seekable: bool

    def write(self, data: Bytes) -> None: ...

    def write_held(self, data: Bytes) -> None:
        """Write `data`, which the caller leaves as it is until its next write to this sink
        or the sink's end: the sink may keep it instead of a copy."""

    def patch(self, offset: int, data: bytes) -> None: ...


class FdSink:
    """Writes to an open file descriptor; patches go to already written bytes.

    With `writeback`, every WRITEBACK_BYTES written are handed to the disk at once
    (sync_file_range, which does not wait), so that the fsync at the end has little left to do
    instead of writing the whole file after the work is done."""

    seekable = True

    def __init__(self, fd: int, writeback: bool = False, growing: Growing | None = None) -> None:
        self.fd = fd
        self.written = 0
        self._flushed = 0  # bytes already handed to write-back
        self.writeback = writeback
        self.growing = growing  # told of every write, for a reader that follows the file

    def write(self, data: Bytes) -> None:
        view = memoryview(data)  # type: ignore[arg-type]
        while view.nbytes:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n
        if self.growing is not None:
            self.growing.grew(self.written)
        if self.writeback and self.written - self._flushed >= WRITEBACK_BYTES:
            start_writeback(self.fd, self._flushed, self.written - self._flushed)
            self._flushed = self.written

    def write_held(self, data: Bytes) -> None:
        self.write(data)

    def patch(self, offset: int, data: bytes) -> None:
        if os.pwrite(self.fd, data, offset) != len(data):
            raise OSError(f"short write while patching offset {offset}")

    def truncate(self) -> None:
        """Start the file again from nothing."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.written = self._flushed = 0
        if self.growing is not None:
            self.growing.restarted()


class CompressedSink:
    """Slim bytes compressed on their way to `inner` (a file), or only counted (inner None:
    what a compressed slim copy would take on disk, for the numbers of an analysis).

    With `ahead`, the compressor works on a helper thread of the writer's: each write is
    copied into a buffer of the sink's and compressed while the writer copies the next window;
    a write waits for the one before. Compressing the slim bytes takes about as long as the
    rest of a zstd file's pass here; zstd's own worker threads would do the same at
    the cost of their job buffers (30 MiB at level 3)."""

    seekable = False

    def __init__(
        self, inner: FdSink | None, codec: str, level: int | None, ahead: bool = True
    ) -> None:
        self.inner = inner
        self.ahead = ahead  # on a helper thread (else in the writer's)
        self.codec, self.level = codec, level
        self._counted = 0
        self._buf = np.empty(0, dtype=np.uint8)  # what the job in flight compresses
        self._pending: Future[None] | None = None
        self._start()

    def _start(self) -> None:
        self._z = Compressor(self.codec, self._emit, self.level)

    def _emit(self, chunk: bytes) -> None:
        if self.inner is not None:
            self.inner.write(chunk)  # type: ignore[arg-type]
        else:
            self._counted += len(chunk)

    def write(self, data: Bytes) -> None:
        if self.ahead:  # compressed after the caller may have changed `data`: a copy of it
            self._wait()  # the copy's buffer is free
            n = len(data)
            if self._buf.shape[0] < n:
                self._buf = np.empty(n, dtype=np.uint8)
            self._buf[:n] = data
            data = self._buf[:n]
        self.write_held(data)

    def write_held(self, data: Bytes) -> None:
        """As `write`, without the copy: the caller keeps `data` unchanged until its next
        write (the copy stage writes its two output buffers in turn)."""
        self._wait()
        if not self.ahead:
            self._z.write(data)
            return
        self._pending = helper("compress").submit(self._z.write, data)

    def _wait(self) -> None:
        """The write in flight is done (its error, raised here)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def abandon(self) -> None:
        """The pass failed: wait for the write in flight (it must not outlive the file it
        writes to), whatever became of it."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the pass's own error is the one reported
            pass

    def patch(self, offset: int, data: bytes) -> None:
        raise AssertionError("a compressed stream cannot be patched behind its end")

    def finish(self) -> None:
        self._wait()
        self._z.finish()

    @property
    def disk_bytes(self) -> int:
        return self.inner.written if self.inner is not None else self._counted

    def restart(self) -> None:
        """Throw away what was written and begin a new stream."""
        try:
            self._wait()
        finally:
            self._z.finish()  # ended now, so that nothing of it reaches the new stream later
        if self.inner is not None:
            self.inner.truncate()
        self._counted = 0
        self._start()


class ThrottledSink(FdSink):
    """An FdSink whose writes are charged to the run's I/O throttle."""

    def __init__(self, fd: int, io: IoThrottle | None, growing: Growing | None = None) -> None:
        super().__init__(fd, writeback=True, growing=growing)  # fsynced before the rename
        self.io = io

    def write(self, data: Bytes) -> None:
        super().write(data)
        if self.io is not None:
            self.io.account(len(data))
