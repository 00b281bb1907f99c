"""Hostile file systems: full disks, read-only and unwritable places, unreadable files, files
that change under the run, things planted where the tmp or the marker go. Each gives a clear
per-file failure, the original intact, the rest of the directory processed, no tmp left.

These tests mount small tmpfs file systems and run the command as root without the
capabilities that bypass file permissions (setpriv), so they need root, as sensors and CI run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import big_capture as capture
from support import tls_frame
from support import tmps as leftovers
from support.cli import invoke
from support.cli import run as run_process

from pcapslim import coordinator as co
from pcapslim import slim_file, synth
from pcapslim.run import Options, build_job

TLS = tls_frame(1000)
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run(*args: object, honour_permissions: bool = False) -> tuple[int, dict]:  # type: ignore[type-arg]
    """A run as root (in this process), or, honouring permissions, as root without the
    capabilities that bypass them (a process of its own)."""
    argv = [*args, "--output", "json"]
    if honour_permissions:
        # markers owned by the running root, whatever accounts the machine has: root without
        # its DAC capabilities cannot write into a marker directory given to a `sensor` account
        ran = run_process(*argv, prefix=DROP_DAC, timeout=600,
                          env={"PCAPSLIM_MARKER_OWNER": "root"})  # fmt: skip
    else:
        ran = invoke(*argv)
    assert ran.returncode in (0, 1), ran.stderr
    return ran.returncode, ran.json()


def by_name(doc: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {Path(e["file"]).name: e for e in doc["files"]}


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_disk_full_while_writing_the_tmp(tmp_path):  # type: ignore[no-untyped-def]
    with tmpfs(tmp_path / "small", "2m") as d:
        big = capture(1, 1100)
        (d / "a_big.pcap").write_bytes(big)
        (d / "b_small.pcap").write_bytes(capture(3))
        assert len(big) > 1_000_000
        rc, doc = run("--dir", d)
        files = by_name(doc)
        assert rc == 1
        assert files["a_big.pcap"]["status"] == "fail"
        assert "No space left on device" in files["a_big.pcap"]["error"]
        assert files["b_small.pcap"]["status"] == "ok"
        assert (d / "a_big.pcap").read_bytes() == big
        assert leftovers(d) == []
        assert not (d / ".slim_markers" / "a_big.pcap").exists()


def test_read_only_file_system(tmp_path):  # type: ignore[no-untyped-def]
    with tmpfs(tmp_path / "ro", "4m") as d:
        (d / "a.pcap").write_bytes(capture(3))
        (d / "b.pcapng").write_bytes(synth.pcapng_bytes([synth.Record(TLS)]))
        stale = d / "old.pcap.tmp"
        stale.write_bytes(b"x")
        os.utime(stale, (0, 0))
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        rc, doc = run("--dir", d)
        assert rc == 1
        for name in ("a.pcap", "b.pcapng"):
            assert by_name(doc)[name]["status"] == "fail"
            assert "Read-only file system" in by_name(doc)[name]["error"]
        assert (d / "a.pcap").read_bytes() == capture(3)


def test_unreadable_file_and_unwritable_marker_directory(tmp_path):  # type: ignore[no-untyped-def]
    d = tmp_path
    (d / "a_secret.pcap").write_bytes(capture(2))
    os.chmod(d / "a_secret.pcap", 0o000)
    (d / "b_fine.pcap").write_bytes(capture(2))
    rc, doc = run("--dir", d, honour_permissions=True)
    files = by_name(doc)
    assert rc == 1
    assert files["a_secret.pcap"]["status"] == "fail"
    assert "Permission denied" in files["a_secret.pcap"]["error"]
    assert files["b_fine.pcap"]["status"] == "ok"
    assert (d / "a_secret.pcap").read_bytes() == capture(2)
    assert leftovers(d) == []
    # a marker directory the run may not write into
    (d / "c_more.pcap").write_bytes(capture(2))
    os.chmod(d / ".slim_markers", 0o555)
    expected = tmp_path / "expected"
    slim_file(d / "c_more.pcap", expected)
    rc, doc = run("--single", d / "c_more.pcap", honour_permissions=True)
    (entry,) = doc["files"]
    assert rc == 1 and entry["status"] == "fail"
    assert "slimmed, but the marker could not be written" in entry["error"]
    assert "Permission denied" in entry["error"]
    assert (d / "c_more.pcap").read_bytes() == expected.read_bytes()  # complete slim copy
    assert leftovers(d) == []
    os.chmod(d / ".slim_markers", 0o755)


@pytest.mark.parametrize(
    "planted", ["tmp_dir", "tmp_symlink", "marker_dir", "marker_symlink", "markers_file"]
)
def test_things_planted_where_the_tmp_or_marker_go(tmp_path, planted):  # type: ignore[no-untyped-def]
    (tmp_path / "a.pcap").write_bytes(capture(2))
    (tmp_path / "b.pcap").write_bytes(capture(2))
    victim = tmp_path / "victim"
    victim.write_bytes(b"must stay")
    if planted == "tmp_dir":
        (tmp_path / "a.pcap.tmp").mkdir()
    elif planted == "tmp_symlink":
        (tmp_path / "a.pcap.tmp").symlink_to(victim)
    elif planted == "markers_file":
        (tmp_path / ".slim_markers").write_text("not a directory")
    else:
        (tmp_path / ".slim_markers").mkdir()
        if planted == "marker_dir":
            (tmp_path / ".slim_markers" / "a.pcap").mkdir()
        else:
            (tmp_path / ".slim_markers" / "a.pcap").symlink_to(victim)
    rc, doc = run("--dir", tmp_path)
    files = by_name(doc)
    assert rc == 1
    assert files["a.pcap"]["status"] == "fail"
    assert victim.read_bytes() == b"must stay"
    if planted == "markers_file":  # every file's marker is blocked; each is still slimmed
        assert "is not a directory" in files["a.pcap"]["error"]
        assert files["b.pcap"]["status"] == "fail"
    else:
        assert files["b.pcap"]["status"] == "ok"
        assert (tmp_path / "a.pcap").read_bytes() == capture(2)
        assert "remove it" in files["a.pcap"]["error"]


def test_a_source_replaced_during_the_run_is_not_overwritten(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "r.pcap"
    f.write_bytes(capture(40))
    newer = tmp_path / "newer"
    newer.write_bytes(capture(5, 5))
    done = []

    def rotate(path: str, d: int, t: int) -> None:
        if not done:
            os.rename(newer, f)
            done.append(True)

    r = co.slim_in_place(f, build_job(Options(on_progress=rotate)))
    assert r.status == co.STATUS_FAIL and "changed while it was being read" in (r.error or "")
    assert f.read_bytes() == capture(5, 5)
    assert leftovers(tmp_path) == []


def test_nothing_to_cut_keeps_the_original_file(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "plain.pcap"
    f.write_bytes(capture(0, 5))
    ino = f.stat().st_ino
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_OK and r.stats is not None and r.stats.truncated == 0
    assert f.stat().st_ino == ino and f.read_bytes() == capture(0, 5)
    assert (tmp_path / ".slim_markers" / "plain.pcap").is_file()
    assert leftovers(tmp_path) == []


def test_nothing_to_cut_but_changed_meanwhile_gets_no_marker(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "growing.pcap"
    f.write_bytes(capture(0, 5))

    def capture_tool_appends(*_: object) -> None:
        with f.open("ab") as fh:
            fh.write(b"more")

    r = co.slim_in_place(f, build_job(Options(on_progress=capture_tool_appends)))
    assert r.status == co.STATUS_FAIL
    assert not (tmp_path / ".slim_markers" / "growing.pcap").exists()
    assert leftovers(tmp_path) == []
