"""Slimming an archive on a Dask cluster (`pcap-slim --dir D --scheduler tcp://HOST:PORT`).

The run layer (pcapslim.run) schedules the files here as it does on local threads; this module
only runs them on the cluster's workers: one task per file, each building its job from the
run's options with the same function as a local run (`run.build_job`) and running the same
coordinator (SPEC §5 makes several slimmers on one directory safe) on the file as its host
sees it. Throttles apply per worker process: the tasks of one run in a worker process share
its I/O bucket and CPU budget.

Stopping: when the command is stopped (SIGTERM, SIGINT), it sets the run's stop in the
scheduler's variables; every task polls it, so the workers stop as a local run does: no new
file, the files in progress finished or abandoned after the grace, at once on a second signal.

A worker that dies in the middle of a file: the scheduler runs the task again on another
worker, and the dead worker's tmp does not hold the retry back (its lock died with it,
pcapslim.tmpowner). A worker that cannot see a file fails that file, naming itself.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .errors import SchedulerError, require_extra
from .results import STATUS_FAIL, FileResult
from .shutdown import STRAND_SECONDS, Shutdown

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .capdir import Target
    from .coordinator import Job
    from .run import Options

CONNECT_TIMEOUT = "5s"
LOOKAHEAD = 2  # tasks in flight per worker thread: each worker has its next file queued
STOP_POLL_SECONDS = 0.5  # how often a task looks at its run's stop
# a file abandoned on a worker is waited for longer than on this machine: the stop reaches the
# task at its next poll, the next task queued behind it returns at once, the results travel back
STRAND_ON_CLUSTER = STRAND_SECONDS + STOP_POLL_SECONDS + 1.0
JOBS_KEPT = 8  # jobs (throttles) of recent runs a worker process keeps


def connect(address: str) -> Any:
    """A client of the scheduler at `address`; SchedulerError when it cannot be reached."""
    require_extra("distributed", "cluster", "--scheduler")
    import distributed

    client: Any = distributed.Client
    try:
        return client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {address} ({e}); nothing was touched"
        ) from None


def _stop_key(run: str) -> list[str]:
    """Where a run's stop lives in the scheduler's metadata: absent until the client is
    stopped, then {"why": signal name, "abandon": bool}."""
    return ["pcapslim", "stop", run]


class ClusterPool:
    """The run layer's pool on a cluster: each file a task on whichever worker takes it."""

    strand_seconds = STRAND_ON_CLUSTER

    def __init__(self, client: Any, options: Options) -> None:
        self.client = client
        self.options = options.for_workers()
        self.run = uuid.uuid4().hex[:12]
        threads = sum(client.nthreads().values()) or 1
        self.slots = LOOKAHEAD * threads
        self._numbers = itertools.count()
        self._told: dict[str, object] = {}

    def submit(self, target: Target) -> Future[FileResult | None]:
        from .shutdown import signals_to_main

        with signals_to_main():  # whatever thread the client starts for it
            future: Future[FileResult | None] = self.client.submit(
                run_task,
                target,
                self.options,
                self.run,
                key=f"pcapslim-{self.run}-{next(self._numbers)}",
                pure=False,
            )
        return future

    def stopping(self, why: str, abandon: bool) -> None:
        self._told = {"why": why, "abandon": abandon}
        self.client.set_metadata(_stop_key(self.run), self._told)

    def failure(self, path: str, error: BaseException) -> FileResult:
        return FileResult(
            path,
            STATUS_FAIL,
            error=f"{path}: the cluster could not run its task ({type(error).__name__}: "
            f"{error}); the original is untouched unless its marker says otherwise",
        )

    def close(self) -> None:
        pass  # the client is the session's; a stopped run's entry stays in the metadata


class RunStop(Shutdown):
    """A run's stop on a worker: follows the stop its client set in the scheduler, with the
    grace and the abandonment of a local stop."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self._run = run
        self._next_poll = 0.0
        self._poll_lock = threading.Lock()

    def _refresh(self) -> None:
        if self._abandon.is_set():
            return
        with self._poll_lock:
            now = time.monotonic()
            if now < self._next_poll:
                return
            self._next_poll = now + STOP_POLL_SECONDS
        from distributed import get_client

        try:
            client: Any = get_client()
            told = client.get_metadata(_stop_key(self._run), default=None)
        except Exception:  # noqa: BLE001 - the scheduler is away: go on as told so far
            return
        if not told:
            return
        if not self._requested.is_set():
            why = told.get("why")
            self.request(f"{why} on the client" if why else "stopped on the client")
        if told.get("abandon"):
            self.abandon()


_jobs: OrderedDict[tuple[Options, str], Job] = OrderedDict()
_jobs_lock = threading.Lock()


def worker_job(options: Options, run: str, concurrency: int) -> Job:
    """The job of a run in this worker process, built once by the same function as a local
    run's job, with the worker's threads as its concurrency and the run's stop."""
    from .run import build_job

    key = (options, run)
    with _jobs_lock:
        job = _jobs.get(key)
        if job is None:
            job = build_job(options, concurrency=concurrency, stop=RunStop(run))
            _jobs[key] = job
            while len(_jobs) > JOBS_KEPT:
                _jobs.popitem(last=False)
        _jobs.move_to_end(key)
        return job


def run_task(target: Target, options: Options, run: str) -> FileResult | None:
    """The task: one file on whichever worker runs this; None when its run was stopped before
    the file was taken."""
    from distributed import get_worker

    from .coordinator import drain, slim_in_place

    worker = get_worker()
    address = worker.address
    job = worker_job(options, run, getattr(worker, "nthreads", 1) or 1)
    assert job.shutdown is not None
    if job.shutdown.requested:
        return None
    path = str(target.path)
    seen = _sees(target)
    if seen is not None:
        return FileResult(
            path,
            STATUS_FAIL,
            error=f"{path}: not found on worker {address}, which {seen} (is the archive "
            "mounted there?); nothing was changed",
            worker=address,
        )
    result = slim_in_place(target, job)
    drain()  # the replaced original is let go of before the task reports
    if result.status == STATUS_FAIL and result.error:
        result.error += f" (on worker {address})"
    result.worker = address
    return result


def _sees(target: Target) -> str | None:
    """None when this worker sees the file; else what it sees of it."""
    try:
        with target.directory() as d:
            d.lstat(target.name)
        return None
    except FileNotFoundError:
        return "sees its directory" if target.path.parent.is_dir() else "does not see its directory"
    except OSError:
        return None  # there, but not as expected: the file's own run says what is wrong
