"""Throttles that sleep between chunks: an I/O cap over bytes read and written, a CPU cap, and a
back-off while the rest of the machine is busy. They never change the bytes written."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_SECONDS = 0.25  # a full bucket holds this many seconds' worth of budget
LOAD_SAMPLE_SECONDS = 0.5  # how often the system load is sampled for the back-off


class TokenBucket:
    """A shared budget refilled at `rate` units per second. Spending more than is there is
    allowed; the spender then sleeps until the debt is paid back."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.rate = rate
        self._tokens = rate * BURST_SECONDS
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._tokens + (now - self._last) * self.rate, self.rate * BURST_SECONDS)
        self._last = now

    def spend(self, amount: float) -> float:
        """Take `amount`; return how long the caller must sleep to stay within the rate."""
        with self._lock:
            self._refill()
            self._tokens -= amount
            return max(0.0, -self._tokens / self.rate) if self.rate > 0 else 0.0

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill()
            self.rate = rate


class IoThrottle:
    """--max-io-mbps: bytes read plus bytes written, decimal MB per second, all workers.
    `sleep` is how it waits (a shutdown's sleep wakes early)."""

    def __init__(self, mbps: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.bucket = TokenBucket(mbps * 1e6)
        self.sleep = sleep

    def account(self, nbytes: int) -> None:
        if nbytes > 0:
            self.sleep(self.bucket.spend(nbytes))


class CpuThrottle:
    """--max-cpu-percent and --cpu-backoff-above/--cpu-backoff-strength.

    The budget is CPU seconds of this process per wall second: max_percent of the whole machine
    (100 = every core). While the CPU use of everything else on the machine is above
    `backoff_above` percent, the target shrinks by up to `strength` of itself, in proportion to
    how far above the threshold the load is.
    """

    def __init__(
        self,
        max_percent: float | None,
        backoff_above: float | None = None,
        strength: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import psutil

        self.sleep = sleep
        self._psutil = psutil
        self._proc = psutil.Process()
        self.cores = psutil.cpu_count() or 1
        self.base_percent = 100.0 if max_percent is None else max_percent
        self.backoff_above = backoff_above
        self.strength = strength
        self.target_percent = self.base_percent
        self.bucket = TokenBucket(self._rate(self.base_percent))
        self._lock = threading.Lock()
        self._last_cpu = self._cpu_seconds()
        self._last_sample = time.monotonic()
        psutil.cpu_percent(None)
        self._proc.cpu_percent(None)

    def _rate(self, percent: float) -> float:
        return percent / 100.0 * self.cores

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def _update_target(self) -> None:
        if self.backoff_above is None:
            return
        now = time.monotonic()
        if now - self._last_sample < LOAD_SAMPLE_SECONDS:
            return
        self._last_sample = now
        system = self._psutil.cpu_percent(None)
        ours = self._proc.cpu_percent(None) / self.cores
        others = max(0.0, system - ours)
        target = self.base_percent
        if others > self.backoff_above:
            excess = (others - self.backoff_above) / max(100.0 - self.backoff_above, 1e-9)
            target = self.base_percent * (1.0 - self.strength * min(1.0, excess))
        self.target_percent = max(1.0, target)
        self.bucket.set_rate(self._rate(self.target_percent))

    def checkpoint(self) -> None:
        """Charge the CPU used since the last checkpoint and sleep off any excess."""
        with self._lock:
            self._update_target()
            cpu = self._cpu_seconds()
            used, self._last_cpu = cpu - self._last_cpu, cpu
        self.sleep(self.bucket.spend(used))


def throttles(
    max_io_mbps: float | None,
    max_cpu_percent: float | None,
    backoff_above: float | None,
    strength: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[IoThrottle | None, CpuThrottle | None]:
    """The throttles the command-line options ask for (None where not asked)."""
    io = IoThrottle(max_io_mbps, sleep) if max_io_mbps else None
    cpu = None
    if max_cpu_percent is not None or backoff_above is not None:
        cpu = CpuThrottle(max_cpu_percent, backoff_above, strength, sleep)
    return io, cpu
