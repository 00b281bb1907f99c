"""The run layer: one path from options to results for the command, the watcher, the cluster
and the library.

- `Options`: every setting of a run (what the command's flags say), frozen and picklable; the
  progress callback and the stop signal stay in the process that made them.
- `build_job`: the per-file job those options ask for (throttles, rules, reads, compression
  threads, the stop), on this machine and on every Dask worker alike.
- `Scheduler`: runs a stream of files on N workers (threads here, or a Dask cluster) and hands
  each result to a callback as it finishes; it stops taking files when the run is stopped.
- `slim_files`, `slim_dir`, `watch_dir`: `--single`, `--dir` and `--watch`, for the command
  and the library alike.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import DirectoryError, PcapslimError, UsageError
from .limits import LIMITS, MMAP_MAX_WORKERS, RULES
from .results import STATUS_ABANDONED, STATUS_FAIL, STATUS_MARKED, STATUS_WOULD_SLIM, FileResult
from .shutdown import STRAND_SECONDS, Shutdown, signals_to_main

if TYPE_CHECKING:
    from .capdir import Target
    from .coordinator import Job
    from .metrics import Metrics
    from .sdnotify import Notifier

ResultCallback = Callable[[FileResult], None]
_LOCAL_FIELDS = ("on_progress", "stop")  # options that stay in the process that made them
FileProgress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)


@dataclass(frozen=True)
class Options:
    """How a run slims: every setting the command takes. Checked when made (UsageError)."""

    rules: str = "compatible"  # SPEC §1, or "forensic" (§8)
    check_only: bool = False  # analyse and report; write nothing
    dry_run: bool = False  # list what would be slimmed; write nothing
    workers: int = 1  # files at once
    age_minutes: float = 0.0  # directories: leave files younger than this
    recursive: bool = False  # directories: the whole tree below
    mmap: bool | None = None  # mapped or buffered reads; None: by the number of workers
    max_io_mbps: float | None = None  # read + write, decimal MB/s, shared by the workers
    max_cpu_percent: float | None = None  # share of the machine's CPU
    cpu_backoff_above: float | None = None  # lower the CPU target while the rest is busy
    cpu_backoff_strength: float = 0.5
    compress_level: int | None = None  # compressed captures: the slim copy's level
    offset_map: bool = False  # each file's old-to-new record offsets beside its marker
    scheduler: str | None = None  # a Dask scheduler's address: run the files there
    rescan_seconds: float = 60.0  # watching: look through the directory this often too
    metrics_file: str | None = None  # Prometheus textfile metrics
    # local to the process that made the options: never sent to a cluster's workers
    on_progress: FileProgress | None = field(default=None, compare=False, repr=False)
    stop: Shutdown | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.rules not in RULES:
            raise UsageError(f"rules must be one of {', '.join(RULES)}, not {self.rules!r}")
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise UsageError(f"{name.replace('_', '-')} must be {span}, not {value}")
        if self.dry_run and self.check_only:
            raise UsageError("--dry-run and --check-only exclude each other")
        if self.offset_map and (self.dry_run or self.check_only):
            raise UsageError(
                "--offset-map is written when files are slimmed, not with --dry-run or --check-only"
            )

    def for_workers(self) -> Options:
        """The options as a cluster's workers get them: without what is local to this one."""
        return replace(self, on_progress=None, stop=None)

    def __getstate__(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _LOCAL_FIELDS:
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, state.get(f.name, f.default))

    def use_mmap(self, concurrency: int) -> bool:
        """Mapped reads unless asked otherwise, or more than MMAP_MAX_WORKERS files at once."""
        return self.mmap if self.mmap is not None else concurrency <= MMAP_MAX_WORKERS


