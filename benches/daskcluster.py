"""A Dask cluster of separate processes on this machine, for the tests and the cluster
benchmark: `dask scheduler` and `dask worker` (no nanny: a killed worker stays dead), in a
network namespace of their own (its loopback only: nothing listens in the machine's own
namespace). Its clients run in the namespace too: `cluster.argv(...)` is a command line there.
Needs root (ip netns)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]
_names = itertools.count()


class Cluster:
    """`dask scheduler` and `dask worker` processes (no nanny: a killed worker stays dead) in a
    network namespace the cluster creates and deletes."""

    def __init__(self, tmp: Path, workers: int = 2, wrap: list[str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.netns = f"pcapslim-dask-{os.getpid()}-{next(_names)}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            subprocess.run(self.argv("ip", "link", "set", "lo", "up"), check=True)
            file = tmp / "scheduler.json"
            argv = [*DASK, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(file)]  # fmt: skip
            self.scheduler = self._start(self.argv(*argv), "sched")
            deadline = time.monotonic() + 60
            while not file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.address = json.loads(file.read_text())["address"]
            worker = [*WORKER, self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
            self.workers = [
                self._start(self.argv(*(wrap or []), *worker, "--name", f"w{i}"), f"w{i}")
                for i in range(workers)
            ]
            self._wait_for_workers(workers)
        except BaseException:
            self.close()
            raise

    def argv(self, *command: str) -> list[str]:
        """`command` run in the cluster's network namespace (where its address is reached)."""
        return ["ip", "netns", "exec", self.netns, *command]

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
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)
