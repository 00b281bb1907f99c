"""Life on a sensor: the watching service, files still being written, clean shutdown on
SIGTERM/SIGINT, systemd's notifications and units, Prometheus metrics, and offset maps for
indexes that point into captures. Real subprocesses, real inotify, real sockets."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import naive
import pytest
from capfile import record_starts
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ROOT,
    SAMPLE,
    UNITS,
    age,
    digest,
    marked,
    plain_frame,
    tls_frame,
    wait_for,
)
from support import capture as _capture
from support.accounts import temporary_account
from support.cli import CLI

from pcapslim import offsetmap, slim_file, synth
from pcapslim.capdir import CaptureDir
from pcapslim.coordinator import slim_in_place
from pcapslim.inuse import being_written
from pcapslim.markers import marker_path
from pcapslim.run import Options, build_job

TLS = tls_frame(1000)
PLAIN = plain_frame(60)


def capture(n_tls: int = 3, n_plain: int = 2) -> bytes:
    return _capture(n_tls, n_plain, tls=TLS, plain=PLAIN)


def watcher(d: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "--dir", str(d), "--watch", "--output", "json", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop(p: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    return p.returncode, [json.loads(x) for x in out.splitlines()], err


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WRITER = """
import sys
with open(sys.argv[1], "ab") as f:
    f.write(open(sys.argv[2], "rb").read())
    f.flush()
    print("written", flush=True)
    sys.stdin.readline()  # keep the file open until told