def build_job(
    options: Options, *, concurrency: int | None = None, stop: Shutdown | None = None
) -> Job:
    """The per-file job of a run: its throttles (shared by every file of this process), reads,
    rules, compression and stop. `concurrency` is how many files this process runs at once
    (the options' workers here, a Dask worker's threads there); `stop` is the run's stop,
    the options' own when not given."""
    from .coordinator import Job
    from .engine import window_for
    from .markers import forget_owner
    from .throttle import throttles

    forget_owner()  # the marker account as it is when the run starts
    stop = stop or options.stop or Shutdown()
    at_once = concurrency or options.workers
    io, cpu = throttles(
        options.max_io_mbps,
        options.max_cpu_percent,
        options.cpu_backoff_above,
        options.cpu_backoff_strength,
        stop.sleep,
    )
    return Job(
        options=options,
        use_mmap=options.use_mmap(at_once),
        io=io,
        cpu=cpu,
        shutdown=stop,
        window_bytes=window_for(
            not (options.check_only or options.dry_run), at_once, options.rules == "forensic"
        ),
        # helpers pay where a core is free for them; beside another file they cost more
        spare_core=(os.cpu_count() or 1) > at_once,
    )


# --- running files on workers --------------------------------------------------------------


class Pool(Protocol):
    """Where the scheduler's files run."""

    slots: int  # files in flight at once
    strand_seconds: float  # how long after its abandonment a file is waited for

    def submit(self, target: Target) -> Future[FileResult | None]:
        """Run one file; None as its result means it was not taken (the run had stopped)."""
        ...

    def stopping(self, why: str, abandon: bool) -> None:
        """The run was stopped (by `why`, a signal's name; abandon: its files are to be
        abandoned now)."""
        ...

    def failure(self, path: str, error: BaseException) -> FileResult:
        """The result of a file whose run itself failed."""
        ...

    def close(self) -> None: ...


