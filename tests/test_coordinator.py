"""The steps of SPEC §5 that need a fault in the middle of a run, injected into real files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import naive
import pytest
from support import TLS, capture

from pcapslim import coordinator as co
from pcapslim import synth
from pcapslim.run import Options, build_job


def _capture(n: int = 50) -> bytes:
    return capture(n, 0)


@pytest.fixture(params=["after", "following"])
def reread(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Both ways of SPEC §5's re-read: after the write in the writer's thread (a small file),
    and by a helper following the writer (a file above REREAD_AFTER_MAX, made 0 here). Yields
    a function telling whether the calling thread is the one the re-read should run on."""
    import threading

    if request.param == "following":
        monkeypatch.setattr(co, "REREAD_AFTER_MAX", 0)
        return lambda: threading.current_thread().name.startswith("pcapslim-verify")
    writer = threading.current_thread()
    return lambda: threading.current_thread() is writer


def _leftovers(d: Path) -> list[str]:
    return sorted(
        p.name for p in d.iterdir() if p.name.endswith(".tmp") or p.name == ".slim_markers"
    )


def test_verification_mismatch_keeps_the_original(tmp_path, monkeypatch, reread):  # type: ignore[no-untyped-def]
    f = tmp_path / "v.pcap"
    data = _capture()
    f.write_bytes(data)
    real_process = co.process

    def process_then_lose_bytes(path, fd, sink, **kw):  # type: ignore[no-untyped-def]
        if sink is None:
            assert reread(), "the re-read ran on the wrong thread"
        stats = real_process(path, fd, sink, **kw)
        if sink is not None:  # the slim pass: the disk loses the last 40 bytes of the tmp
            os.ftruncate(sink.fd, stats.out_bytes - 40)
        return stats

    monkeypatch.setattr(co, "process", process_then_lose_bytes)
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_FAIL
    slim = len(naive.slim_bytes(data).data)
    assert f"the slim copy is {slim - 40} bytes on disk, {slim} were written" in (r.error or "")
    assert "original was kept" in (r.error or "")
    assert f.read_bytes() == data
    assert _leftovers(tmp_path) == []


def test_a_copy_that_re_reads_short_keeps_the_original(tmp_path, monkeypatch, reread):  # type: ignore[no-untyped-def]
    """The re-read itself comes up one record short (as a copy that loses a record would)."""
    f = tmp_path / "r.pcap"
    data = _capture()
    f.write_bytes(data)
    real_process = co.process

    def recount(path, fd, sink, **kw):  # type: ignore[no-untyped-def]
        stats = real_process(path, fd, sink, **kw)
        if not kw.get("decide", True):  # the verification re-read
            assert reread(), "the re-read ran on the wrong thread"
            stats.records -= 1
            stats.in_pkts -= 1
        return stats

    monkeypatch.setattr(co, "process", recount)
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_FAIL
    assert "re-read as 49 packets / 49 records" in (r.error or "")
    assert f.read_bytes() == data and _leftovers(tmp_path) == []


def test_a_source_that_changes_while_read_is_not_replaced(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "c.pcap"
    data = _capture()
    f.write_bytes(data)
    appended = []

    def capture_tool_appends(path: str, done: int, total: int) -> None:
        if not appended:
            with open(f, "ab") as fh:
                fh.write(synth.pcap_bytes([synth.Record(TLS)])[24:])
            appended.append(True)

    r = co.slim_in_place(f, build_job(Options(on_progress=capture_tool_appends)))
    assert r.status == co.STATUS_FAIL and "changed while it was being read" in (r.error or "")
    assert f.read_bytes() == data + synth.pcap_bytes([synth.Record(TLS)])[24:]
    assert _leftovers(tmp_path) == []


def test_a_source_deleted_during_the_run_fails_cleanly(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "d.pcap"
    f.write_bytes(_capture())
    r = co.slim_in_place(f, build_job(Options(on_progress=lambda *a: f.exists() and f.unlink())))
    assert r.status == co.STATUS_FAIL and "removed" in (r.error or "")
    assert _leftovers(tmp_path) == []


def test_marked_file_is_skipped_before_anything_is_created(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "m.pcap"
    f.write_bytes(_capture())
    (tmp_path / ".slim_markers").mkdir()
    (tmp_path / ".slim_markers" / "m.pcap").touch()
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_MARKED
    assert f.read_bytes() == _capture() and not (tmp_path / "m.pcap.tmp").exists()


@pytest.mark.parametrize("planted", ["dir", "symlink"])
def test_something_planted_at_the_marker_fails_the_file(tmp_path, planted):  # type: ignore[no-untyped-def]
    f = tmp_path / "p.pcap"
    f.write_bytes(_capture())
    (tmp_path / ".slim_markers").mkdir()
    target = tmp_path / ".slim_markers" / "p.pcap"
    if planted == "dir":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "elsewhere")
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_FAIL and "not a regular file" in (r.error or "")
    assert f.read_bytes() == _capture()
    assert not (tmp_path / "elsewhere").exists()


def test_a_re_read_that_fails_removes_the_tmp_and_says_why(tmp_path, monkeypatch, reread):  # type: ignore[no-untyped-def]
    """The verification re-read itself fails (an I/O error on the tmp): the tmp is removed, the
    original kept, and the error is the re-read's. (Its descriptor was closed a second time on
    the way out: the file failed with "Bad file descriptor", its tmp left behind, and the
    second close could have closed a descriptor another worker had opened meanwhile.)"""
    f = tmp_path / "e.pcap"
    data = _capture()
    f.write_bytes(data)
    real_process = co.process

    def failing_re_read(path, fd, sink, **kw):  # type: ignore[no-untyped-def]
        if not kw.get("decide", True):
            assert reread(), "the re-read ran on the wrong thread"
            raise OSError(errno.EIO, "Input/output error", path)
        return real_process(path, fd, sink, **kw)

    monkeypatch.setattr(co, "process", failing_re_read)
    r = co.slim_in_place(f, co.Job())
    assert r.status == co.STATUS_FAIL
    assert "Input/output error" in (r.error or "") and "Bad file descriptor" not in (r.error or "")
    assert f.read_bytes() == data and _leftovers(tmp_path) == []