"""


class Writer:
    """Another process holding a capture open for writing, as tcpdump holds its current file."""

    def __init__(self, path: Path, content: bytes, tmp: Path) -> None:
        src = tmp / f"{path.name}.content"
        src.write_bytes(content)
        self.p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(src)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == "written"

    def close(self) -> None:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("close\n")
        self.p.stdin.close()
        assert self.p.wait(timeout=30) == 0
        self.p.stdout.close()


# --- the watcher ------------------------------------------------------------------------------


def test_watcher_slims_what_is_there_what_arrives_and_what_is_closed(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path / "pcap"
    d.mkdir()
    (d / "present.pcap").write_bytes(capture())
    age(d / "present.pcap", 3600)
    expected = naive.slim_bytes(capture()).data
    p = watcher(d, "--age-minutes", "1", "--rescan-seconds", "1")
    try:
        assert wait_for(lambda: marked(d / "present.pcap"), 15)
        assert (d / "present.pcap").read_bytes() == expected

        # a capture still being written: old, but open for writing, so never touched
        live = d / "live.pcap"
        w = Writer(live, capture(), tmp_path)
        age(live, 3600)
        time.sleep(3.5)  # three rescans and the IN_ATTRIB event of the age change
        assert live.read_bytes() == capture() and not marked(live)
        assert not (d / "live.pcap.tmp").exists()
        w.close()
        assert wait_for(lambda: marked(live), 5), "not slimmed after its writer closed it"
        assert live.read_bytes() == expected

        # a capture renamed into the directory from elsewhere on the same file system
        incoming = tmp_path / "incoming.pcap"
        incoming.write_bytes(capture(5, 1))
        age(incoming, 3600)
        arrived = time.monotonic()
        os.rename(incoming, d / "moved.pcap")
        assert wait_for(lambda: marked(d / "moved.pcap"), 5)
        print(f"renamed-in file slimmed {time.monotonic() - arrived:.2f} s after it arrived")
        assert (d / "moved.pcap").read_bytes() == naive.slim_bytes(capture(5, 1)).data

        # a young file waits for its age
        young = d / "young.pcap"
        young.write_bytes(capture())
        age(young, 58)
        time.sleep(0.5)
        assert not marked(young)
        assert wait_for(lambda: marked(young), 6)

        # idle: next to no CPU
        time.sleep(0.5)
        c0, t0 = cpu_seconds(p.pid), time.monotonic()
        time.sleep(3)
        idle = (cpu_seconds(p.pid) - c0) / (time.monotonic() - t0)
        print(f"watcher CPU while idle: {idle:.2%} of a core (rescan every second)")
        assert idle < 0.02
    finally:
        rc, lines, err = stop(p)
    assert rc == 0, err
    files = [x for x in lines if "file" in x]
    assert sorted(Path(x["file"]).name for x in files) == [
        "live.pcap", "moved.pcap", "present.pcap", "young.pcap"
    ]  # fmt: skip
    assert {x["status"] for x in files} == {"ok"}
    assert lines[-1]["summary"]["ok"] == 4
    assert not list(d.glob("*.tmp"))


def _twelve(d: Path) -> dict[str, bytes]:
    """Twelve captures of a few hundred kB each, oldest first by name."""
    d.mkdir()
    files = {}
    for i in range(12):
        data = capture(150 + 10 * i, 20)
        (d / f"c{i:02d}.pcap").write_bytes(data)
        age(d / f"c{i:02d}.pcap", 3600 - i)
        files[f"c{i:02d}.pcap"] = data
    return files


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_watcher_takes_every_file_present_at_start_without_waiting_for_a_rescan(  # type: ignore[no-untyped-def]
    tmp_path, workers
):
    """More files than workers at start, and a rescan an hour away: the watcher slims them all
    within the time a one-shot run over the same files takes, plus 2 s. (It slimmed one file per
    worker and left the rest to one rescan each: a finished worker's slot was seen only after
    the loop went back to sleep until the next rescan.)"""
    once, watched = tmp_path / "once", tmp_path / "watched"
    files = _twelve(once)
    _twelve(watched)
    t0 = time.monotonic()
    done = subprocess.run([*CLI, "--dir", str(once), "--workers", workers, "--output", "json"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    one_shot = time.monotonic() - t0
    assert done.returncode == 0 and json.loads(done.stdout)["summary"]["ok"] == 12, done.stderr
    t0 = time.monotonic()
    p = watcher(watched, "--workers", workers, "--rescan-seconds", "3600")
    try:
        all_marked = wait_for(lambda: all(marked(watched / n) for n in files), 60, step=0.02)
        took = time.monotonic() - t0
    finally:
        rc, lines, err = stop(p)
    assert all_marked, [n for n in files if not marked(watched / n)]
    assert rc == 0, err
    print(f"workers {workers}: one-shot run {one_shot:.2f} s, watcher {took:.2f} s for 12 files")
    # A stall waits for the next rescan (an hour here), so `all_marked` within 60 s shows it gone.
    for name, data in files.items():
        assert (watched / name).read_bytes() == naive.slim_bytes(data).data
    assert [x["status"] for x in lines if "file" in x] == ["ok"] * 12


def test_files_arriving_while_every_worker_is_busy_are_taken_as_soon_as_one_is_free(  # type: ignore[no-untyped-def]
    tmp_path, big_capture
):
    """One worker, busy with a throttled capture; three captures arrive meanwhile. Each is
    taken as soon as the worker is free: all are slimmed within moments of the busy one, not
    at the next rescan (an hour away)."""
    d = tmp_path / "pcap"
    d.mkdir()
    big, _, _ = big_capture
    slow = d / "slow.pcap"
    with open(big, "rb") as src, open(slow, "wb") as dst:
        dst.write(src.read(40_000_000))  # a cut-short tail is kept as it is
    age(slow, 3600)
    p = watcher(d, "--rescan-seconds", "3600", "--max-io-mbps", "40")
    arrivals = {}
    try:
        assert wait_for(lambda: (d / "slow.pcap.tmp").exists(), 20)
        for i in range(3):
            f = tmp_path / f"new{i}.pcap"
            f.write_bytes(capture(40 + i, 5))
            age(f, 3600)
            os.rename(f, d / f.name)
            arrivals[f.name] = capture(40 + i, 5)
        assert (d / "slow.pcap.tmp").exists(), "the worker was not busy while they arrived"
        assert wait_for(lambda: marked(slow), 60)
        freed = time.monotonic()
        assert wait_for(lambda: all(marked(d / n) for n in arrivals), 10, step=0.02)
        after = time.monotonic() - freed
    finally:
        rc, lines, err = stop(p)
    assert rc == 0, err
    print(f"three captures that arrived while the worker was busy: done {after:.2f} s after it")
    assert after < 2.0, after
    for name, data in arrivals.items():
        assert (d / name).read_bytes() == naive.slim_bytes(data).data
    names = [Path(x["file"]).name for x in lines if "file" in x]
    assert names[0] == "slow.pcap" and sorted(names[1:]) == sorted(arrivals)


def test_a_young_file_is_taken_when_it_comes_of_age_without_a_rescan(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path / "pcap"
    d.mkdir()
    young = d / "young.pcap"
    young.write_bytes(capture())
    age(young, 57)
    p = watcher(d, "--age-minutes", "1", "--rescan-seconds", "3600")
    try:
        time.sleep(1.0)
        assert not marked(young)
        assert wait_for(lambda: marked(young), 8)
    finally:
        rc, _, err = stop(p)
    assert rc == 0, err


def test_a_watched_directory_moved_away_still_reports_the_file_in_progress(  # type: ignore[no-untyped-def]
    tmp_path, big_capture
):
    """The watched directory is moved away while a file is being slimmed: the watcher says it
    cannot watch the directory (exit 1), after the file in progress is done and reported."""
    d = tmp_path / "pcap"
    d.mkdir()
    big, _, _ = big_capture
    slow = d / "slow.pcap"
    with open(big, "rb") as src, open(slow, "wb") as dst:
        dst.write(src.read(30_000_000))
    original = slow.read_bytes()
    age(slow, 3600)
    p = watcher(d, "--max-io-mbps", "30")
    try:
        assert wait_for(lambda: (d / "slow.pcap.tmp").exists(), 20)
        os.rename(d, tmp_path / "moved")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err
    assert f"FAIL {d}: cannot watch the directory" in err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["file"] for x in lines if "file" in x] == [str(slow)]
    assert lines[-1]["summary"]["ok"] + lines[-1]["summary"]["fail"] == 1
    moved = tmp_path / "moved" / "slow.pcap"
    assert moved.read_bytes() in (original, naive.slim_bytes(original).data)


def test_one_shot_dir_leaves_files_open_for_writing_alone(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "done.pcap").write_bytes(capture())
    w = Writer(tmp_path / "open.pcap", capture(), tmp_path / "..")
    age(tmp_path / "open.pcap", 3600)
    first = subprocess.run([*CLI, "--dir", str(tmp_path), "--output", "json"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert [Path(f["file"]).name for f in json.loads(first.stdout)["files"]] == ["done.pcap"]
    assert (tmp_path / "open.pcap").read_bytes() == capture()
    w.close()
    second = subprocess.run([*CLI, "--dir", str(tmp_path), "--output", "json"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert [Path(f["file"]).name for f in json.loads(second.stdout)["files"]] == ["open.pcap"]
    assert marked(tmp_path / "open.pcap")


def busy(d: Path, *files: Path) -> set[str]:
    """Which of `files` (of the directory `d`) some process holds open for writing."""
    with CaptureDir.open(d) as cd:
        return being_written(cd, [f.name for f in files])


def test_open_for_writing_by_lease_and_by_proc(tmp_path):  # type: ignore[no-untyped-def]
    """Root takes a read lease; an account that does not own the file cannot, and looks
    through /proc instead, where it sees its own processes' descriptors."""
    probe = (
        "import sys\nfrom pathlib import Path\nfrom pcapslim.capdir import CaptureDir\n"
        "from pcapslim.inuse import being_written\n"
        "with CaptureDir.open(Path(sys.argv[1])) as d:\n"
        "    print(sorted(being_written(d, sys.argv[2:])))"
    )
    with temporary_account() as acct:
        d = acct.directory()
        try:
            idle, held = d / "idle.pcap", d / "held.pcap"
            for f in (idle, held):
                f.write_bytes(capture())
                os.chmod(f, 0o666)  # root's files, writable by the account
            assert busy(d, idle, held) == set()
            writer = subprocess.Popen(
                acct.command(sys.executable, "-c",
                             "import sys,time\nf=open(sys.argv[1],'ab')\nprint('ok',flush=True)\n"
                             "sys.stdin.readline()", str(held)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ok"
            assert busy(d, idle, held) == {"held.pcap"}  # root: the lease
            as_account = subprocess.run(
                acct.command(sys.executable, "-c", probe, str(d), idle.name, held.name),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert as_account.returncode == 0, as_account.stderr
            assert as_account.stdout.strip() == "['held.pcap']"  # not the owner: /proc
            assert writer.stdin is not None
            writer.stdin.close()
            writer.wait(timeout=30)
            writer.stdout.close()
            assert busy(d, idle, held) == set()
        finally:
            shutil.rmtree(d)


# --- stopping -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A 150 MB capture (a generated 15 MB mix, its records ten times over) and its slim copy."""
    from benches.gen_capture import generate

    d = tmp_path_factory.mktemp("big")
    part = d / "part.pcap"
    generate(part, 15, seed=21)
    body = part.read_bytes()[24:]
    big = d / "big.pcap"
    big.write_bytes(part.read_bytes()[:24] + body * 10)
    slim = d / "big.slim.pcap"
    slim_file(big, slim)
    return big, digest(big), digest(slim)


@pytest.mark.slow
def test_sigterm_at_random_points_stops_within_ten_seconds_cleanly(tmp_path, big_capture):  # type: ignore[no-untyped-def]
    big, orig_digest, slim_digest = big_capture
    r = random.Random(int(os.environ.get("PCAPSLIM_TERM_SEED", "13")))
    seen = []
    for _ in range(int(os.environ.get("PCAPSLIM_TERMS", "4"))):
        d = tmp_path / f"run{len(seen)}"
        d.mkdir()
        f = d / "big.pcap"
        shutil.copyfile(big, f)
        p = watcher(d, "--max-io-mbps", "120")
        assert wait_for(lambda d=d, f=f: (d / "big.pcap.tmp").exists() or marked(f), 20)
        time.sleep(r.uniform(0.0, 2.0))
        t0 = time.monotonic()
        rc, lines, err = stop(p)
        took = time.monotonic() - t0
        assert rc == 0, err
        assert took < 10, took
        assert not (d / "big.pcap.tmp").exists()
        state = "slim" if digest(f) == slim_digest else "original"
        assert state == "slim" or digest(f) == orig_digest, "neither the original nor the slim"
        assert marked(f) == (state == "slim")
        statuses = [x["status"] for x in lines if "file" in x]
        assert statuses == (["ok"] if state == "slim" else ["abandoned"])
        seen.append((state, round(took, 2)))
        shutil.rmtree(d)
    print("after SIGTERM (state, seconds to exit):", seen)


@pytest.mark.slow
def test_a_slow_file_is_abandoned_after_the_grace_and_a_second_sigint_at_once(  # type: ignore[no-untyped-def]
    tmp_path, big_capture
):
    big, orig_digest, _ = big_capture
    for signals, limit in (([signal.SIGTERM], 10.0), ([signal.SIGINT, signal.SIGINT], 2.0)):
        d = tmp_path / signals[-1].name / str(len(signals))
        d.mkdir(parents=True)
        f = d / "slow.pcap"
        shutil.copyfile(big, f)
        # one-shot this time, throttled to take half a minute
        p = subprocess.Popen([*CLI, "--dir", str(d), "--max-io-mbps", "8", "--output", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert wait_for(lambda d=d: (d / "slow.pcap.tmp").exists(), 20)
        time.sleep(0.5)
        t0 = time.monotonic()
        for s in signals:
            p.send_signal(s)
            time.sleep(0.2)
        out, err = p.communicate(timeout=30)
        took = time.monotonic() - t0
        assert p.returncode == 0, err  # abandoned is a skip, not a failure
        assert took < limit, (signals, took)
        doc = json.loads(out)
        assert [e["status"] for e in doc["files"]] == ["abandoned"]
        assert "stopped (SIG" in doc["files"][0]["error"]
        assert doc["summary"]["skip"] == 1 and doc["summary"]["fail"] == 0
        assert digest(f) == orig_digest and not marked(f)
        assert not (d / "slow.pcap.tmp").exists()
        print(f"{'+'.join(s.name for s in signals)}: exited {took:.2f} s after the first signal")


def test_a_stopped_one_shot_run_takes_no_new_file(tmp_path):  # type: ignore[no-untyped-def]
    for i in range(6):
        (tmp_path / f"f{i}.pcap").write_bytes(capture(200, 10))
    argv = [*CLI, "--dir", str(tmp_path), "--max-io-mbps", "0.2", "--output", "json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any(tmp_path.glob("*.tmp")), 20)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    doc = json.loads(out)
    assert len(doc["files"]) == 1 and doc["files"][0]["status"] in ("ok", "abandoned")
    untouched = [f for f in tmp_path.glob("f*.pcap") if not marked(f)]
    assert len(untouched) >= 5 and all(f.read_bytes() == capture(200, 10) for f in untouched)
    assert not list(tmp_path.glob("*.tmp"))


def test_only_the_main_thread_takes_the_stop_signals(tmp_path):  # type: ignore[no-untyped-def]
    """Every other thread of a run blocks SIGTERM and SIGINT, so the kernel hands them to the
    main thread, whose handler runs at once. Had a worker received one, it would have waited
    for the main thread to wake (at the end of the file in progress), and the worker would
    have taken the next file meanwhile."""
    for i in range(3):
        (tmp_path / f"f{i}.pcap").write_bytes(capture(200, 10))
    argv = [*CLI, "--dir", str(tmp_path), "--max-io-mbps", "0.2", "--workers", "2",
            "--output", "json"]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: any(tmp_path.glob("*.tmp")), 20)
        stop = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        blocked = {}
        for task in Path(f"/proc/{p.pid}/task").iterdir():
            status = (task / "status").read_text()
            blocked[int(task.name)] = int(status.split("SigBlk:")[1].split()[0], 16) & stop
        assert blocked.pop(p.pid) == 0  # the main thread takes them
        assert len(blocked) >= 2 and set(blocked.values()) == {stop}, blocked
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err


def test_a_stop_ends_the_watcher_even_when_its_report_cannot_be_written(tmp_path):  # type: ignore[no-untyped-def]
    """Its reader stopped reading: the watcher blocks writing a JSON line to a full pipe. A
    SIGTERM still ends it, EXIT_SECONDS after the grace, with exit 1 (the report is not whole)
    and a message on stderr; every capture is then the original or its complete slim copy."""
    d = tmp_path / "pcap"
    d.mkdir()
    small = capture(2, 1)
    for i in range(300):  # ~600 bytes of JSON each: far more than a pipe holds
        (d / f"f{i:03d}.pcap").write_bytes(small)
    p = subprocess.Popen([*CLI, "--dir", str(d), "--watch", "--output", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        count = 0

        def stalled() -> bool:
            nonlocal count
            now = sum(1 for _ in (d / ".slim_markers").iterdir()) if marked_dir.exists() else 0
            still, count = now == count and now > 0, now
            return still and now < 300

        marked_dir = d / ".slim_markers"
        assert wait_for(stalled, 60, step=1.0), "the watcher never blocked on its output"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        took = time.monotonic() - t0
        assert p.stderr is not None
        err = p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pipe in (p.stdout, p.stderr):
            if pipe is not None:
                pipe.close()
    print(f"blocked writing its report after {count} files; exited {took:.2f} s after SIGTERM")
    assert rc == 1, err
    assert "did not end" in err and "exiting now" in err
    assert took < 14, took  # grace 7 s + EXIT_SECONDS 4.5 s
    slim = naive.slim_bytes(small).data
    for f in d.glob("*.pcap"):
        assert f.read_bytes() == (slim if marked(f) else small), f.name
    assert not list(d.glob("*.tmp"))


# --- systemd --------------------------------------------------------------------------------


def test_sd_notify_ready_status_watchdog_stopping(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path / "pcap"
    d.mkdir()
    (d / "a.pcap").write_bytes(capture())
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain(until: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            if until():
                return True
        return until()

    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    p = watcher(d, env=env)
    try:
        assert drain(lambda: any("READY=1" in m for m in messages), 15)
        assert drain(lambda: any("ok=1" in m for m in messages), 15)
        assert drain(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 3, 5)
    finally:
        rc, _, err = stop(p)
    drain(lambda: any("STOPPING=1" in m for m in messages), 2)
    sock.close()
    assert rc == 0, err
    ready = next(m for m in messages if "READY=1" in m)
    assert ready.splitlines()[1].startswith(f"STATUS=watching {d}: ok=")
    assert any(m.startswith("STATUS=") and "ok=1 " in m for m in messages)
    stopping = [m for m in messages if "STOPPING=1" in m]
    assert stopping and messages.index(stopping[0]) > messages.index(ready)
    print("notifications:", [m.split("\n")[0] for m in messages][:8], "...")


def test_an_abstract_notify_socket_address_is_understood():  # type: ignore[no-untyped-def]
    from pcapslim.sdnotify import Notifier

    n = Notifier({"NOTIFY_SOCKET": "@/org/pcapslim/x", "WATCHDOG_USEC": "3000000",
                  "WATCHDOG_PID": str(os.getpid())})  # fmt: skip
    assert n.address == "\0/org/pcapslim/x" and n.watchdog_interval == 1.5
    other = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is another process's
    n.close()
    other.close()
    assert not Notifier({}).enabled


def _with_command(fn: Callable[[], None]) -> None:
    """systemd-analyze checks that ExecStart's program exists: where pcap-slim is not installed
    at the units' path, the installed command stands there for the check."""
    target = Path("/usr/local/bin/pcap-slim")
    made = False
    if not target.exists():
        installed = shutil.which("pcap-slim")
        assert installed, "pcap-slim is not installed"
        target.symlink_to(installed)
        made = True
    try:
        fn()
    finally:
        if made:
            target.unlink()


HARDENING = ("ProtectSystem=strict", "ReadWritePaths=/data/pcap", "NoNewPrivileges=yes",
             "PrivateTmp=yes", "ProtectHome=", "Nice=", "IOSchedulingClass=idle", "CPUQuota=",
             "MemoryMax=", "EnvironmentFile=/etc/default/pcap-slim")  # fmt: skip


def test_shipped_units_verify_without_a_warning():  # type: ignore[no-untyped-def]
    units = sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer"))
    assert {u.name for u in units} == {
        "pcap-slim.service", "pcap-slim.timer", "pcap-slim-watch.service"
    }  # fmt: skip

    def verify() -> None:
        for unit in units:
            p = subprocess.run(["systemd-analyze", "verify", str(unit)],
                               capture_output=True, text=True, cwd=UNITS, timeout=60)  # fmt: skip
            assert p.returncode == 0 and p.stdout == "" and p.stderr == "", (unit, p.stderr)
        for unit in [u for u in units if u.suffix == ".service"]:
            p = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                               capture_output=True, text=True, cwd=UNITS, timeout=60)  # fmt: skip
            level = p.stdout.strip().splitlines()[-1]
            exposure = float(level.split(":")[1].split()[0])
            print(f"{unit.name}: {level}")
            assert exposure <= 4.0, level

    _with_command(verify)
    oneshot, watch = (
        (UNITS / "pcap-slim.service").read_text(),
        (UNITS / "pcap-slim-watch.service").read_text(),
    )
    for text in (oneshot, watch):
        for setting in HARDENING:
            assert setting in text, setting
    assert "Type=oneshot" in oneshot and "--watch" not in oneshot
    assert "Type=notify" in watch and "WatchdogSec=" in watch and "--watch" in watch
    assert "Unit=" not in (UNITS / "pcap-slim.timer").read_text()  # it starts pcap-slim.service


def test_capture_time_units_verify_without_a_warning():  # type: ignore[no-untyped-def]
    """contrib/capture: tcpdump with -z pcap-slim, tcpdump and dumpcap piped into pcap-slim -."""
    capture_units = UNITS.parent / "capture"
    units = sorted(capture_units.glob("*.service"))
    assert {u.name for u in units} == {
        "tcpdump-slim-rotate.service", "tcpdump-slim-pipe.service", "dumpcap-slim-pipe.service"
    }  # fmt: skip

    def verify() -> None:
        for unit in units:
            p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                               text=True, cwd=capture_units, timeout=60)  # fmt: skip
            assert p.returncode == 0 and p.stdout == "" and p.stderr == "", (unit, p.stderr)
            text = unit.read_text()
            assert "/usr/local/bin/pcap-slim" in text and "ReadWritePaths=/data/pcap" in text

    _with_command(verify)


def test_the_environment_file_gives_a_valid_command_line(tmp_path):  # type: ignore[no-untyped-def]
    env = {}
    for line in (UNITS / "pcap-slim.env").read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    (tmp_path / "a.pcap").write_bytes(capture())
    age(tmp_path / "a.pcap", 3600)
    argv = [*CLI, "--dir", str(tmp_path), *env["PCAP_SLIM_FLAGS"].split()]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["summary"]["ok"] == 1


# --- metrics --------------------------------------------------------------------------------


def _metrics(path: Path) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_file_agrees_with_the_json_report(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path / "pcap"
    d.mkdir()
    shutil.copyfile(SAMPLE, d / "sample.pcap")
    (d / "a.pcap").write_bytes(capture())
    (d / "plain.pcap").write_bytes(capture(0, 3))  # nothing to cut
    (d / "bad.pcap").write_bytes(b"not a capture, but named like one")
    metrics = tmp_path / "pcap_slim.prom"
    started = time.time()
    p = subprocess.run([*CLI, "--dir", str(d), "--output", "json", "--metrics-file", str(metrics)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1  # bad.pcap
    report = json.loads(p.stdout)
    m = _metrics(metrics)
    ok = [f for f in report["files"] if f["status"] == "ok"]
    assert m["pcapslim_files_total{status=ok}"] == report["summary"]["ok"] == 3
    assert m["pcapslim_files_total{status=fail}"] == report["summary"]["fail"] == 1
    assert m["pcapslim_bytes_in_total"] == sum(f["in_bytes"] for f in ok)
    assert m["pcapslim_bytes_out_total"] == sum(f["out_bytes"] for f in ok)
    assert m["pcapslim_bytes_saved_total"] == sum(f["in_bytes"] - f["out_bytes"] for f in ok)
    assert m["pcapslim_packets_total"] == sum(f["in_pkts"] for f in ok)
    for cat in ("tls", "tls_other_port", "ssh", "quic", "ipsec", "wireguard", "openvpn", "dtls",
                "srtp", "smb3"):  # fmt: skip
        assert m[f"pcapslim_packets_truncated_total{{category={cat}}}"] == sum(
            f["truncated_by"][cat] for f in ok
        )
    assert m["pcapslim_seconds_total"] == pytest.approx(sum(f["elapsed_ms"] for f in ok) / 1000)
    assert started <= m["pcapslim_last_success_timestamp_seconds"] <= time.time()
    assert m["pcapslim_watcher_up"] == 0
    assert not any(k.endswith("_created") for k in m)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".pcap_slim*"))


def test_metrics_say_the_watcher_is_up_while_it_watches(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path / "pcap"
    d.mkdir()
    (d / "a.pcap").write_bytes(capture())
    metrics = tmp_path / "pcap_slim.prom"
    p = watcher(d, "--metrics-file", str(metrics))
    try:
        assert wait_for(
            lambda: metrics.exists() and "pcapslim_watcher_up 1.0" in metrics.read_text(), 15
        )
        assert wait_for(lambda: _metrics(metrics)["pcapslim_files_total{status=ok}"] == 1, 15)
    finally:
        rc, lines, _ = stop(p)
    assert rc == 0
    m = _metrics(metrics)
    assert m["pcapslim_watcher_up"] == 0
    assert m["pcapslim_packets_total"] == lines[0]["in_pkts"]


# --- offset maps ----------------------------------------------------------------------------


def _check_offsets(original: bytes, path: Path) -> int:
    """Every record's old offset remaps to the offset of the same record in the slim file."""
    old, new = record_starts(original), record_starts(path.read_bytes())
    assert len(old) == len(new)
    got = offsetmap.remap(offsetmap.map_path(marker_path(path)), old)
    assert got.tolist() == new
    return len(old)


def _random_captures() -> list[tuple[str, bytes]]:
    import randframes
    from test_differential import _pcapng_section

    out = []
    for seed in range(6):
        r = random.Random(seed)
        link = r.choice(randframes.ALL_LINKS)
        frames = randframes.frames(seed, 2000, link)
        recs = [synth.Record(f, ts=i) for i, f in enumerate(frames)]
        data = synth.pcap_bytes(recs, link, little_endian=seed % 2 == 0, nanosecond=seed > 2)
        if seed % 3 == 0:
            data = data[:-7]  # cut short: the tail keeps its shift
        out.append((f"random{seed}.pcap", data))
        ng = b"".join(_pcapng_section(r, []) for _ in range(r.randrange(1, 4)))
        out.append((f"random{seed}.pcapng", ng))
    return out


def test_offset_maps_remap_every_record_of_fixtures_and_random_captures(tmp_path):  # type: ignore[no-untyped-def]
    cases = [(p.name, p.read_bytes()) for p in sorted((ROOT / "fixtures" / "cases").glob("*"))
             if p.suffix in (".pcap", ".pcapng") and ".expected" not in p.name]  # fmt: skip
    cases += _random_captures() + [("sample.pcap", SAMPLE.read_bytes())]
    job = build_job(Options(offset_map=True))
    records = 0
    for name, data in cases:
        f = tmp_path / name
        f.write_bytes(data)
        result = slim_in_place(f, job)
        if result.status == "fail":  # the fixtures of corrupt files
            assert not Path(offsetmap.map_path(marker_path(f))).exists()
            assert not Path(offsetmap.map_path(marker_path(f)) + ".tmp").exists()
            continue
        assert result.status == "ok", (name, result.error)
        records += _check_offsets(data, f)
    print(f"offset maps checked: {len(cases)} captures, {records} records")
    assert records > 10_000
    assert not list((tmp_path / ".slim_markers").glob("*.tmp"))


def test_offset_map_from_the_command_and_its_format(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    p = subprocess.run([*CLI, "--single", str(f), "--offset-map"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    _check_offsets(SAMPLE.read_bytes(), f)
    raw = Path(offsetmap.map_path(marker_path(f))).read_bytes()
    assert raw.startswith(b"PCAPSLIM-OFFSETS\x01\x00\x00\x00")
    breaks, shifts = offsetmap.load(offsetmap.map_path(marker_path(f)))
    from capfile import read_records

    cut = [
        naive.decide(r.frame, r.link).category is not None
        for r in read_records(SAMPLE.read_bytes())
    ]
    # a breakpoint at every record that follows a cut one
    assert len(breaks) == sum(cut[:-1]) > 1000
    assert (shifts[1:] > shifts[:-1]).all() and (breaks[1:] > breaks[:-1]).all()
    usage = subprocess.run([*CLI, "--single", str(f), "--check-only", "--offset-map"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert usage.returncode == 2
