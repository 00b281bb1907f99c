"""A Dask cluster of separate processes on this machine: `dask scheduler` and `dask worker`
(no nanny: a killed worker stays dead), for the tests and the cluster benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


class Cluster:
    """`dask scheduler` and `dask worker` processes (no nanny: a killed worker stays dead)."""

    def __init__(self, tmp: Path, workers: int = 2, wrap: list[str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        file = tmp / "scheduler.json"
        self.procs: list[subprocess.Popen[bytes]] = []
        argv = [*DASK, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                "--scheduler-file", str(file)]  # fmt: skip
        self.scheduler = self._start(argv, "sched")
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        self.workers = [
            self._start(
                [
                    *(wrap or []),
                    *WORKER,
                    self.address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                ],
                f"w{i}",
            )  # fmt: skip
            for i in range(workers)
        ]
        self._wait_for_workers(workers)

    def _start(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(p)
        return p

    def _wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = "".join((self.tmp / f"w{i}.log").read_text(errors="replace") for i in range(n))
            if logs.count("Registered to:") >= n:
                return
            time.sleep(0.2)
        raise AssertionError(f"workers did not register: {logs}")

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
