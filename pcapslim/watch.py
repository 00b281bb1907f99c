"""`pcap-slim --dir D --watch`: slim each capture as soon as it is eligible, until stopped.

The directory is watched with inotify (through inotify_simple): a file closed after writing
(IN_CLOSE_WRITE), renamed into the directory (IN_MOVED_TO) or given new times (IN_ATTRIB) is
looked at at once; a rescan every `rescan_seconds` is the safety net (an overflowed event queue,
a network file system whose other hosts' writes inotify never sees). Eligible is what a one-shot
`--dir` run takes — the name pattern, no marker, older than `--age-minutes` — and not open for
writing by any process (pcapslim.inuse), whatever its age; a file too young is looked at again
when it comes of age, one still open when its writer closes it (or at the next rescan).

Workers, throttles and rules are those of one-shot runs. SIGTERM and SIGINT stop the watcher as
they stop a run (pcapslim.shutdown); under systemd it says READY=1 once watching, keeps the
STATUS= line current, pings the watchdog and says STOPPING=1 (pcapslim.sdnotify).
"""

from __future__ import annotations

import os
import select
import signal
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import coordinator as co
from .errors import PcapslimError
from .inuse import being_written
from .report import counts
from .sdnotify import Notifier
from .shutdown import Shutdown, signals_to_main

RESCAN_SECONDS = 60.0
MAX_SLEEP = 3600.0  # the loop wakes at least this often, even with nothing to wait for


def require() -> None:
    try:
        import inotify_simple  # noqa: F401
    except ImportError:
        raise PcapslimError(
            "--watch needs inotify_simple: pip install 'pcapslim[sensor]'"
        ) from None


class Watcher:
    def __init__(
        self,
        directory: Path,
        job: co.Job,
        workers: int,
        age_minutes: float,
        shutdown: Shutdown,
        on_result: Callable[[co.FileResult], None],
        notifier: Notifier | None = None,
        rescan_seconds: float = RESCAN_SECONDS,
    ) -> None:
        self.directory = directory
        self.job = job
        self.workers = workers
        self.age = age_minutes * 60
        self.shutdown = shutdown
        self.on_result = on_result
        self.notifier = notifier or Notifier({})
        self.rescan_seconds = rescan_seconds
        self.results: list[co.FileResult] = []
        self._candidates: set[str] = set()
        self._due: dict[str, float] = {}  # young files: when they come of age
        self._queue: dict[str, int] = {}  # eligible, waiting for a worker: name -> mtime
        self._busy: dict[str, Future[co.FileResult]] = {}
        self._failed: dict[str, tuple[int, int]] = {}  # failed as it is: (mtime, size)

    def status(self) -> str:
        c = counts(self.results)
        return (
            f"watching {self.directory}: ok={c['ok']} skip={c['skip']} fail={c['fail']}, "
            f"{len(self._busy)} in progress, {len(self._queue)} waiting"
        )

    def run(self) -> None:
        """Watch until a stop is requested; raises OSError when the directory cannot be
        watched (or goes away)."""
        from inotify_simple import INotify
        from inotify_simple import flags as f

        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        inotify = INotify()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pcapslim-file")
        try:
            inotify.add_watch(
                self.directory,
                f.CLOSE_WRITE | f.MOVED_TO | f.ATTRIB | f.DELETE_SELF | f.MOVE_SELF,
            )
            co.clean_stale_tmps(self.directory)
            self._rescan()
            self.notifier.ready(self.status())
            next_rescan = time.monotonic() + self.rescan_seconds
            next_ping = time.monotonic()
            while not self.shutdown.requested:
                now = time.monotonic()
                if now >= next_rescan:
                    co.clean_stale_tmps(self.directory)
                    self._rescan()
                    next_rescan = now + self.rescan_seconds
                self._examine()
                self._start(pool, wake_w)
                self._collect()
                if self.notifier.watchdog_interval and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + self.notifier.watchdog_interval
                deadlines = [next_rescan, *self._due.values()]
                if self.notifier.watchdog_interval:
                    deadlines.append(next_ping)
                timeout = min(max(min(deadlines) - time.monotonic(), 0.0), MAX_SLEEP)
                ready, _, _ = select.select([inotify.fileno(), wake_r], [], [], timeout)
                if wake_r in ready:
                    _drain(wake_r)
                if inotify.fileno() in ready:
                    self._events(inotify.read(timeout=0), f)
            self._queue.clear()
            self.notifier.stopping(self.status())
            while self._busy:  # the files in progress finish, or are abandoned, first
                select.select([wake_r], [], [], 0.5)
                _drain(wake_r)
                self._collect()
                if self.notifier.watchdog_interval:
                    self.notifier.watchdog()
        finally:
            pool.shutdown(wait=True)
            self._collect()
            signal.set_wakeup_fd(previous_wakeup)
            inotify.close()
            os.close(wake_r)
            os.close(wake_w)

    def _events(self, events: list[Any], f: Any) -> None:
        for ev in events:
            if ev.mask & f.Q_OVERFLOW:
                self._rescan()
            elif ev.mask & (f.DELETE_SELF | f.MOVE_SELF | f.IGNORED):
                raise FileNotFoundError(
                    f"{self.directory}: the watched directory was removed or moved away"
                )
            elif ev.name:
                self._candidates.add(ev.name)

    def _rescan(self) -> None:
        with os.scandir(self.directory) as it:
            self._candidates.update(e.name for e in it if e.name.endswith(co.CAPTURE_SUFFIXES))

    def _examine(self) -> None:
        """Sort the candidates into eligible (queued), too young (due later), or not at all."""
        now = time.time()
        fresh = []
        names, self._candidates = self._candidates, set()
        for name in sorted(names):
            if name in self._busy or name in self._queue:
                continue
            self._due.pop(name, None)
            path = self.directory / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not name.endswith(co.CAPTURE_SUFFIXES) or not stat.S_ISREG(st.st_mode):
                continue
            if self._failed.get(name) == (st.st_mtime_ns, st.st_size):
                continue  # failed as it is now: tried again once it changes
            try:
                if co.is_marked(path):
                    continue
            except PcapslimError:
                pass  # the file's own run reports what is planted
            if self.age and now - st.st_mtime < self.age:
                self._due[name] = time.monotonic() + (st.st_mtime + self.age - now)
                continue
            fresh.append((path, st.st_mtime_ns))
        busy = being_written([p for p, _ in fresh])
        for path, mtime in fresh:
            if path not in busy:  # still written to: its writer's close brings it back
                self._queue[path.name] = mtime

    def _start(self, pool: ThreadPoolExecutor, wake_w: int) -> None:
        for name in sorted(self._queue, key=self._queue.__getitem__):  # oldest first
            if len(self._busy) >= self.workers:
                return
            del self._queue[name]
            with signals_to_main():  # a worker the pool starts for it
                fut = pool.submit(co.slim_in_place, self.directory / name, self.job)
            fut.add_done_callback(lambda _: _poke(wake_w))
            self._busy[name] = fut

    def _collect(self) -> None:
        for name, fut in list(self._busy.items()):
            if not fut.done():
                continue
            del self._busy[name]
            result = fut.result()
            if result.status == co.STATUS_MARKED:
                continue  # another process finished it meanwhile: nothing to say
            self.results.append(result)
            self.on_result(result)
            if result.status == co.STATUS_FAIL:
                try:
                    st = os.lstat(self.directory / name)
                    self._failed[name] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    pass
            self.notifier.status(self.status())


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the loop has wake-ups pending already


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
