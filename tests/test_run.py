"""The run layer: one path from options to results for the library and the command. The library's
directory run against the command's on twin directories; files that are not captures (FIFOs,
sockets, device nodes) failing at once; the options object."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import (
    PLAIN,
    SAMPLE,
    TLS,
    age,
    capture,
    expected_slim,
    listing,
    tls_frame,
    tmps,
    wait_for,
)
from support.cli import CLI, invoke

import pcapslim
from pcapslim import report, synth
from pcapslim.capdir import Target
from pcapslim.errors import UsageError
from pcapslim.run import Options, build_job
from pcapslim.shutdown import Shutdown


def _populate(d: Path) -> None:
    """Captures of every kind a directory run meets: to slim, nothing to cut, not a capture,
    marked, young, a symlink, a subdirectory, a stale tmp and a fresh one."""
    d.mkdir()
    files = {
        "a.pcap": capture(4, 1),
        "b.pcapng": synth.pcapng_bytes([synth.Record(TLS), synth.Record(PLAIN)]),
        "c_plain.pcap": capture(0, 3),
        "d_bad.pcap": b"not a capture, but named like one......",
        "e_marked.pcap": capture(2, 2),
        "f_young.pcap": capture(1, 1),
        "g_busy.pcap": capture(3, 0),
        "sample.pcap": SAMPLE.read_bytes(),
    }
    for i, (name, data) in enumerate(files.items()):
        (d / name).write_bytes(data)
        age(d / name, 3600 - 60 * i)
    age(d / "f_young.pcap", 10)
    (d / ".slim_markers").mkdir()
    (d / ".slim_markers" / "e_marked.pcap").touch()
    os.symlink(d / "a.pcap", d / "link.pcap")
    (d / "sub").mkdir()
    (d / "sub" / "deep.pcap").write_bytes(capture())
    (d / "x.pcap.tmp").write_bytes(b"a dead worker's")
    age(d / "x.pcap.tmp", 3600)
    (d / "g_busy.pcap.tmp").write_bytes(b"another worker's")


def _entries(results: list, root: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for r in results:
        e = report.file_entry(r)
        e.pop("elapsed_ms", None)
        e["file"] = str(Path(e["file"]).relative_to(root))
        if "error" in e:
            e["error"] = e["error"].replace(str(root), "D")
        out.append(e)
    return out


def _same_files(a: Path, b: Path) -> None:
    la, lb = listing(a), listing(b)
    for entries in (la, lb):
        entries[".slim_markers"] = (entries[".slim_markers"][0], 0, b"")
        for k in [k for k in entries if os.path.islink(a / k) or os.path.islink(b / k)]:
            entries[k] = (entries[k][0], 0, b"")  # the symlink's target names its directory
    assert la == lb


@pytest.mark.parametrize(
    "flags,options",
    [
        ((), Options(age_minutes=1)),
        (("--workers", "2", "--rules", "forensic"), Options(age_minutes=1, workers=2,
                                                          rules="forensic")),
        (("--check-only",), Options(age_minutes=1, check_only=True)),
        (("--no-mmap", "--offset-map"), Options(age_minutes=1, mmap=False, offset_map=True)),
    ],
    ids=["defaults", "two-workers-forensic", "check-only", "buffered-offset-map"],
)  # fmt: skip
def test_slim_dir_does_what_the_command_does(tmp_path, flags, options):  # type: ignore[no-untyped-def]
    """The same directory twice: `pcapslim.slim_dir` on one, `pcap-slim --dir` on the other;
    the same files on disk afterwards and the same results, in the same order."""
    lib, cmd = tmp_path / "lib", tmp_path / "cmd"
    _populate(lib)
    _populate(cmd)
    heard: list[pcapslim.FileResult] = []
    listed: list[Path] = []
    results = pcapslim.slim_dir(lib, options, on_result=heard.append, on_listed=listed.extend)
    ran = invoke("--dir", cmd, "--age-minutes", "1", *flags, "--output", "json", check_rc=1)
    doc = ran.json()
    for e in doc["files"]:
        e.pop("elapsed_ms", None)
        e["file"] = str(Path(e["file"]).relative_to(cmd))
        if "error" in e:
            e["error"] = e["error"].replace(str(cmd), "D")
    assert _entries(results, lib) == doc["files"]
    assert sorted(r.path for r in heard) == sorted(r.path for r in results)
    assert [p.name for p in listed] == [Path(r.path).name for r in results]
    assert [Path(r.path).name for r in results] == [
        "a.pcap", "b.pcapng", "c_plain.pcap", "d_bad.pcap", "g_busy.pcap", "sample.pcap"
    ]  # fmt: skip
    _same_files(lib, cmd)
    if not options.check_only:
        assert (lib / "a.pcap").read_bytes() == expected_slim(capture(4, 1))
        assert not (lib / "x.pcap.tmp").exists()  # the stale tmp was cleaned
    assert (lib / "g_busy.pcap.tmp").exists()


def test_slim_dir_dry_run_lists_what_the_command_lists(tmp_path):  # type: ignore[no-untyped-def]
    lib, cmd = tmp_path / "lib", tmp_path / "cmd"
    _populate(lib)
    _populate(cmd)
    before = listing(lib)
    results = pcapslim.slim_dir(lib, Options(dry_run=True))
    lines = invoke("--dir", cmd, "--dry-run", "--output", "json", check_rc=0).json_lines()
    assert [{"file": str(Path(x["file"]).relative_to(cmd)), "status": x["status"]} for x in lines] \
        == _entries(results, lib)  # fmt: skip
    assert {r.status for r in results} == {"would_slim"}
    assert listing(lib) == before


def test_slim_files_reports_a_marked_file(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "m.pcap"
    f.write_bytes(capture())
    (first,) = pcapslim.slim_files([f])
    assert first.status == "ok" and f.read_bytes() == expected_slim(capture())
    (again,) = pcapslim.slim_files([f])
    assert again.status == "skipped_marker"
    assert pcapslim.slim_files([f], Options(dry_run=True)) == []


# --- not a capture: FIFOs, sockets, device nodes ----------------------------------------------


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # as /dev/null
    else:
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # as /dev/loop0
    assert not path.is_file()


WHAT = {
    "fifo": "a named pipe (FIFO)",
    "socket": "a socket",
    "chardev": "a character device",
    "blockdev": "a block device",
}


@pytest.mark.parametrize("kind", list(WHAT))
@pytest.mark.parametrize("mode", ["single", "dir", "check-only"])
def test_a_special_file_named_like_a_capture_fails_at_once(tmp_path, kind, mode):  # type: ignore[no-untyped-def]
    """Never opened, never waited on: a clear failure in well under a second, no tmp, nothing
    else touched (a FIFO opened for reading would block until a writer came)."""
    x = tmp_path / "x.pcap"
    _special(x, kind)
    (tmp_path / "ok.pcap").write_bytes(capture())
    args = ["--single", x] if mode == "single" else ["--dir", tmp_path]
    if mode == "check-only":
        args.append("--check-only")
    t0 = time.monotonic()
    doc = invoke(*args, "--output", "json", check_rc=1).json()
    took = time.monotonic() - t0
    entry = next(e for e in doc["files"] if e["file"] == str(x))
    assert entry["status"] == "fail"
    assert entry["error"] == (
        f"{x}: {WHAT[kind]}, not a regular file: only capture files are slimmed; nothing was "
        "changed"
    )
    assert tmps(tmp_path) == [] and not (tmp_path / ".slim_markers" / "x.pcap").exists()
    assert stat.S_IFMT(x.lstat().st_mode) != stat.S_IFREG
    print(f"{kind} --{mode}: failed in {took * 1000:.0f} ms (the whole run)")
    assert took < 20.0, took  # a file opened before its type is checked blocks for ever


def test_a_fifo_given_to_the_command_never_blocks_it(tmp_path):  # type: ignore[no-untyped-def]
    """As a real process: the FIFO fails with exit 1 and no tmp (it blocked in open() for ever,
    and SIGTERM did not end it)."""
    x = tmp_path / "x.pcap"
    os.mkfifo(x)
    p = subprocess.run([*CLI, "--single", str(x)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith(f"FAIL {x}: a named pipe (FIFO), not a regular file")
    assert sorted(os.listdir(tmp_path)) == ["x.pcap"]


def test_the_library_refuses_a_fifo_without_blocking(tmp_path):  # type: ignore[no-untyped-def]
    x = tmp_path / "x.pcap"
    os.mkfifo(x)
    with pytest.raises(pcapslim.PcapslimError, match="a named pipe"):
        pcapslim.analyze_file(x)
    with pytest.raises(pcapslim.PcapslimError, match="a named pipe"):
        pcapslim.slim_file(x, tmp_path / "out.pcap")
    assert not (tmp_path / "out.pcap").exists()


# --- the options ------------------------------------------------------------------------------


def test_options_travel_without_what_is_local_to_their_process():  # type: ignore[no-untyped-def]
    stop = Shutdown()
    o = Options(rules="forensic", max_io_mbps=3.5, on_progress=print, stop=stop)
    back = pickle.loads(pickle.dumps(o))
    assert back == o and hash(back) == hash(o)
    assert back.on_progress is None and back.stop is None
    assert o.stop is stop
    assert o.for_workers() == o and o.for_workers().stop is None


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"rules": "strict"}, "rules must be one of compatible, forensic"),
        ({"workers": 0}, "workers must be 1..256"),
        ({"max_cpu_percent": 101}, "max-cpu-percent must be 1..100"),
        ({"max_io_mbps": 0}, "max-io-mbps must be >= 0.001"),
        ({"dry_run": True, "check_only": True}, "--dry-run and --check-only exclude each other"),
        ({"offset_map": True, "check_only": True}, "--offset-map is written when files are"),
    ],
)
def test_options_out_of_range_are_usage_errors(kw, message):  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message) as e:
        Options(**kw)
    assert e.value.exit_code == 2


def test_the_job_follows_the_options():  # type: ignore[no-untyped-def]
    stop = Shutdown()
    job = build_job(Options(workers=4, max_io_mbps=2, stop=stop))
    assert not job.use_mmap  # more than two files at once: buffered reads
    assert job.io is not None and job.io.sleep == stop.sleep and job.shutdown is stop
    assert build_job(Options(workers=2)).use_mmap
    assert build_job(Options(workers=4, mmap=True)).use_mmap
    assert not build_job(Options(workers=1, mmap=False)).use_mmap


def test_reports_metrics_and_the_run_layer_load_without_the_engine():  # type: ignore[no-untyped-def]
    """The modules that format results, and the run layer the command imports at start-up,
    import neither the engine nor NumPy."""
    code = (
        "import sys\n"
        "import pcapslim.report, pcapslim.metrics, pcapslim.results, pcapslim.run\n"
        "import pcapslim.eligibility, pcapslim.markers, pcapslim.cli\n"
        "print(sorted(m for m in ('numpy', 'numba', 'pcapslim.engine', 'pcapslim.coordinator')"
        " if m in sys.modules))"
    )
    p = subprocess.run([CLI[0], "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_run_stopped_while_a_worker_is_blocked_gives_it_up(tmp_path):  # type: ignore[no-untyped-def]
    """A worker blocked in a system call that does not return (here: its progress callback
    reading a pipe nobody writes) cannot be abandoned at its next window. Stopped, the run
    waits for it until STRAND_SECONDS after the grace, reports it abandoned, and returns; the
    original is untouched. Once the call returns, the file is abandoned at its next window:
    its tmp goes."""
    from pcapslim.shutdown import STRAND_SECONDS

    f = tmp_path / "blocked.pcap"
    data = capture(3000, 100)
    f.write_bytes(data)
    r, w = os.pipe()
    entered = threading.Event()

    def progress(path: str, done: int, total: int) -> None:
        entered.set()
        os.read(r, 1)  # blocks until the test writes or closes its end

    stop = Shutdown(grace=0.5)
    options = Options(on_progress=progress, stop=stop, max_io_mbps=1)
    threading.Timer(0.5, stop.request, args=("SIGTERM",)).start()
    t0 = time.monotonic()
    results = pcapslim.slim_files([f], options)
    took = time.monotonic() - t0
    try:
        assert entered.is_set()
        (result,) = results
        assert result.status == "abandoned", result
        assert "still blocked" in (result.error or "") and "(SIGTERM)" in (result.error or "")
        assert stop.stranded == 1
        assert took < 0.5 + 0.5 + STRAND_SECONDS + 4.0, took  # without the strand: for ever
        assert f.read_bytes() == data and not (tmp_path / ".slim_markers").exists()
    finally:
        os.close(w)  # the blocked call returns; the file is abandoned at its next window
    assert wait_for(lambda: not tmps(tmp_path), 10)
    assert f.read_bytes() == data
    os.close(r)


def test_a_callback_that_fails_stops_the_files_in_progress(tmp_path):  # type: ignore[no-untyped-def]
    """The caller's callback raises while another file is still being slimmed: the error
    reaches the caller, and that file is abandoned at its next window (its original untouched,
    no marker, no tmp), not slimmed to the end first. (How soon depends on the shared I/O
    budget the big file has already spent, so it is printed, not asserted.)"""
    small, slow = tmp_path / "a_small.pcap", tmp_path / "b_slow.pcap"
    small.write_bytes(capture(3, 1))
    big = capture(40000, 0)  # ~9 MB, throttled to 2 MB/s: many seconds of work
    slow.write_bytes(big)
    age(small, 3600)

    def fail(result: pcapslim.FileResult) -> None:
        raise RuntimeError(f"the caller gave up after {Path(result.path).name}")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="the caller gave up after a_small.pcap"):
        pcapslim.slim_dir(tmp_path, Options(workers=2, max_io_mbps=2), on_result=fail)
    took = time.monotonic() - t0
    print(f"the error reached the caller after {took:.2f} s")
    assert slow.read_bytes() == big and not (tmp_path / ".slim_markers" / "b_slow.pcap").exists()
    assert tmps(tmp_path) == []


class _CancellingPool:
    """A pool whose every future ends cancelled, as a Dask client cancels its pending futures
    when its scheduler restarts or the connection drops."""

    slots = 2
    strand_seconds = 1.0

    def submit(self, target):  # type: ignore[no-untyped-def]
        from concurrent.futures import Future

        fut: Future[None] = Future()
        threading.Timer(0.05, fut.cancel).start()
        return fut

    def stopping(self, why: str, abandon: bool) -> None:
        pass

    def failure(self, path: str, error: BaseException) -> pcapslim.FileResult:
        return pcapslim.FileResult(path, "fail", error=f"{path}: {type(error).__name__}")

    def close(self) -> None:
        pass


def test_a_file_whose_task_was_cancelled_is_a_failure_not_silence():  # type: ignore[no-untyped-def]
    from pcapslim.run import Scheduler

    heard: list[pcapslim.FileResult] = []
    scheduler = Scheduler(_CancellingPool(), Shutdown(), heard.append)
    try:
        for name in ("x.pcap", "y.pcap", "z.pcap"):
            scheduler.add(Target.of(name))
        scheduler.run()
    finally:
        scheduler.close()
    assert sorted((r.path, r.status, r.error) for r in heard) == [
        (n, "fail", f"{n}: CancelledError") for n in ("x.pcap", "y.pcap", "z.pcap")
    ]


def test_an_unwritable_metrics_file_is_an_error_before_anything_is_touched(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "a.pcap").write_bytes(capture())
    stale = tmp_path / "old.pcap.tmp"
    stale.write_bytes(b"a dead worker's")
    age(stale, 3600)
    before = listing(tmp_path)
    ran = invoke("--dir", tmp_path, "--metrics-file", tmp_path / "no" / "m.prom", check_rc=1)
    assert ran.stderr.strip().splitlines()[-1] == (
        f"pcap-slim: --metrics-file {tmp_path / 'no' / 'm.prom'}: cannot write it (No such file "
        "or directory); nothing was touched"
    )
    assert listing(tmp_path) == before


HELPER_KINDS = ("pcapslim-copy", "pcapslim-map", "pcapslim-verify", "pcapslim-commit")


def _helpers() -> set[int]:
    return {t.native_id or 0 for t in threading.enumerate() if t.name.startswith(HELPER_KINDS)}


@pytest.mark.parametrize("workers", [1, 2])
def test_helper_threads_serve_every_file_of_a_worker_and_end_with_the_run(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, workers
):
    """A file's helpers (mapping ahead, copying, re-reading the tmp, committing) are the threads
    its worker used for the files before: 16 files start at most 4 helper threads per worker,
    not 4 per file, and none is left once the run is over."""
    for i in range(16):
        f = tmp_path / f"f{i:02d}.pcap"
        f.write_bytes(capture(40 + i, 3, tls=tls_frame(900)))
        age(f, 3600 - i)
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        if self.name.startswith(HELPER_KINDS):
            started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    before = _helpers()  # the helpers of this thread, if earlier tests slimmed files in it
    results = pcapslim.slim_dir(tmp_path, Options(workers=workers, mmap=True))
    assert [r.status for r in results] == ["ok"] * 16
    print(f"--workers {workers}: {len(started)} helper threads started for 16 files")
    assert 0 < len(started) <= 4 * workers, started
    assert wait_for(lambda: _helpers() <= before, 10), [t.name for t in threading.enumerate()]


def test_a_worker_slims_its_next_file_while_the_last_one_commits(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """With one worker, file 2 is read and slimmed while file 1 waits in its commit (held there
    until file 2's pass has begun); a file that changes during its commit still fails as SPEC §5
    says (tmp removed, original as it was), and the files after it are slimmed."""
    import pcapslim.coordinator as co

    names = ["f1.pcap", "f2.pcap", "f3.pcap"]
    data = {n: capture(30 + i, 3, tls=tls_frame(900)) for i, n in enumerate(names)}
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(data[n])
        age(tmp_path / n, 3600 - i)  # oldest first: f1, f2, f3
    second_started = threading.Event()
    held: list[bool] = []
    carry_over = co._carry_over

    def commit_waits(tmp_fd: int, before: os.stat_result) -> None:
        if not held:  # f1's commit: wait for f2's pass, then change f1 under it
            held.append(second_started.wait(20))
            with open(tmp_path / "f1.pcap", "ab") as fh:
                fh.write(b"\0" * 16)
        carry_over(tmp_fd, before)

    def progress(path: str, done: int, total: int) -> None:
        if path.endswith("f2.pcap"):
            second_started.set()

    monkeypatch.setattr(co, "_carry_over", commit_waits)
    results = {
        Path(r.path).name: r
        for r in pcapslim.slim_dir(tmp_path, Options(workers=1, on_progress=progress))
    }
    assert held == [True], "f2 was not slimmed while f1 waited in its commit"
    assert results["f1.pcap"].status == "fail" and "changed" in (results["f1.pcap"].error or "")
    assert (tmp_path / "f1.pcap").read_bytes() == data["f1.pcap"] + b"\0" * 16
    assert not (tmp_path / ".slim_markers" / "f1.pcap").exists()
    for n in names[1:]:
        assert results[n].status == "ok"
        assert (tmp_path / n).read_bytes() == expected_slim(data[n])
        assert (tmp_path / ".slim_markers" / n).exists()
    assert tmps(tmp_path) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_check_by_the_command_checks_files_in_its_own_thread(tmp_path, workers):  # type: ignore[no-untyped-def]
    """Where a stop ends the process even with its main thread stuck (the command arms that
    last resort), a check with one worker hands no file to a worker thread and back: every file
    is checked in the scheduler's own thread. With two workers, and for a library caller (no
    last resort), every file goes to the worker threads. The results are the same file for
    file."""
    for i in range(12):
        f = tmp_path / f"f{i:02d}.pcap"
        f.write_bytes(capture(20 + i, 3, tls=tls_frame(900)))
        age(f, 3600 - i)

    def run(armed: bool) -> tuple[list[tuple[str, str, int, int, int]], set[str]]:
        threads: dict[str, str] = {}

        def progress(path: str, done: int, total: int) -> None:
            threads[Path(path).name] = threading.current_thread().name

        stop = Shutdown()
        options = Options(check_only=True, workers=workers, on_progress=progress, stop=stop)
        if armed:
            with stop.installed(exit_seconds=30.0):
                results = pcapslim.slim_dir(tmp_path, options)
        else:
            results = pcapslim.slim_dir(tmp_path, options)
        assert sorted(threads) == [Path(r.path).name for r in results]
        rows = [
            (Path(r.path).name, r.status, r.stats.in_pkts, r.stats.truncated, r.stats.out_bytes)
            for r in results
            if r.stats is not None
        ]
        return rows, set(threads.values())

    command, command_threads = run(armed=True)
    library, library_threads = run(armed=False)
    assert command == library and len(command) == 12
    assert all(status == "ok" and cut > 0 for _, status, _, cut, _ in command)
    assert all(name.startswith("pcapslim-file-") for name in library_threads), library_threads
    if workers == 1:
        assert command_threads == {"MainThread"}
    else:
        assert command_threads == {"pcapslim-file-0", "pcapslim-file-1"}
    # the slim sizes are the independent model's
    for name, _, _, _, out in command:
        assert out == len(expected_slim((tmp_path / name).read_bytes()))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopped_check_takes_no_new_file_and_ends(tmp_path, workers):  # type: ignore[no-untyped-def]
    """SIGTERM to the command checking a directory (in its own thread with one worker, on
    worker threads with two): it takes no new file, lets go of the files in progress after the grace
    (a stop blocked in the main thread would wait for the end of its file) and writes
    nothing."""
    for i in range(8):
        (tmp_path / f"f{i}.pcap").write_bytes(capture(2000, 10))  # 0.55 MB: 11 s each
    before = listing(tmp_path)
    argv = [*CLI, "--dir", str(tmp_path), "--check-only", "--workers", str(workers),
            "--max-io-mbps", "0.05", "--output", "json"]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    doc = json.loads(out)
    # the files in progress (one window each: finished once the throttle lets go of them at
    # the abandonment), no new one
    assert len(doc["files"]) == workers, doc["files"]
    assert all(e["status"] in ("ok", "abandoned") for e in doc["files"])
    assert took < 10.0, took  # the grace (7 s), not the file's 11 s: the stop reached it
    assert listing(tmp_path) == before  # a check writes nothing, not even a marker


@pytest.mark.parametrize("workers", [1, 2])
def test_a_check_in_the_commands_own_thread_leaves_the_stop_signals_to_it(tmp_path, workers):  # type: ignore[no-untyped-def]
    """The helpers a check starts from the main thread (here the reader ahead of a buffered
    pass) block SIGTERM and SIGINT as the worker threads do: the kernel hands them to the main
    thread, whose handler runs at its next window."""
    for i in range(2):
        (tmp_path / f"f{i}.pcap").write_bytes(capture(50000, 0))  # > 2 read segments each
    argv = [*CLI, "--dir", str(tmp_path), "--check-only", "--no-mmap", "--workers", str(workers),
            "--max-io-mbps", "2", "--output", "json"]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stop = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))

        def masks() -> dict[int, int]:
            out = {}
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                status = (task / "status").read_text()
                out[int(task.name)] = int(status.split("SigBlk:")[1].split()[0], 16) & stop
            return out

        # the main thread and the reader ahead of its pass (one worker, a core to spare), or
        # the main thread and the worker thread (two workers)
        assert wait_for(lambda: len(masks()) >= 2, 20)
        time.sleep(0.5)
        blocked = masks()
        assert blocked.pop(p.pid) == 0  # the main thread takes them
        assert blocked and set(blocked.values()) == {stop}, blocked
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
