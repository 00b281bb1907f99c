"""Slimming an archive on a Dask cluster (`pcap-slim --dir D --scheduler tcp://HOST:PORT`).

One task per file, each running the same coordinator (SPEC §5 makes several slimmers on one
directory safe) on a worker that sees the archive on shared storage. Results come back as the
tasks finish; each names the worker that ran it. Throttles apply per worker process: every
task in a worker process shares that process's I/O bucket and CPU budget.

A worker that dies in the middle of a file: the scheduler runs the task again on another
worker, and the dead worker's tmp does not hold the retry back (its lock died with it,
pcapslim.tmpowner). A worker that cannot see a file fails that file, naming itself.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import coordinator as co
from .errors import PcapslimError

CONNECT_TIMEOUT = "5s"


def require() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise PcapslimError(
            "--scheduler needs Dask distributed: pip install 'pcapslim[cluster]'"
        ) from None


@dataclass(frozen=True)
class Options:
    """What every task is asked to do (sent to the workers with each task)."""

    check_only: bool = False
    use_mmap: bool = True
    rules: str = "compatible"
    max_io_mbps: float | None = None
    max_cpu_percent: float | None = None
    cpu_backoff_above: float | None = None
    cpu_backoff_strength: float = 0.5
    compress_level: int | None = None
    offset_map: bool = False


_jobs: dict[Options, co.Job] = {}
_jobs_lock = threading.Lock()


def _job(opts: Options) -> co.Job:
    """One Job per worker process and options: the throttles are the process's."""
    with _jobs_lock:
        job = _jobs.get(opts)
        if job is None:
            from .throttle import throttles

            io, cpu = throttles(
                opts.max_io_mbps,
                opts.max_cpu_percent,
                opts.cpu_backoff_above,
                opts.cpu_backoff_strength,
            )
            job = co.Job(
                check_only=opts.check_only,
                use_mmap=opts.use_mmap,
                rules=opts.rules,
                io=io,
                cpu=cpu,
                compress_level=opts.compress_level,
                offset_map=opts.offset_map,
            )
            _jobs[opts] = job
        return job


def slim_on_worker(path: str, opts: Options) -> co.FileResult:
    """The task: run the coordinator on one file, on whichever worker runs this."""
    from distributed import get_worker

    worker = get_worker().address
    p = Path(path)
    if not os.path.lexists(p):
        seen = "sees its directory" if p.parent.is_dir() else "does not see its directory"
        return co.FileResult(
            path,
            co.STATUS_FAIL,
            error=f"{path}: not found on worker {worker}, which {seen} (is the archive "
            "mounted there?); nothing was changed",
            worker=worker,
        )
    result = co.slim_in_place(p, _job(opts))
    co.drain()  # the replaced original is let go of before the task reports
    if result.status == co.STATUS_FAIL and result.error:
        result.error += f" (on worker {worker})"
    result.worker = worker
    return result


def connect(address: str) -> Any:
    """A client of the scheduler at `address`; PcapslimError when it cannot be reached."""
    require()
    import distributed

    client: Any = distributed.Client
    try:
        return client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise PcapslimError(
            f"cannot reach the Dask scheduler at {address} ({e}); nothing was touched"
        ) from None


def slim_paths(
    client: Any,
    paths: Sequence[str | os.PathLike[str]],
    opts: Options | None = None,
    on_result: Callable[[int, co.FileResult], None] | None = None,
) -> list[co.FileResult]:
    """Slim every path on the cluster (one task each); `on_result(index, result)` hears of
    each file as it finishes. The results come back in the order of `paths`."""
    import distributed

    as_completed: Any = distributed.as_completed
    opts = opts or Options()
    run = uuid.uuid4().hex[:12]
    futures = [
        client.submit(slim_on_worker, os.fspath(p), opts, key=f"pcapslim-{run}-{i}", pure=False)
        for i, p in enumerate(paths)
    ]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[co.FileResult | None] = [None] * len(futures)
    for fut in as_completed(futures, loop=client.loop):
        i = index[fut.key]
        try:
            result = fut.result()
        except Exception as e:  # the task itself failed: its workers kept dying, or a bug
            name = os.fspath(paths[i])
            result = co.FileResult(
                name,
                co.STATUS_FAIL,
                error=f"{name}: the cluster could not run its task ({type(e).__name__}: {e}); "
                "the original is untouched unless its marker says otherwise",
            )
        results[i] = result
        if on_result is not None:
            on_result(i, result)
    return [r for r in results if r is not None]
