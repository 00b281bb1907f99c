"""`pcap-slim --dir D --watch`: slim each capture as soon as it is eligible, until stopped.

The directory is watched with inotify (through inotify_simple): a file closed after writing
(IN_CLOSE_WRITE), renamed into the directory (IN_MOVED_TO) or given new times (IN_ATTRIB) is
looked at at once; a rescan every `rescan_seconds` is the safety net (an overflowed event queue,
a network file system whose other hosts' writes inotify never sees). Eligible is what a one-shot
`--dir` run takes (pcapslim.eligibility): a file too young is looked at again when it comes of
age, one still open for writing when its writer closes it (or at the next rescan), one that
failed once it changes.

The watcher only finds files: it hands each eligible one to the run's scheduler
(pcapslim.run), which runs them on the workers and takes the next as soon as one is free.
SIGTERM and SIGINT stop it as they stop a run (pcapslim.shutdown); under systemd it says
READY=1 once watching, keeps the STATUS= line current, pings the watchdog and says STOPPING=1
(pcapslim.sdnotify).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capdir import CaptureDir, Target
from .eligibility import clean_stale_tmps, is_capture_name, select
from .errors import DirectoryError
from .results import STATUS_FAIL, STATUS_MARKED, FileResult, counts
from .sdnotify import Notifier

if TYPE_CHECKING:
    from .run import Options, ResultCallback, Scheduler

MAX_SLEEP = 3600.0  # the loop wakes at least this often, even with nothing to wait for


class Watcher:
    """Finds the eligible files of a directory for a scheduler; `finished` is the scheduler's
    result callback, and passes each result on to `report`."""

    def __init__(
        self,
        directory: Path,
        options: Options,
        report: ResultCallback,
        notifier: Notifier | None = None,
    ) -> None:
        self.directory = directory
        self.age = options.age_minutes * 60
        self.rescan_seconds = options.rescan_seconds
        self.report = report
        self.notifier = notifier or Notifier({})
        self.results: list[FileResult] = []
        self.scheduler: Scheduler | None = None
        self._dir: CaptureDir  # held while watching
        self._candidates: set[str] = set()
        self._due: dict[str, float] = {}  # young files: when they come of age (monotonic)
        self._failed: dict[str, tuple[int, int]] = {}  # failed as it is: (mtime, size)

    def status(self) -> str:
        c = counts(self.results)
        busy = self.scheduler.busy if self.scheduler is not None else 0
        waiting = self.scheduler.waiting if self.scheduler is not None else 0
        return (
            f"watching {self.directory}: ok={c['ok']} skip={c['skip']} fail={c['fail']}, "
            f"{busy} in progress, {waiting} waiting"
        )

    def run(self, scheduler: Scheduler) -> None:
        """Watch until the scheduler's stop is requested, handing it each eligible file, then
        let the files in progress finish (or be abandoned); raises DirectoryError when the
        directory cannot be watched (or goes away), once the files in progress are done."""
        from inotify_simple import INotify
        from inotify_simple import flags as f

        self.scheduler = scheduler
        try:
            self._dir = CaptureDir.open(self.directory)
        except OSError as e:
            raise self._cannot_watch(e) from None
        inotify = INotify()
        try:
            with scheduler.signal_wakeups():
                try:
                    self._watch(scheduler, inotify, f)
                    self.notifier.stopping(self.status())
                finally:  # the files in progress are heard of, whatever ended the watch
                    scheduler.finish(on_tick=self._ping)
        finally:
            inotify.close()
            self._dir.close()

    def _watch(self, scheduler: Scheduler, inotify: Any, f: Any) -> None:
        """The loop: rescans, young files coming of age, the watchdog, inotify's events and the
        scheduler's results, until the stop."""
        try:  # the directory held open, not whatever its name leads to by now
            inotify.add_watch(
                f"/proc/self/fd/{self._dir.fd}",
                f.CLOSE_WRITE | f.MOVED_TO | f.ATTRIB | f.DELETE_SELF | f.MOVE_SELF,
            )
        except OSError as e:
            raise self._cannot_watch(e) from None
        self._rescan()
        self.notifier.ready(self.status())
        next_rescan = time.monotonic() + self.rescan_seconds
        next_ping = time.monotonic()
        while not scheduler.stop.requested:
            now = time.monotonic()
            if now >= next_rescan:
                self._rescan()
                next_rescan = now + self.rescan_seconds
            self._come_of_age(now)
            self._examine()
            if self.notifier.watchdog_interval and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + self.notifier.watchdog_interval
            deadlines = [next_rescan, *self._due.values()]
            if self.notifier.watchdog_interval:
                deadlines.append(next_ping)
            timeout = min(max(min(deadlines) - time.monotonic(), 0.0), MAX_SLEEP)
            if scheduler.step(timeout, [inotify.fileno()]):
                self._events(inotify.read(timeout=0), f)

    def _ping(self) -> None:
        if self.notifier.watchdog_interval:
            self.notifier.watchdog()

    def _events(self, events: list[Any], f: Any) -> None:
        for ev in events:
            if ev.mask & f.Q_OVERFLOW:
                self._rescan()
            elif ev.mask & (f.DELETE_SELF | f.MOVE_SELF | f.IGNORED):
                raise DirectoryError(
                    f"{self.directory}: cannot watch the directory: it was removed or moved away"
                )
            elif ev.name:
                self._candidates.add(ev.name)

    def _rescan(self) -> None:
        """The tmp files of dead slimmers cleaned, every capture of the directory a candidate."""
        try:
            clean_stale_tmps(self._dir)
            self._candidates.update(n for n, _ in self._dir.entries() if is_capture_name(n))
        except OSError as e:
            raise self._cannot_watch(e) from None

    def _cannot_watch(self, e: OSError) -> DirectoryError:
        return DirectoryError(f"{self.directory}: cannot watch the directory: {e.strerror or e}")

    def _come_of_age(self, now: float) -> None:
        for name, due in list(self._due.items()):
            if due <= now:
                del self._due[name]
                self._candidates.add(name)

    def _examine(self) -> None:
        """Hand the eligible candidates to the scheduler (oldest first); remember when the
        young ones come of age."""
        names, self._candidates = self._candidates, set()
        entries = []
        for name in sorted(names):
            if "/" in name:
                continue
            path = self.directory / name
            if self.scheduler is not None and self.scheduler.holds(str(path)):
                continue
            self._due.pop(name, None)
            try:
                st = self._dir.lstat(name)
            except FileNotFoundError:
                continue
            if self._failed.get(name) == (st.st_mtime_ns, st.st_size):
                continue  # failed as it is now: tried again once it changes
            entries.append((name, st))
        wall, mono = time.time(), time.monotonic()
        chosen = select(self._dir, self._target, entries, self.age, wall)
        for name, due in chosen.due.items():
            self._due[name] = mono + (due - wall)
        assert self.scheduler is not None
        for c in chosen.ready:  # a file still written to comes back when its writer closes it
            self.scheduler.add(c.target, c.mtime_ns)

    def _target(self, name: str) -> Target:
        return Target(self.directory, (), name)

    def finished(self, result: FileResult) -> None:
        if result.status == STATUS_MARKED:
            return  # another process finished it meanwhile: nothing to say
        self.results.append(result)
        if result.status == STATUS_FAIL:
            name = Path(result.path).name
            try:
                st = self._dir.lstat(name)
                self._failed[name] = (st.st_mtime_ns, st.st_size)
            except OSError:
                pass
        self.report(result)
        self.notifier.status(self.status())
