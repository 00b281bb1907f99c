"""Helper threads that live as long as the thread they help.

A file's pass uses helper threads: one maps the next window in, one copies and writes the
window before, one re-reads the tmp as it is written. Started per file they cost more than a
small capture's whole pass (a thread start, an executor, its shutdown). Each thread that slims
files (a worker of a run, the main thread of a single file) has its own helper of each kind,
started on first use and reused by every file it takes after. The helpers are kept in
thread-local storage: when their thread ends, its executors are collected and their threads
end with them. One file's jobs on a helper all finish (its user waits for its last one) before
the next file's are submitted, since one thread takes files one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from .shutdown import quiet_thread

T = TypeVar("T")
_local = threading.local()


def helper(kind: str) -> ThreadPoolExecutor:
    """The calling thread's helper of this kind: one thread, jobs run in order."""
    pools: dict[str, ThreadPoolExecutor] | None = getattr(_local, "pools", None)
    if pools is None:
        pools = _local.pools = {}
    pool = pools.get(kind)
    if pool is None:
        pool = pools[kind] = ThreadPoolExecutor(1, f"pcapslim-{kind}", initializer=quiet_thread)
    return pool


def kept(key: Hashable, make: Callable[[], T]) -> T:
    """The calling thread's value for `key`, made on first use: scratch space (record tables,
    output buffers) that every file the thread takes reuses instead of allocating and
    faulting in afresh."""
    values: dict[Hashable, Any] | None = getattr(_local, "kept", None)
    if values is None:
        values = _local.kept = {}
    if key not in values:
        values[key] = make()
    return cast(T, values[key])


def release() -> None:
    """End the calling thread's helpers and drop its scratch space (a worker thread, as it
    ends: its helpers are gone when it is)."""
    pools: dict[str, ThreadPoolExecutor] = getattr(_local, "pools", None) or {}
    _local.pools, _local.kept = {}, {}
    for pool in pools.values():
        pool.shutdown(wait=True)
