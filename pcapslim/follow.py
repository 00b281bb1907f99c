"""Following a file that another thread is still writing: the verification re-read of a slim
copy reads it while the copy stage writes it (pcapslim.coordinator). The writer says how far the
file has grown; a read at its end waits until more is written or the writer is done."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Growing:
    """A file another thread is still writing, for a reader that follows it: a read at its
    end waits until more is written, or the writer is done (the end is then the end)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._size = 0
        self._done = False
        self._generation = 0  # bumped when the writer starts the file again

    def grew(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._cond.notify_all()

    def done(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def restarted(self) -> None:
        with self._cond:
            self._generation += 1
            self._size = 0
            self._cond.notify_all()

    @property
    def generation(self) -> int:
        return self._generation

    def wait_beyond(self, offset: int) -> bool:
        """Wait until the file holds bytes past `offset`; False when it never will."""
        with self._cond:
            while self._size <= offset and not self._done:
                self._cond.wait()
            return self._size > offset

    def read_at(self, read: Callable[[], T], offset: int) -> T:
        """`read()` at `offset`; when it finds nothing, wait for the writer and read again
        once: nothing then means the end (the writer is done, or the file shrank under it,
        which the re-read's counts then show)."""
        got = read()
        if got or not self.wait_beyond(offset):
            return got
        return read()
