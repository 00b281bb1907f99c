"""The cluster's overhead: `pcap-slim --dir` over 8 x 128 MiB through a two-worker Dask cluster
against `--workers 2` on this machine, whole processes, alternating.

    python -m benches.bench_cluster [--files 8] [--size-mib 128] [--repeat 5]

The scheduler and the two worker processes run on this machine (started once, before the
clock), as the local run's two worker threads do; each run works on fresh synced copies with a
warm page cache. Prints the medians and the overhead (cluster / local - 1; target <= 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benches.daskcluster import Cluster
from benches.gen_capture import ensure

DATA = Path(__file__).parent / "data"
MIB = 1 << 20


def _fresh(sources: list[Path], work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for i, s in enumerate(sources):
        shutil.copyfile(s, work / f"capture_{i:02d}.pcap")
    os.sync()
    for f in work.iterdir():
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def _run(argv: list[str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size-mib", type=float, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    sources = [
        ensure(DATA / f"budget_{a.size_mib:g}mib_{i}.pcap", a.size_mib * MIB / 1e6, seed=10 + i)
        for i in range(a.files)
    ]
    base = Path(tempfile.mkdtemp(prefix="pcapslim-cluster-", dir=DATA))
    cluster = Cluster(base / "dask")
    cli = [sys.executable, "-m", "pcapslim", "--output", "json"]
    work = base / "work"
    times: dict[str, list[float]] = {"local": [], "cluster": [], "local-empty": [],
                                     "cluster-empty": []}  # fmt: skip
    empty = base / "empty"
    empty.mkdir()
    workers_seen: set[str] = set()
    try:
        for _ in range(a.repeat):
            for kind in ("local", "cluster"):
                _fresh(sources, work)
                # both in the cluster's network namespace, where its address is reached
                extra = ["--workers", "2"] if kind == "local" else ["--scheduler", cluster.address]
                wall, doc = _run(cluster.argv(*cli, "--dir", str(work), *extra))
                assert doc["summary"]["ok"] == a.files, doc["summary"]
                times[kind].append(wall)
                workers_seen |= {e.get("worker", "") for e in doc["files"]} - {""}
                # the same command on an empty directory: what a run costs before any file
                times[f"{kind}-empty"].append(
                    _run(cluster.argv(*cli, "--dir", str(empty), *extra))[0]
                )
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    local, remote = statistics.median(times["local"]), statistics.median(times["cluster"])
    total = sum(s.stat().st_size for s in sources)
    print(f"{a.files} x {a.size_mib:g} MiB ({total / 1e6:.0f} MB), medians of {a.repeat}:")
    print(f"  --workers 2 locally:       {local:.3f} s  ({total / 1e6 / local:.0f} MB/s)  "
          f"runs {', '.join(f'{t:.2f}' for t in times['local'])}")  # fmt: skip
    print(f"  two-worker Dask cluster:   {remote:.3f} s  ({total / 1e6 / remote:.0f} MB/s)  "
          f"runs {', '.join(f'{t:.2f}' for t in times['cluster'])}; "
          f"workers {len(workers_seen)}")  # fmt: skip
    overhead = remote / local - 1
    print(f"  cluster overhead, whole processes: {overhead:+.1%} (target <= 10 %)")
    fixed_local = statistics.median(times["local-empty"])
    fixed_remote = statistics.median(times["cluster-empty"])
    print(f"  an empty directory: {fixed_local:.3f} s locally, {fixed_remote:.3f} s through the "
          "cluster (importing Dask's client, connecting, closing)")  # fmt: skip
    work_overhead = (remote - fixed_remote) / (local - fixed_local) - 1
    print(f"  cluster overhead beyond that fixed cost (the files' work): {work_overhead:+.1%}")
    return 0 if overhead <= 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
