"""Stopping cleanly on SIGTERM and SIGINT.

The first request takes no new file and gives the files in progress GRACE_SECONDS to finish;
after that, or at a second request, they are abandoned: the engine stops at its next window,
the coordinator removes the tmp, and the original stays as it was, without a marker. Throttle
sleeps go through `sleep`, which wakes at once when the files are to be abandoned, so a slow
throttled file does not hold the shutdown back.

Whatever a run is blocked in, it ends: the scheduler stops waiting for a file STRAND_SECONDS
after it was to be abandoned (a little longer on a cluster; pcapslim.run), and the command,
which installs the handlers with a deadline, exits EXIT_SECONDS after that point even if its own
main thread is stuck (a report written to a pipe nobody reads, a system call that does not
return). Once every file is accounted for (`ended`), what is left is letting go of the replaced
originals and writing the report: that gets REPORT_SECONDS more.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import EXIT_FAIL, Abandoned

GRACE_SECONDS = 7.0  # finishing what is in progress: abandoned well within 10 s of the signal
STRAND_SECONDS = 2.0  # a file not stopped this long after it was abandoned is left behind
# the command exits this long after the abandonment, whatever it is doing: longer than any pool
# waits for a file after its abandonment (STRAND_SECONDS here, 3.5 s on a cluster)
EXIT_SECONDS = 4.5
REPORT_SECONDS = 30.0  # once every file is accounted for: freeing originals, the report
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


def quiet_thread() -> None:
    """The calling thread (a helper) blocks the stop signals, so that the kernel hands them to
    the main thread, as signals_to_main does for the threads it starts (a helper may be started
    by the main thread itself, when a check runs there)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


class Shutdown:
    """A run's stop: requested by a signal (once `install`ed) or by `request()` from any
    thread. Listeners hear of every request (the scheduler wakes on them)."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.grace = grace
        self._requested = threading.Event()
        self._abandon = threading.Event()
        self._deadline: float | None = None  # when the files in progress are abandoned
        self._listeners: list[Callable[[], None]] = []
        self._exit_after: float | None = None  # the command's last resort (see `installed`)
        self._ended_at: float | None = None  # every file accounted for (see `ended`)
        self._reaper: threading.Thread | None = None
        # reentrant: a second signal's handler may run inside the first one's
        self._changed = threading.Condition(threading.RLock())
        self.signal_name = ""
        self.stranded = 0  # files that did not stop within STRAND_SECONDS of abandonment

    def _refresh(self) -> None:
        """Learn of a request made elsewhere (a cluster run's client); nothing here."""

    @property
    def requested(self) -> bool:
        """No new file is to be taken."""
        self._refresh()
        return self._requested.is_set()

    @property
    def exits_when_stuck(self) -> bool:
        """A stop ends the process even if its main thread is stuck (the command's last
        resort is armed: see `installed`)."""
        return self._exit_after is not None

    def request(self, why: str = "") -> None:
        if self._requested.is_set():
            self.abandon()
            return
        self.signal_name = why
        self._deadline = time.monotonic() + self.grace
        self._requested.set()
        self._changed_now()

    def abandon(self) -> None:
        now = time.monotonic()
        self._deadline = now if self._deadline is None else min(self._deadline, now)
        self._requested.set()
        self._abandon.set()
        self._changed_now()

    def _changed_now(self) -> None:
        with self._changed:
            self._changed.notify_all()
        if self._exit_after is not None and self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="pcapslim-reaper", daemon=True)
            self._reaper.start()
        for listener in list(self._listeners):
            listener()

    def ended(self) -> None:
        """Every file of the run is accounted for: the last resort waits REPORT_SECONDS more
        for the rest (letting go of the replaced originals, the report)."""
        self._ended_at = time.monotonic()
        with self._changed:
            self._changed.notify_all()

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def must_abandon(self) -> bool:
        self._refresh()
        if self._abandon.is_set():
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._abandon.set()
            return True
        return False

    def abandon_at(self) -> float | None:
        """When the files in progress are (or were) to be abandoned (monotonic time)."""
        return self._deadline

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
            self._abandon.wait(min(left, 0.5))

    @contextmanager
    def installed(self, exit_seconds: float | None = None) -> Iterator[Shutdown]:
        """SIGTERM and SIGINT request the stop; a second one abandons at once. Only from the
        main thread (Python runs signal handlers there); the previous handlers come back at the
        end. With `exit_seconds` (the command's last resort: never for a library caller's
        process), once a stop was requested the process exits that long after the files were
        to be abandoned (REPORT_SECONDS after the run `ended`, if later), if it has not left
        this block by then."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request(signal.Signals(signum).name)

        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
        self._exit_after = exit_seconds
        try:
            yield self
        finally:
            with self._changed:
                self._exit_after = None  # disarmed: the reaper, if any, returns
                self._changed.notify_all()
            for signum, old in previous.items():
                signal.signal(signum, old)

    def _reap(self) -> None:
        with self._changed:
            while True:
                if self._exit_after is None:
                    return
                deadline = self._deadline
                assert deadline is not None
                at = deadline + self._exit_after
                if self._ended_at is not None:
                    at = max(at, self._ended_at + REPORT_SECONDS)
                left = at - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        assert self._exit_after is not None
        why = f" ({self.signal_name})" if self.signal_name else ""
        os.write(
            2,
            f"pcap-slim: stopped{why}, but the run did not end {self._exit_after:g} s after "
            "its files were abandoned (blocked in the system, or its report cannot be "
            "written); exiting now. Originals are untouched; a tmp file left behind is taken "
            "over by the next run.\n".encode(),
        )
        os._exit(EXIT_FAIL)