class LocalPool:
    """Threads of this process, each taking file after file for the whole run. A worker hands
    the end of each file's transaction (its fsyncs, rename and marker: waiting on the disk) to
    a helper of its own and slims its next file meanwhile; so each worker has up to two files
    in flight, one being slimmed and one being committed."""

    strand_seconds = STRAND_SECONDS

    def __init__(self, job: Job, workers: int) -> None:
        self.job = job
        self.workers = workers
        self.slots = 2 * workers
        self._inbox: queue.SimpleQueue[tuple[Target, Future[FileResult | None]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []

    def submit(self, target: Target) -> Future[FileResult | None]:
        fut: Future[FileResult | None] = Future()
        if len(self._threads) < self.workers:
            with signals_to_main():  # the stop signals stay the main thread's
                t = threading.Thread(
                    target=self._work, name=f"pcapslim-file-{len(self._threads)}", daemon=True
                )
                t.start()
            self._threads.append(t)
        self._inbox.put((target, fut))
        return fut

    def _work(self) -> None:
        from .coordinator import start_in_place
        from .helpers import helper, release

        committing: Future[None] | None = None
        try:
            while (item := self._inbox.get()) is not None:
                target, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    stop = self.job.shutdown
                    if stop is not None and stop.requested:
                        fut.set_result(None)
                        continue
                    started = start_in_place(target, self.job)
                    if isinstance(started, FileResult):
                        fut.set_result(started)
                        continue
                    if committing is not None:  # one commit at a time: the disk is the limit
                        committing.result()
                    committing = helper("commit").submit(_settle, fut, started.finish)
                except BaseException as e:  # noqa: BLE001 - reaches the scheduler as a failure
                    if not fut.done():
                        fut.set_exception(e)
        finally:
            release()  # this thread's helpers end with it, the last commit done first

    def stopping(self, why: str, abandon: bool) -> None:
        pass  # the job shares the run's stop

    def failure(self, path: str, error: BaseException) -> FileResult:
        return _internal_failure(path, error)

    def close(self) -> None:
        """The threads end (those left behind by a stop, blocked, are not waited for) and the
        replaced originals are let go of."""
        from .coordinator import drain

        for _ in self._threads:
            self._inbox.put(None)
        stop = self.job.shutdown
        if stop is None or not stop.stranded:
            for t in self._threads:
                t.join()
            drain()


class CheckPool:
    """A check with one worker: every file is checked, one at a time, in the thread that runs
    the scheduler. Handing a file to a worker thread and its result back cost a small file's
    check about as much again here (threads waking each other across cores, turns at the GIL);
    a check writes nothing, so there is no commit to run beside it. With more workers the
    worker threads stay: checking files here beside them measured no faster on small files
    and 5-8 % slower on large ones. A stop abandons the file at its next window here as on a
    worker; a file blocked in a system call here cannot be left behind (see Scheduler.finish),
    so this pool is for the command, whose last resort ends the process (pcapslim.shutdown)."""

    strand_seconds = STRAND_SECONDS
    slots = 1

    def __init__(self, job: Job) -> None:
        self.job = job

    def submit(self, target: Target) -> Future[FileResult | None]:
        """Checks the file now, in this thread (which takes the stop signals meanwhile)."""
        from .coordinator import start_in_place

        fut: Future[FileResult | None] = Future()
        fut.set_running_or_notify_cancel()
        stop = self.job.shutdown
        if stop is not None and stop.requested:
            fut.set_result(None)
            return fut
        try:
            started = start_in_place(target, self.job)
            assert isinstance(started, FileResult), "a check has nothing to commit"
            fut.set_result(started)
        except Exception as e:  # noqa: BLE001 - reaches the scheduler as a failure
            fut.set_exception(e)
        return fut

    def stopping(self, why: str, abandon: bool) -> None:
        pass  # the job shares the run's stop

    def failure(self, path: str, error: BaseException) -> FileResult:
        return _internal_failure(path, error)

    def close(self) -> None:
        pass


def _internal_failure(path: str, error: BaseException) -> FileResult:
    return FileResult(
        path,
        STATUS_FAIL,
        error=f"{path}: internal error {type(error).__name__}: {error}; the original is "
        "untouched (please report this)",
    )


class Scheduler:
    """Runs the files it is given on a pool, oldest key first, as many at once as the pool has
    slots, and hands each result to `on_result` (in the thread that calls `step`) as it
    finishes. Once the run's stop is requested it takes no new file."""

    def __init__(self, pool: Pool, stop: Shutdown, on_result: ResultCallback) -> None:
        self.pool = pool
        self.stop = stop
        self.on_result = on_result
        self._waiting: list[tuple[float, int, Target]] = []  # a heap: (key, order, file)
        self._order = itertools.count()
        self._queued: set[str] = set()  # the files waiting, by path
        self._busy: dict[Future[FileResult | None], Target] = {}
        self._finished: deque[Future[FileResult | None]] = deque()
        self._told = 0  # what the pool was told: 1 stopping, 2 abandoning
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # a late poke (a file left behind finishing) never writes to a descriptor reused since;
        # reentrant: a signal's handler pokes from the thread that may be closing
        self._wake_lock = threading.RLock()
        self._closed = False
        stop.add_listener(self._poke)

    # what it holds
    def add(self, target: Target, key: float = 0.0) -> None:
        path = str(target.path)
        if path in self._queued:
            return
        self._queued.add(path)
        heapq.heappush(self._waiting, (key, next(self._order), target))

    def holds(self, path: str) -> bool:
        return path in self._queued or any(str(t.path) == path for t in self._busy.values())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return len(self._busy)

    # turning
    def step(self, timeout: float | None, fds: Sequence[int] = ()) -> list[int]:
        """Start what fits, wait until a file finishes, one of `fds` is readable, a signal or
        a stop arrives, or `timeout` passes; hand over what finished and start what fits
        again. Returns those of `fds` that are readable."""
        self._start()
        ready, _, _ = select.select([self._wake_r, *fds], [], [], timeout)
        if self._wake_r in ready:
            _drain(self._wake_r)
        self._collect()
        self._start()
        return [fd for fd in ready if fd != self._wake_r]

    def run(self) -> None:
        """Until every file given has finished, or the run is stopped."""
        with self.signal_wakeups():
            while (self._waiting or self._busy) and not self.stop.requested:
                self.step(None)
            self.finish()

    def finish(self, on_tick: Callable[[], None] | None = None) -> None:
        """Take no new file; wait for those in progress (abandoned as the stop says), but not
        longer than the pool's `strand_seconds` after they were to be abandoned: a file still
        running then is reported abandoned and left to its thread. `on_tick` runs at least
        every half second meanwhile."""
        self._waiting.clear()
        self._queued.clear()
        while self._busy:
            timeout = 0.5 if on_tick is not None else None
            abandon_at = self.stop.abandon_at() if self.stop.requested else None
            if abandon_at is not None:
                left = abandon_at + self.pool.strand_seconds - time.monotonic()
                if left <= 0:
                    break
                timeout = min(left, 0.5)
            self.step(timeout)
            if on_tick is not None:
                on_tick()
        for fut, target in list(self._busy.items()):  # blocked beyond its abandonment
            del self._busy[fut]
            path = str(target.path)
            self.stop.stranded += 1
            why = f" ({self.stop.signal_name})" if self.stop.signal_name else ""
            self.on_result(
                FileResult(
                    path,
                    STATUS_ABANDONED,
                    error=f"{path}: stopped{why}, and still blocked "
                    f"{self.pool.strand_seconds:.0f} s after it was abandoned: it is the original "
                    "or, if it was being renamed, its complete slim copy; a tmp file left behind "
                    "is taken over by the next run",
                )
            )

    def close(self) -> None:
        self.stop.remove_listener(self._poke)
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    @contextmanager
    def signal_wakeups(self) -> Iterator[None]:
        """In the main thread, a signal wakes `step` whichever thread the kernel gave it to."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)

    def _start(self) -> None:
        if self.stop.requested:
            self._waiting.clear()
            self._queued.clear()
            told = 2 if self.stop.must_abandon() else 1
            if told > self._told:
                self._told = told
                self.pool.stopping(self.stop.signal_name, abandon=told == 2)
            return
        while self._waiting and len(self._busy) < self.pool.slots:
            _, _, target = heapq.heappop(self._waiting)
            self._queued.discard(str(target.path))
            fut = self.pool.submit(target)  # each pool leaves the stop signals to this thread
            self._busy[fut] = target
            fut.add_done_callback(self._done)

    def _done(self, fut: Future[FileResult | None]) -> None:
        self._finished.append(fut)
        self._poke()

    def _poke(self) -> None:
        with self._wake_lock:
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # wake-ups pending already

    def _collect(self) -> None:
        while self._finished:
            fut = self._finished.popleft()
            target = self._busy.pop(fut, None)
            if target is None:
                continue
            try:
                result = fut.result()
            except Exception as e:  # the pool could not run it, or cancelled it (a cluster
                result = self.pool.failure(str(target.path), e)  # whose scheduler restarted)
            if result is not None:
                self.on_result(result)


def _settle(fut: Future[FileResult | None], finish: Callable[[], FileResult]) -> None:
    try:
        fut.set_result(finish())
    except BaseException as e:  # noqa: BLE001 - reaches the scheduler as a failure
        fut.set_exception(e)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


# --- runs ----------------------------------------------------------------------------------


class _Session:
    """What every run shares: its stop, the cluster client or the local job, the metrics."""

    def __init__(self, options: Options, on_notice: Callable[[str], None] | None) -> None:
        from . import kernelset

        self.options = options
        self.on_notice = on_notice
        self.stop = options.stop or Shutdown()
        self.client: Any = None
        self.job: Job | None = None
        self.metrics: Metrics | None = None
        self._metrics_failed: str | None = None  # the last failure to write them, told once
        if options.scheduler is not None:  # before anything is touched
            from .cluster import connect

            self.client = connect(options.scheduler)
        else:  # the throttles start first: loading the kernels is charged to the CPU cap
            self.job = build_job(options, stop=self.stop)
        try:
            kernels = kernelset.active()
            if kernels.fallback and on_notice is not None:
                on_notice(
                    f"note: kernels: jit — {kernels.fallback}; reinstall pcapslim where a C "
                    "compiler is available for the ahead-of-time kernels (faster start, no "
                    "compile on first use)"
                )
            if options.metrics_file is not None:
                from .metrics import Metrics

                self.metrics = Metrics(options.metrics_file)
                try:
                    self.metrics.write()
                except OSError as e:  # before anything is touched: the run does not start
                    self.metrics = None
                    raise PcapslimError(
                        f"--metrics-file {options.metrics_file}: cannot write it "
                        f"({e.strerror or e}); nothing was touched"
                    ) from None
        except BaseException:
            self.close()
            raise

    def pool(self) -> Pool:
        if self.client is not None:
            from .cluster import ClusterPool

            return ClusterPool(self.client, self.options)
        assert self.job is not None
        if self.options.check_only and self.options.workers == 1 and self.stop.exits_when_stuck:
            # the scheduler's thread checks the files (see CheckPool): a file blocked in it
            # cannot be left behind, but the command's last resort ends the process
            return CheckPool(self.job)
        return LocalPool(self.job, self.options.workers)

    def run(
        self, files: Sequence[Target], on_result: ResultCallback | None, list_marked: bool
    ) -> list[FileResult]:
        """Every file through the scheduler; the results in the order of `files`. A file
        marked since a directory was listed is heard of (and counted in the metrics) but not
        among the results: directory runs do not list marked files."""
        by_path: dict[str, FileResult] = {}

        def handle(result: FileResult) -> None:
            if result.status != STATUS_MARKED or list_marked:
                by_path[result.path] = result
            self.record(result)
            if on_result is not None:
                on_result(result)

        pool = self.pool()
        scheduler = Scheduler(pool, self.stop, handle)
        try:
            for i, target in enumerate(files):
                scheduler.add(target, i)
            scheduler.run()
            self.stop.ended()
        except BaseException:  # an interrupt, or a callback that failed: no file goes on
            self.stop.abandon()
            raise
        finally:
            scheduler.close()
            pool.close()
        return [by_path[str(t.path)] for t in files if str(t.path) in by_path]

    def dry_run(
        self, files: Sequence[Target], on_result: ResultCallback | None
    ) -> list[FileResult]:
        results = [FileResult(str(t.path), STATUS_WOULD_SLIM) for t in files]
        for r in results:
            if on_result is not None:
                on_result(r)
        return results

    def record(self, result: FileResult) -> None:
        if self.metrics is not None:
            self._metrics(self.metrics.record, result)

    def _metrics(self, write: Callable[..., None], *args: Any) -> None:
        """Metrics that cannot be written do not stop the files: the caller hears of it once
        (and again when the reason changes)."""
        try:
            write(*args)
        except OSError as e:
            why = f"cannot write the metrics file {self.options.metrics_file}: {e.strerror or e}"
            if why != self._metrics_failed and self.on_notice is not None:
                self.on_notice(f"pcap-slim: {why}")
            self._metrics_failed = why

    def watching(self, up: bool) -> None:
        if self.metrics is not None:
            self._metrics(self.metrics.set_watching, up)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.metrics is not None:
            self._metrics(self.metrics.write)


@contextmanager
def _session(
    options: Options, on_notice: Callable[[str], None] | None = None
) -> Iterator[_Session]:
    session = _Session(options, on_notice)
    try:
        yield session
    finally:
        session.close()


def slim_files(
    paths: Iterable[str | os.PathLike[str]],
    options: Options | None = None,
    *,
    on_result: ResultCallback | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> list[FileResult]:
    """Slim each file in place, as `pcap-slim --single` does: a marked file is reported as
    `skipped_marker`; with `dry_run`, the files a run would take are reported `would_slim`.
    `on_result` hears of each file as it finishes; the results come back in the given order."""
    from .capdir import Target

    options = options or Options()
    if options.age_minutes:
        raise UsageError("--age-minutes applies to --dir only")
    if options.recursive:
        raise UsageError("--recursive applies to --dir only")
    files = [Target.of(p) for p in paths]
    with _session(options, on_notice) as session:
        if options.dry_run:
            return session.dry_run([f for f in files if _unmarked(f)], on_result)
        return session.run(files, on_result, list_marked=True)


def _unmarked(target: Target) -> bool:
    """A run would take the file (one whose directory cannot be opened is taken: its run says
    what is wrong)."""
    from .eligibility import unmarked

    try:
        with target.directory() as d:
            return unmarked(d, target.name)
    except OSError:
        return True


def slim_dir(
    directory: str | os.PathLike[str],
    options: Options | None = None,
    *,
    on_result: ResultCallback | None = None,
    on_listed: Callable[[list[Path]], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> list[FileResult]:
    """Slim every eligible capture of a directory in place, as `pcap-slim --dir` does (SPEC §5,
    pcapslim.eligibility): stale tmp files are cleaned first (not with dry_run or check_only),
    files are taken oldest first, marked ones are not listed. `on_listed` sees the files before
    the first is taken, `on_result` each file as it finishes; the results come back oldest
    first. DirectoryError when the directory cannot be read."""
    from .capdir import CaptureDir
    from .eligibility import clean_stale_tmps, directories, pending_files

    options = options or Options()
    root = Path(directory)
    with _session(options, on_notice) as session:
        try:
            if not options.dry_run and not options.check_only:
                for parts in directories(root, options.recursive):
                    with CaptureDir.open(root, parts) as d:
                        clean_stale_tmps(d)
            files = pending_files(root, options.age_minutes, recursive=options.recursive)
        except OSError as e:
            raise DirectoryError(f"{root}: cannot read the directory: {e.strerror or e}") from None
        if on_listed is not None:
            on_listed([t.path for t in files])
        if options.dry_run:
            return session.dry_run(files, on_result)
        return session.run(files, on_result, list_marked=False)


def watch_dir(
    directory: str | os.PathLike[str],
    options: Options | None = None,
    *,
    on_result: ResultCallback | None = None,
    on_notice: Callable[[str], None] | None = None,
    notifier: Notifier | None = None,
) -> list[FileResult]:
    """Slim each capture of a directory as soon as it is eligible, until the options' stop is
    requested (pcapslim.watch); `on_result` hears of each file as it finishes. DirectoryError
    when the directory cannot be watched (or goes away)."""
    from .errors import require_extra
    from .watch import Watcher

    options = options or Options()
    if options.recursive or options.scheduler:
        raise UsageError(
            "--watch watches one directory here; it excludes --recursive and --scheduler"
        )
    if options.dry_run or options.check_only:
        raise UsageError("--watch slims files; it excludes --dry-run and --check-only")
    require_extra("inotify_simple", "sensor", "--watch")
    root = Path(directory)
    with _session(options, on_notice) as session:

        def report(result: FileResult) -> None:
            session.record(result)
            if on_result is not None:
                on_result(result)

        session.watching(True)
        watcher = Watcher(root, options, report, notifier)
        pool = session.pool()
        scheduler = Scheduler(pool, session.stop, watcher.finished)
        try:
            watcher.run(scheduler)
            session.stop.ended()
        except BaseException as e:
            if not isinstance(e, DirectoryError):  # an interrupt, or a callback that failed
                session.stop.abandon()
            raise
        finally:
            scheduler.close()
            pool.close()
            session.watching(False)
        return watcher.results
