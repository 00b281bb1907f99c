"""Stopping cleanly on SIGTERM and SIGINT.

The first request takes no new file and gives the files in progress GRACE_SECONDS to finish;
after that, or at a second request, they are abandoned: the engine stops at its next window,
the coordinator removes the tmp, and the original stays as it was, without a marker. Throttle
sleeps go through `sleep`, which wakes at once when the files are to be abandoned, so a slow
throttled file does not hold the shutdown back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import Abandoned

GRACE_SECONDS = 7.0  # finishing what is in progress: abandoned well within 10 s of the signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def signals_to_main() -> Iterator[None]:
    """Threads started in this block (from the main thread) have the stop signals blocked (a
    thread inherits its creator's mask), so the kernel delivers them to the main thread, whose
    handler runs at once. Received by another thread, a signal waits until the main thread
    wakes from whatever it waits on, and a worker could meanwhile take a new file. A signal
    that arrives in the block is delivered at its end."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Shutdown:
    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.grace = grace
        self._requested = threading.Event()
        self._abandon = threading.Event()
        self._deadline: float | None = None
        self.signal_name = ""

    @property
    def requested(self) -> bool:
        """No new file is to be taken."""
        return self._requested.is_set()

    def request(self, why: str = "") -> None:
        if self._requested.is_set():
            self.abandon()
            return
        self.signal_name = why
        self._deadline = time.monotonic() + self.grace
        self._requested.set()

    def abandon(self) -> None:
        self._requested.set()
        self._abandon.set()

    def must_abandon(self) -> bool:
        if self._abandon.is_set():
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._abandon.set()
            return True
        return False

    def check(self, path: str) -> None:
        """Raise Abandoned when the file in progress must be dropped."""
        if self.must_abandon():
            why = f" ({self.signal_name})" if self.signal_name else ""
            raise Abandoned(
                f"{path}: stopped{why} before it was finished; the original is untouched and "
                "will be taken on a later run"
            )

    def sleep(self, seconds: float) -> None:
        """time.sleep that returns early once the files in progress are to be abandoned."""
        end = time.monotonic() + seconds
        while not self.must_abandon():
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._deadline is not None:
                left = min(left, max(self._deadline - time.monotonic(), 0.0) + 0.001)
            self._abandon.wait(left)

    def install(self) -> None:
        """SIGTERM and SIGINT request the stop; a second one abandons at once. Only from the
        main thread (Python runs signal handlers there)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request(signal.Signals(signum).name)

        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
