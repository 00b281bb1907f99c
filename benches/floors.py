"""Floors measured in the same run as the thing they judge: reading the input with `cat`, and
writing plus fsyncing as many bytes as the output has. Also a sampler of anonymous memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

WRITE_BLOCK = 8 << 20


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(
    fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> tuple[float, float, float]:
    """(median, min, max) seconds over `repeat` runs; `setup` runs untimed before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        times.append(timed(fn)[0])
    return statistics.median(times), min(times), max(times)


def read_floor(path: Path, repeat: int = 3) -> float:
    """Median seconds of `cat FILE > /dev/null` (warm the cache first)."""

    def cat() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", str(path)], stdout=null, check=True)

    cat()
    return median_time(cat, repeat)[0]


def write_floor(nbytes: int, directory: Path, repeat: int = 3) -> float:
    """Median seconds to write `nbytes` to a new file in `directory` and fsync it."""
    block = os.urandom(min(WRITE_BLOCK, max(nbytes, 1)))
    target = directory / ".write_floor.tmp"

    def write() -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            left = nbytes
            while left > 0:
                left -= os.write(fd, block[: min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)

    try:  # a new file each time, as the slim tmp file is
        return median_time(write, repeat, setup=lambda: target.unlink(missing_ok=True))[0]
    finally:
        target.unlink(missing_ok=True)


def rss_anon() -> int:
    """Anonymous resident memory of this process in bytes (file mappings excluded)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """Context manager sampling RssAnon every few milliseconds; `.peak` is the growth over the
    value at entry."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakAnon:
        self._base = rss_anon()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon() - self._base)


def unlink_floor(src: Path, directory: Path, repeat: int = 3, at_once: int = 1) -> float:
    """Median seconds to delete `at_once` synced copies of `src`, each from a thread of its
    own: what replacing files of that size costs the file system, whoever replaces them (and,
    against `at_once` times the time of one, whether it frees blocks in parallel)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    victims = [directory / f".unlink_floor_{i}.tmp" for i in range(at_once)]

    def setup() -> None:
        for v in victims:
            shutil.copyfile(src, v)
        os.sync()

    def delete() -> None:
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(os.unlink, victims))

    return median_time(delete, repeat, setup=setup)[0]


NUMBA_PROBE = """
import numba

@numba.njit(cache=True, nogil=True)
def one(x):
    return x + 1

one(1)
"""


def numba_process_floor(directory: Path, repeat: int = 5) -> float:
    """Median seconds of a fresh interpreter that imports numba and calls one trivial function
    from numba's on-disk cache: what any process built on numba kernels pays before it reads a
    byte. SciPy's linear algebra is kept out, as the command keeps it out."""
    import sys

    script = directory / "numba_probe.py"
    script.write_text(
        'import sys\nsys.modules.setdefault("scipy.linalg.cython_blas", None)\n' + NUMBA_PROBE
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(directory / "numba_probe_cache"))

    def run() -> None:
        subprocess.run([sys.executable, str(script)], env=env, check=True)

    run()  # fills the cache
    try:
        return median_time(run, repeat)[0]
    finally:
        script.unlink()
