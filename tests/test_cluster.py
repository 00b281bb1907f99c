"""Archive scale on a real Dask cluster: a scheduler and worker processes started here, the
command run against it as a subprocess; the tmp lock that lets a retry take over at once."""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import naive
import pytest
import randframes
from support import tls_frame, wait_for
from support.cli import CLI

from benches.daskcluster import Cluster
from pcapslim import coordinator as co
from pcapslim import eligibility, slim_file, synth, tmpowner
from pcapslim.capdir import CaptureDir
from pcapslim.run import Options, build_job


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


def _captures(n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        r = random.Random(700 + i)
        link = r.choice((1, 1, 113, 101, 276))
        frames = [randframes.frame(r, link) for _ in range(r.randrange(200, 600))]
        recs = [synth.Record(f, ts=1_700_000_000 + k) for k, f in enumerate(frames)]
        name = f"sub{i % 3}/c{i:02d}.pcap" if i % 4 == 0 else f"c{i:02d}.pcap"
        out[name] = synth.pcap_bytes(recs, link)
    return out


def _populate(d: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)


def _run(*args: object, on: Cluster | None = None, timeout: float = 600) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """The command with a JSON report; `on` a cluster: run where its address is reached."""
    argv = [*CLI, *map(str, args), "--output", "json"]
    p = subprocess.run(on.argv(*argv) if on else argv, capture_output=True,
                       text=True, timeout=timeout)  # fmt: skip
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr


def _comparable(entry: dict, root: Path) -> dict:  # type: ignore[type-arg]
    e = {k: v for k, v in entry.items() if k not in ("elapsed_ms", "worker")}
    e["file"] = str(Path(entry["file"]).relative_to(root))
    return e


def test_forty_files_on_the_cluster_equal_a_local_run(tmp_path, cluster):  # type: ignore[no-untyped-def]
    files = _captures(40)
    remote, local = tmp_path / "remote", tmp_path / "local"
    _populate(remote, files)
    _populate(local, files)
    rc, doc, err = _run("--dir", remote, "--recursive", "--scheduler", cluster.address, on=cluster)
    assert rc == 0, err
    rc_local, doc_local, err_local = _run("--dir", local, "--recursive", "--workers", "2")
    assert rc_local == 0, err_local
    for name, data in files.items():
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
        assert (remote / name).read_bytes() == naive.slim_bytes(data).data, name
        assert co.marker_path(remote / name).is_file()
    by_file = {e["file"]: e for e in doc["files"]}
    assert len(by_file) == len(doc["files"]) == 40  # each file once
    got = sorted((_comparable(e, remote) for e in doc["files"]), key=lambda e: e["file"])
    want = sorted((_comparable(e, local) for e in doc_local["files"]), key=lambda e: e["file"])
    assert got == want
    assert {k: doc["summary"][k] for k in ("ok", "skip", "fail")} == {
        "ok": 40,
        "skip": 0,
        "fail": 0,
    }
    workers = {e["worker"] for e in doc["files"]}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    print("files per worker:", {w: sum(e["worker"] == w for e in doc["files"]) for w in workers})
    # check-only and dry-run go through the same path and touch nothing
    again = tmp_path / "again"
    _populate(again, dict(list(files.items())[:6]))
    rc, check, _ = _run("--dir", again, "--recursive", "--scheduler", cluster.address,
                        "--check-only", on=cluster)  # fmt: skip
    assert rc == 0 and check["summary"]["ok"] == 6 and check["summary"]["check_only"] is True
    assert all(e["worker"] for e in check["files"])
    for name, data in list(files.items())[:6]:
        assert (again / name).read_bytes() == data and not co.marker_path(again / name).exists()
    dry = subprocess.run(cluster.argv(*CLI, "--dir", str(again), "--recursive", "--scheduler",
                                      cluster.address, "--dry-run", "--output", "json"),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert len(dry.stdout.splitlines()) == 6


def test_an_unreachable_scheduler_is_an_error_and_touches_nothing(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "a.pcap").write_bytes(synth.pcap_bytes([]))
    stale = tmp_path / "b.pcap.tmp"
    stale.write_bytes(b"a dead worker's")
    os.utime(stale, (time.time() - 900, time.time() - 900))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    p = subprocess.run([*CLI, "--dir", str(tmp_path), "--scheduler", "tcp://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in p.stderr
    assert "nothing was touched" in p.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_a_worker_that_cannot_see_the_files_fails_them_by_name(tmp_path):  # type: ignore[no-untyped-def]
    """The worker runs in a mount namespace where the archive is an empty file system."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(2):
        (archive / f"x{i}.pcap").write_bytes(synth.pcap_bytes([]))
    blind = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             f'mount -t tmpfs tmpfs {archive} && exec "$0" "$@"']  # fmt: skip
    c = Cluster(tmp_path / "blind", workers=1, wrap=blind)
    try:
        rc, doc, err = _run("--dir", archive, "--scheduler", c.address, on=c)
    finally:
        c.close()
    assert rc == 1, err
    assert [e["status"] for e in doc["files"]] == ["fail", "fail"]
    for e in doc["files"]:
        assert f"not found on worker {e['worker']}" in e["error"], e["error"]
        assert "is the archive mounted there?" in e["error"]
    assert sorted(p.name for p in archive.iterdir()) == ["x0.pcap", "x1.pcap"]


@pytest.mark.slow
def test_a_worker_killed_mid_file_is_replaced_and_every_file_is_slimmed_once(tmp_path):  # type: ignore[no-untyped-def]
    from benches.gen_capture import generate

    src = tmp_path / "src.pcap"
    generate(src, 25, seed=31)
    ref = tmp_path / "ref.pcap"
    slim_file(src, ref)
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(6):
        shutil.copyfile(src, archive / f"f{i}.pcap")
    c = Cluster(tmp_path / "cluster")
    try:
        p = subprocess.Popen(c.argv(*CLI, "--dir", str(archive), "--scheduler", c.address,
                                    "--max-io-mbps", "15", "--output", "json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            for tmp in archive.glob("*.tmp"):
                mark = tmpowner.owner(tmp)
                if mark:
                    victim = (tmp, int(mark.split()[2]))
                    break
            time.sleep(0.05)
        assert victim is not None, "no tmp was ever written"
        time.sleep(0.3)  # well into the file
        os.kill(victim[1], signal.SIGKILL)
        out, err = p.communicate(timeout=600)
    finally:
        c.close()
    assert p.returncode == 0, err
    doc = json.loads(out)
    assert sorted(Path(e["file"]).name for e in doc["files"]) == [f"f{i}.pcap" for i in range(6)]
    assert {e["status"] for e in doc["files"]} == {"ok"}
    slim = ref.read_bytes()
    for i in range(6):
        assert (archive / f"f{i}.pcap").read_bytes() == slim
        assert co.marker_path(archive / f"f{i}.pcap").is_file()
    assert not list(archive.glob("*.tmp"))
    killed_file = victim[0].name[: -len(".tmp")]
    entry = next(e for e in doc["files"] if Path(e["file"]).name == killed_file)
    print(f"killed the worker (pid {victim[1]}) slimming {killed_file}; it was done again on "
          f"{entry['worker']}")  # fmt: skip
    assert entry["worker"].startswith("tcp://")


HOLDER = """
import os, sys, time
from pcapslim import tmpowner
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
assert tmpowner.claim(fd)
os.write(fd, b"half a capture")
print("held", flush=True)
time.sleep(600)
"""


def test_a_locked_tmp_is_busy_and_taken_over_at_once_when_its_writer_dies(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "a.pcap"
    data = synth.pcap_bytes([synth.Record(synth.eth_ip(synth.ipv4(
        synth.tcp(443, 5000, b"\x17\x03\x03" + bytes(300)), 6)))] * 20)  # fmt: skip
    f.write_bytes(data)
    tmp = co.tmp_path(f)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.utime(tmp, (time.time() - 3600, time.time() - 3600))  # old: the age rule would take it
    assert co.slim_in_place(f, co.Job()).status == co.STATUS_BUSY
    with CaptureDir.open(tmp_path) as d:
        assert eligibility.clean_stale_tmps(d) == [] and tmp.exists()
    assert f.read_bytes() == data
    holder.kill()
    holder.wait()
    holder.stdout.close()
    os.utime(tmp, None)  # fresh: the age rule alone would call it busy
    result = co.slim_in_place(f, co.Job())
    assert result.status == co.STATUS_OK
    assert f.read_bytes() == naive.slim_bytes(data).data and not tmp.exists()


def test_an_unmarked_fresh_tmp_still_follows_the_age_rule(tmp_path):  # type: ignore[no-untyped-def]
    """The native tool takes no lock: its fresh tmp means busy, whatever its lock says."""
    f = tmp_path / "n.pcap"
    f.write_bytes(synth.pcap_bytes([]))
    co.tmp_path(f).write_bytes(b"native")
    assert tmpowner.owner(co.tmp_path(f)) is None
    assert co.slim_in_place(f, co.Job()).status == co.STATUS_BUSY
    assert co.tmp_path(f).read_bytes() == b"native"


def test_throttles_are_per_worker_process_and_run():  # type: ignore[no-untyped-def]
    """The tasks of one run in a worker process share its throttles; another run (or other
    options) gets its own."""
    from pcapslim import cluster

    a = cluster.worker_job(Options(max_io_mbps=5), "run-a", 1)
    assert cluster.worker_job(Options(max_io_mbps=5), "run-a", 1) is a
    assert a.io is not None and a.io.bucket.rate == 5e6
    assert cluster.worker_job(Options(max_io_mbps=6), "run-a", 1) is not a
    assert cluster.worker_job(Options(max_io_mbps=5), "run-b", 1) is not a


# What a job does, as plain values (reads, rules, throttles, compression, the stop): an
# expression of `job`, evaluated on a worker and here alike (this module is not on the workers).
JOB_AS_SEEN = """{
    "options": job.options,
    "use_mmap": job.use_mmap,
    "io_rate": job.io.bucket.rate if job.io else None,
    "cpu": (job.cpu.base_percent, job.cpu.backoff_above, job.cpu.strength) if job.cpu else None,
    "window_bytes": job.window_bytes,
    "spare_core": job.spare_core,
    "stop": (isinstance(job.shutdown, __import__("pcapslim.shutdown").shutdown.Shutdown),
             job.shutdown.grace, job.shutdown.requested),
    "throttles_sleep_on_the_stop": all(
        t.sleep == job.shutdown.sleep for t in (job.io, job.cpu) if t is not None
    ),
}"""
ASK_A_WORKER = """
import base64, pickle, sys
from distributed import Client
options = pickle.loads(base64.b64decode(sys.argv[2]))
with Client(sys.argv[1], set_as_default=False) as client:
    task = client.submit(eval, sys.argv[3], {"options": options}, pure=False)
    answer = (client.nthreads(), task.result(timeout=60))
sys.stdout.write(base64.b64encode(pickle.dumps(answer)).decode())
"""
ON_WORKER = (
    f"(lambda job: {JOB_AS_SEEN})"
    "(__import__('pcapslim.cluster').cluster.worker_job(options, 'same-job', 1))"
)


@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(rules="forensic", max_io_mbps=40, compress_level=9, offset_map=True),
        Options(check_only=True, max_cpu_percent=30, cpu_backoff_above=50, mmap=False),
    ],
    ids=["defaults", "io-cap-forensic", "cpu-cap-check-only"],
)
def test_a_worker_builds_its_job_as_a_local_run_does(cluster, options):  # type: ignore[no-untyped-def]
    """The job a Dask worker runs comes from `run.build_job`, from the same options as a local
    run with the worker's threads as its concurrency: the same throttles, reads, compression
    threads rule and stop (a RunStop is a Shutdown with its grace, following the client)."""
    client = subprocess.run(
        cluster.argv(sys.executable, "-c", ASK_A_WORKER, cluster.address,
                     base64.b64encode(pickle.dumps(options.for_workers())).decode(), ON_WORKER),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    threads, remote = pickle.loads(base64.b64decode(client.stdout))
    assert set(threads.values()) == {1}
    local = eval(f"(lambda job: {JOB_AS_SEEN})(job)", {"job": build_job(options, concurrency=1)})
    assert remote == local
    print("job on a worker:", remote)


def _slow_archive(tmp_path, n: int = 3):  # type: ignore[no-untyped-def]
    archive = tmp_path / "archive"
    archive.mkdir()
    data = synth.pcap_bytes([synth.Record(tls_frame(1400), ts=i) for i in range(8000)])
    for i in range(n):
        (archive / f"s{i}.pcap").write_bytes(data)
    return archive, data


def test_sigterm_stops_a_cluster_run_as_it_stops_a_local_one(tmp_path, cluster):  # type: ignore[no-untyped-def]
    """The client is stopped while the workers slim throttled files: no new file is taken, the
    files in progress are abandoned on the workers after the grace (their originals untouched,
    no tmp left, reported `abandoned`), and the command exits 0 within ten seconds."""
    archive, data = _slow_archive(tmp_path)
    p = subprocess.Popen(cluster.argv(*CLI, "--dir", str(archive), "--scheduler", cluster.address,
                                      "--max-io-mbps", "1", "--output", "json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert wait_for(lambda: len(list(archive.glob("*.tmp"))) == 2, 60), "never started"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    assert took < 10, took
    doc = json.loads(out)
    assert sorted(e["status"] for e in doc["files"]) == ["abandoned", "abandoned"]
    for e in doc["files"]:
        assert "stopped (SIGTERM on the client)" in e["error"], e["error"]
        assert e["worker"].startswith("tcp://")
    assert doc["summary"]["skip"] == 2 and doc["summary"]["ok"] == 0
    for f in archive.glob("*.pcap"):
        assert f.read_bytes() == data and not co.marker_path(f).exists()
    assert wait_for(lambda: not list(archive.glob("*.tmp")), 5)
    print(f"cluster run stopped {took:.2f} s after SIGTERM")
