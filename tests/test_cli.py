"""pcap-slim on real directories (SPEC §5, §6): in this process through typer's CliRunner, and
as a real subprocess where a process is what is tested (start-up, other accounts, exit codes
and stdout as a shell sees them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import naive
import pytest
from naive_forensic import Forensic
from support import (
    PLAIN,
    SAMPLE,
    SAMPLE_PACKETS,
    TLS,
    age,
    capture,
    expected_slim,
    listing,
)
from support.accounts import sensor_account, temporary_account
from support.cli import invoke, run

import pcapslim
from pcapslim import synth

OK_LINE = re.compile(r"^ok (\S+) pkts=(\d+) truncated=(\d+) in=(\d+) out=(\d+) \((\d+)ms\)$")
SUMMARY = re.compile(r"^(done|check): ok=(\d+) skip=(\d+) fail=(\d+) elapsed=\d+\.\ds$")


# --- start-up, usage ------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_answer_without_loading_numba(flag):  # type: ignore[no-untyped-def]
    code = "\n".join(
        [
            "import sys",
            f"sys.argv = ['pcap-slim', {flag!r}]",
            "from pcapslim.cli import main",
            "try:",
            "    main()",
            "except SystemExit as e:",
            "    rc = e.code",
            "print('RC', rc, 'numba' in sys.modules)",
        ]
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "RC 0 False"
    if flag == "--version":
        version = run("--version", check_rc=0).stdout.strip()
        assert version == f"pcap-slim {pcapslim.__version__} (kernels: ahead-of-time)"


def test_the_command_does_not_load_scipy_linalg_for_numba(tmp_path):  # type: ignore[no-untyped-def]
    """numba's BLAS probe imports scipy.linalg (over half a second of start-up); the command,
    whose kernels use no linear algebra, skips it. A stand-in SciPy on the path records any
    import of its linalg package (numba itself imports the top-level package for its version)."""
    fake = tmp_path / "site"
    (fake / "scipy" / "linalg").mkdir(parents=True)
    (fake / "scipy" / "__init__.py").write_text('__version__ = "1.99.0"\n')
    seen = tmp_path / "linalg_imported"
    (fake / "scipy" / "linalg" / "__init__.py").write_text(f"open({str(seen)!r}, 'w').close()\n")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]),
        PCAPSLIM_KERNELS="jit",  # the compiled kernels never load numba at all
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import numba.np.linalg as l\ntry: l.ensure_blas()\nexcept ImportError: pass",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert seen.exists()  # the stand-in is what numba's probe finds
    seen.unlink()
    target = tmp_path / "a.pcap"
    target.write_bytes(capture())
    p = subprocess.run(
        [sys.executable, "-m", "pcapslim", "--single", str(target), "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["summary"]["ok"] == 1
    assert not seen.exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--dir", "D", "--single", "D/x.pcap"],
        ["--single", "D/x.pcap", "--mmap", "--no-mmap"],
        ["--dir", "D", "--workers", "0"],
        ["--dir", "D", "--max-cpu-percent", "0"],
        ["--dir", "D", "--max-cpu-percent", "101"],
        ["--dir", "D", "--cpu-backoff-strength", "1.5"],
        ["--dir", "D", "--cpu-backoff-above", "-1"],
        ["--dir", "D", "--max-io-mbps", "0"],
        ["--dir", "D", "--age-minutes", "-1"],
        ["--dir", "D", "--output", "xml"],
        ["--dir", "D", "--rules", "strict"],
        ["--single", "D/x.pcap", "--age-minutes", "5"],
        ["--dir", "D", "--dry-run", "--check-only"],
        ["--dir", "D", "--bogus"],
        ["D/x.pcap", "--dir", "D"],  # files, or --dir, or --single
        ["D/x.pcap", "--single", "D/x.pcap"],
        ["D/x.pcap", "--watch"],  # --dir only
        ["D/x.pcap", "--age-minutes", "5"],
    ],
)
def test_usage_errors_exit_2_and_touch_nothing(tmp_path, args):  # type: ignore[no-untyped-def]
    """Each in a directory of its own holding a capture, an old tmp and a marked file: nothing
    in it changes."""
    (tmp_path / "x.pcap").write_bytes(capture())
    (tmp_path / "y.pcap.tmp").write_bytes(b"stale")
    age(tmp_path / "y.pcap.tmp", 3600)
    (tmp_path / ".slim_markers").mkdir()
    (tmp_path / ".slim_markers" / "z.pcap").touch()
    before = listing(tmp_path)
    p = invoke(*[a.replace("D", str(tmp_path)) for a in args], check_rc=2)
    assert p.stdout == ""
    assert "Usage" in p.stderr or "Error" in p.stderr
    assert listing(tmp_path) == before


# --- --single -------------------------------------------------------------------------------


def test_single_slims_in_place_and_writes_the_marker_last(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "cap.pcap"
    data = capture()
    f.write_bytes(data)
    p = invoke("--single", f, check_rc=0)
    assert f.read_bytes() == expected_slim(data)
    lines = p.stderr.strip().splitlines()
    m = OK_LINE.match(lines[0])
    assert m and m.group(1) == str(f)
    assert (int(m.group(2)), int(m.group(3)), int(m.group(4))) == (5, 3, len(data))
    assert int(m.group(5)) == f.stat().st_size
    assert SUMMARY.match(lines[-1]).groups()[:4] == ("done", "1", "0", "0")  # type: ignore[union-attr]
    marker = tmp_path / ".slim_markers" / "cap.pcap"
    assert marker.is_file()
    assert oct(marker.stat().st_mode & 0o777) == "0o644"
    assert oct(marker.parent.stat().st_mode & 0o777) == "0o755"
    assert marker.stat().st_mtime_ns >= f.stat().st_ctime_ns
    assert not (tmp_path / "cap.pcap.tmp").exists()
    assert p.stdout == ""
    # a second run honours the marker
    again = invoke("--single", f, "--output", "json", check_rc=0)
    doc = json.loads(again.stdout)
    assert doc["files"] == [{"file": str(f), "status": "skipped_marker"}]
    assert doc["summary"]["skip"] == 1
    assert invoke("--single", f, check_rc=0).stderr.startswith(f"skip (marked): {f}")


def test_file_arguments_slim_each_in_place_as_single_does(tmp_path):  # type: ignore[no-untyped-def]
    """`pcap-slim FILE...` (as tcpdump -z and find -exec call it), a real process: each file
    slimmed in place and marked, in the order given, a marked one skipped, a missing one
    failed (exit 1) without stopping the others."""
    data = capture()
    a, b, marked = tmp_path / "a.pcap", tmp_path / "sub" / "b.pcap", tmp_path / "m.pcap"
    b.parent.mkdir()
    for f in (a, b, marked):
        f.write_bytes(data)
    (tmp_path / ".slim_markers").mkdir()
    (tmp_path / ".slim_markers" / "m.pcap").touch()
    missing = tmp_path / "gone.pcap"
    p = run(b, missing, a, marked, check_rc=1)
    assert a.read_bytes() == b.read_bytes() == expected_slim(data)
    assert marked.read_bytes() == data
    assert (tmp_path / ".slim_markers" / "a.pcap").is_file()
    assert (tmp_path / "sub" / ".slim_markers" / "b.pcap").is_file()
    lines = p.stderr.strip().splitlines()
    assert [line.split()[1] if not line.startswith("skip") else line for line in lines[:4]] == [
        str(b), str(missing) + ":", str(a), f"skip (marked): {marked}"]  # fmt: skip
    assert SUMMARY.match(lines[-1]).groups()[:4] == ("done", "2", "1", "1")  # type: ignore[union-attr]
    assert p.stdout == ""


def test_options_come_from_the_environment_too(tmp_path):  # type: ignore[no-untyped-def]
    """tcpdump -z passes no options: PCAP_SLIM_RULES and the like set them (a real process)."""
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    env = {"PCAP_SLIM_RULES": "forensic", "PCAP_SLIM_OUTPUT": "json"}
    doc = json.loads(run(f, "--check-only", env=env, check_rc=0).stdout)
    assert doc["summary"]["rules"] == "forensic"
    forensic = naive.slim_bytes(SAMPLE.read_bytes(), Forensic().decide)
    assert {k: v for k, v in doc["files"][0]["truncated_by"].items() if v} == forensic.categories
    assert run(f, "--check-only", "--rules", "compatible", env=env, check_rc=0).json()[
        "summary"]["rules"] == "compatible"  # fmt: skip
    bad = run(f, "--check-only", env={"PCAP_SLIM_RULES": "strict"}, check_rc=2)
    assert "strict" in bad.stderr and bad.stdout == ""


def test_json_report_has_every_key_of_the_native_tool(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    p = invoke("--single", f, "--output", "json", check_rc=0)
    assert len(p.stdout.strip().splitlines()) == 1
    doc = json.loads(p.stdout)
    assert set(doc["summary"]) >= {"ok", "skip", "fail", "elapsed_ms", "check_only"}
    assert doc["summary"]["ok"] == 1 and doc["summary"]["check_only"] is False
    (entry,) = doc["files"]
    assert set(entry) >= {
        "file",
        "status",
        "in_pkts",
        "truncated",
        "kept",
        "in_bytes",
        "out_bytes",
        "elapsed_ms",
        "truncated_by",
        "linktypes",
        "format",
        "tail_bytes",
    }
    assert entry["status"] == "ok" and entry["format"] == "pcap"
    assert set(entry["truncated_by"]) == {
        "tls", "tls_other_port", "ssh", "quic", "ipsec",  # SPEC §6
        "wireguard", "openvpn", "dtls", "srtp", "smb3",  # SPEC §9
    }  # fmt: skip
    twin = naive.slim_bytes(SAMPLE.read_bytes())
    assert twin.packets == SAMPLE_PACKETS
    assert entry["kept"] + entry["truncated"] == entry["in_pkts"] == twin.packets
    assert entry["truncated_by"] == {**dict.fromkeys(entry["truncated_by"], 0), **twin.categories}
    assert entry["truncated"] == sum(twin.categories.values())
    assert entry["linktypes"] == {"1": SAMPLE_PACKETS}  # the sample is Ethernet throughout
    assert entry["in_bytes"] == SAMPLE.stat().st_size
    assert entry["out_bytes"] == f.stat().st_size == len(twin.data)
    assert f.read_bytes() == twin.data
    assert entry["tail_bytes"] == twin.tail == 0
    assert p.stderr == ""


def _times_and_mode(f: Path) -> None:
    os.chmod(f, 0o640)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_600_000_100_987_654_321))


def _kept_what_it_had(before: os.stat_result, after: os.stat_result) -> None:
    assert after.st_ino != before.st_ino  # replaced by rename
    assert after.st_size < before.st_size
    assert after.st_mode == before.st_mode
    assert after.st_mtime_ns == 1_600_000_100_987_654_321
    assert after.st_atime_ns == 1_600_000_000_123_456_789


def test_owner_group_mode_and_times_survive_a_run_as_root(tmp_path):  # type: ignore[no-untyped-def]
    """The file belongs to another account and one of its groups: root gives the slim copy
    the same owner and group."""
    with temporary_account() as acct:
        f = tmp_path / "o.pcap"
        f.write_bytes(capture())
        os.chown(f, acct.uid, acct.extra_gid)
        _times_and_mode(f)
        before = f.stat()
        invoke("--single", f, check_rc=0)
        after = f.stat()
        _kept_what_it_had(before, after)
        assert (after.st_uid, after.st_gid) == (acct.uid, acct.extra_gid) != (0, 0)


def test_an_unprivileged_run_keeps_owner_and_the_groups_it_may_give(tmp_path):  # type: ignore[no-untyped-def]
    """Run as an ordinary account on its own files: a file in one of its other groups keeps
    that group; a file in a group it is not in (root's) is slimmed all the same and gets the
    account's own group, the one thing it is not permitted to give (SPEC §5 step 4)."""
    with temporary_account() as acct:
        d = acct.directory()
        try:
            for name, gid in (("member.pcap", acct.extra_gid), ("foreign.pcap", 0)):
                f = d / name
                f.write_bytes(capture())
                os.chown(f, acct.uid, gid)
                _times_and_mode(f)
            before = {n: (d / n).stat() for n in ("member.pcap", "foreign.pcap")}
            p = subprocess.run(
                acct.command(sys.executable, "-m", "pcapslim", "--dir", str(d), "--output", "json"),
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert p.returncode == 0, p.stderr
            assert [e["status"] for e in json.loads(p.stdout)["files"]] == ["ok", "ok"]
            member, foreign = (d / "member.pcap").stat(), (d / "foreign.pcap").stat()
            _kept_what_it_had(before["member.pcap"], member)
            _kept_what_it_had(before["foreign.pcap"], foreign)
            assert (member.st_uid, member.st_gid) == (acct.uid, acct.extra_gid)
            assert (foreign.st_uid, foreign.st_gid) == (acct.uid, acct.gid)
            marker = d / ".slim_markers" / "member.pcap"
            assert (marker.stat().st_uid, marker.parent.stat().st_uid) == (acct.uid, acct.uid)
        finally:
            shutil.rmtree(d)


def test_unknown_file_fails_with_the_original_untouched(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "bad.pcap"
    f.write_bytes(b"this is not a capture at all, honest")
    p = invoke("--single", f, "--output", "json", check_rc=1)
    (entry,) = json.loads(p.stdout)["files"]
    assert entry["status"] == "fail" and "unknown file format" in entry["error"]
    assert f.read_bytes() == b"this is not a capture at all, honest"
    assert not (tmp_path / "bad.pcap.tmp").exists()
    assert not (tmp_path / ".slim_markers").exists()
    h = invoke("--single", f, check_rc=1)
    assert h.stderr.startswith(f"FAIL {f}: unknown file format")


def test_a_single_file_that_does_not_exist_says_so(tmp_path):  # type: ignore[no-untyped-def]
    """Not "it disappeared during the run": it was never there."""
    for missing in (tmp_path / "nope.pcap", tmp_path / "no_dir" / "nope.pcap"):
        p = invoke("--single", missing, check_rc=1)
        assert p.stderr.splitlines()[0] == f"FAIL {missing}: no such file; nothing was changed"
        doc = invoke("--single", missing, "--output", "json", check_rc=1).json()
        assert doc["files"] == [
            {"file": str(missing), "status": "fail",
             "error": f"{missing}: no such file; nothing was changed"}
        ]  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == []


# --- --dir ----------------------------------------------------------------------------------


def _populate(d: Path) -> dict[str, bytes]:
    files = {
        "a_old.pcap": capture(4, 1),
        "b_ns_be.pcap": capture(2, 2, little_endian=False, nanosecond=True),
        "c.pcapng": synth.pcapng_bytes([synth.Record(TLS), synth.Record(PLAIN)]),
        "d_bad.pcap": b"not a capture, but named like one......",
        "e.pcap": capture(1, 1),
    }
    for i, (name, data) in enumerate(files.items()):
        (d / name).write_bytes(data)
        age(d / name, 3600 - 60 * i)  # a_old is the oldest
    (d / "notes.txt").write_text("not a capture")
    os.symlink(d / "a_old.pcap", d / "link.pcap")
    (d / "sub").mkdir()
    (d / "sub" / "deep.pcap").write_bytes(capture())
    return files


def expected_listing(
    before: dict[str, tuple[int, int, bytes]], slimmed: dict[str, bytes]
) -> dict[str, tuple[int, int, bytes]]:
    """The listing after a run that slimmed (and marked) exactly `slimmed`: nothing else new,
    gone or changed."""
    after = dict(before)
    for name, data in slimmed.items():
        after[name] = (before[name][0], len(data), data)
        after[f".slim_markers/{name}"] = (0o100644, 0, b"")
    if slimmed:
        after[".slim_markers"] = (0o40755, after.get(".slim_markers", (0, 0, b""))[1], b"")
    return after


def _same_listing(d: Path, expected: dict[str, tuple[int, int, bytes]]) -> None:
    got = listing(d)
    if ".slim_markers" in got:  # a directory's size is the file system's business
        got[".slim_markers"] = (got[".slim_markers"][0], expected[".slim_markers"][1], b"")
    assert got == expected


def test_dir_slims_every_pending_file_oldest_first_and_fails_only_the_bad_one(tmp_path):  # type: ignore[no-untyped-def]
    files = _populate(tmp_path)
    before = listing(tmp_path)
    expected = {n: expected_slim(d) for n, d in files.items() if n != "d_bad.pcap"}
    p = invoke("--dir", tmp_path, "--output", "json", check_rc=1)
    _same_listing(tmp_path, expected_listing(before, expected))
    doc = json.loads(p.stdout)
    names = [Path(e["file"]).name for e in doc["files"]]
    assert names == ["a_old.pcap", "b_ns_be.pcap", "c.pcapng", "d_bad.pcap", "e.pcap"]
    assert [e["status"] for e in doc["files"]] == ["ok", "ok", "ok", "fail", "ok"]
    assert doc["summary"] == {**doc["summary"], "ok": 4, "skip": 0, "fail": 1}
    for name, data in expected.items():
        assert (tmp_path / name).read_bytes() == data, name
        assert (tmp_path / ".slim_markers" / name).is_file()
    assert (tmp_path / "d_bad.pcap").read_bytes() == files["d_bad.pcap"]
    assert not (tmp_path / ".slim_markers" / "d_bad.pcap").exists()
    assert (tmp_path / "sub" / "deep.pcap").read_bytes() == capture()  # not recursive
    assert (tmp_path / "link.pcap").is_symlink()
    assert not list(tmp_path.glob("*.tmp"))
    assert doc["files"][2]["format"] == "pcapng"
    # second run: marked files are not listed at all; the bad one fails again
    doc2 = json.loads(invoke("--dir", tmp_path, "--output", "json", check_rc=1).stdout)
    assert [Path(e["file"]).name for e in doc2["files"]] == ["d_bad.pcap"]
    (tmp_path / "d_bad.pcap").unlink()
    doc3 = json.loads(invoke("--dir", tmp_path, "--output", "json", check_rc=0).stdout)
    assert doc3["files"] == [] and doc3["summary"]["ok"] == 0


def test_dir_human_report(tmp_path):  # type: ignore[no-untyped-def]
    files = _populate(tmp_path)
    before = listing(tmp_path)
    p = invoke("--dir", tmp_path, "--workers", "2", check_rc=1)
    slimmed = {n: expected_slim(d) for n, d in files.items() if n != "d_bad.pcap"}
    _same_listing(tmp_path, expected_listing(before, slimmed))
    lines = p.stderr.strip().splitlines()
    assert [OK_LINE.match(x) is not None for x in lines[:-1]] == [True, True, True, False, True]
    assert lines[3].startswith(f"FAIL {tmp_path / 'd_bad.pcap'}: ")
    assert SUMMARY.match(lines[-1]).groups()[:4] == ("done", "4", "0", "1")  # type: ignore[union-attr]
    assert p.stdout == ""


def test_age_filter_leaves_young_files_out(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "old.pcap").write_bytes(capture())
    (tmp_path / "young.pcap").write_bytes(capture())
    age(tmp_path / "old.pcap", 600)
    before = listing(tmp_path)
    doc = json.loads(
        invoke("--dir", tmp_path, "--age-minutes", "5", "--output", "json", check_rc=0).stdout
    )
    assert [Path(e["file"]).name for e in doc["files"]] == ["old.pcap"]
    _same_listing(tmp_path, expected_listing(before, {"old.pcap": expected_slim(capture())}))


def test_stale_tmp_is_cleaned_and_a_fresh_one_means_busy(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "x.pcap").write_bytes(capture())
    (tmp_path / "y.pcap").write_bytes(capture())
    stale = tmp_path / "gone.pcap.tmp"
    stale.write_bytes(b"half")
    age(stale, 600)
    other = tmp_path / "keep.tmp"  # not of this tool's naming
    other.write_bytes(b"x")
    age(other, 600)
    fresh = tmp_path / "y.pcap.tmp"
    fresh.write_bytes(b"another worker is writing")
    for flag in ("--dry-run", "--check-only"):
        invoke("--dir", tmp_path, flag, check_rc=0)
        assert stale.exists()
    doc = json.loads(invoke("--dir", tmp_path, "--output", "json", check_rc=0).stdout)
    assert not stale.exists() and other.exists()
    status = {Path(e["file"]).name: e["status"] for e in doc["files"]}
    assert status == {"x.pcap": "ok", "y.pcap": "skipped_busy"}
    assert doc["summary"]["skip"] == 1
    assert fresh.read_bytes() == b"another worker is writing"
    assert (tmp_path / "y.pcap").read_bytes() == capture()
    # once the other worker is gone for 5 minutes, its tmp is taken over
    age(fresh, 400)
    invoke("--single", tmp_path / "y.pcap", check_rc=0)
    assert not fresh.exists() and (tmp_path / ".slim_markers" / "y.pcap").exists()


def test_dry_run_lists_and_writes_nothing(tmp_path):  # type: ignore[no-untyped-def]
    _populate(tmp_path)
    before = listing(tmp_path)
    p = invoke("--dir", tmp_path, "--dry-run", "--output", "json", check_rc=0)
    lines = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert [Path(x["file"]).name for x in lines] == [
        "a_old.pcap",
        "b_ns_be.pcap",
        "c.pcapng",
        "d_bad.pcap",
        "e.pcap",
    ]
    assert {x["status"] for x in lines} == {"would_slim"}
    h = invoke("--dir", tmp_path, "--dry-run", check_rc=0)
    assert h.stderr.splitlines()[0] == f"would slim: {tmp_path / 'a_old.pcap'}"
    assert listing(tmp_path) == before


def test_check_only_reports_the_numbers_and_writes_nothing(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    mtime = f.stat().st_mtime_ns
    check = json.loads(invoke("--single", f, "--check-only", "--output", "json", check_rc=0).stdout)
    assert check["summary"]["check_only"] is True
    assert f.read_bytes() == SAMPLE.read_bytes() and f.stat().st_mtime_ns == mtime
    assert not (tmp_path / ".slim_markers").exists() and not list(tmp_path.glob("*.tmp"))
    assert (
        invoke("--single", f, "--check-only", check_rc=0)
        .stderr.strip()
        .splitlines()[-1]
        .startswith("check: ok=1")
    )
    real = json.loads(invoke("--single", f, "--output", "json", check_rc=0).stdout)
    keys = (
        "in_pkts",
        "truncated",
        "kept",
        "in_bytes",
        "out_bytes",
        "truncated_by",
        "linktypes",
        "tail_bytes",
    )
    assert {k: check["files"][0][k] for k in keys} == {k: real["files"][0][k] for k in keys}


@pytest.mark.parametrize("flag", ["--mmap", "--no-mmap"])
def test_mmap_and_buffered_reads_give_the_same_file(tmp_path, flag):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    invoke("--single", f, flag, check_rc=0)
    assert f.read_bytes() == expected_slim(SAMPLE.read_bytes())


def test_unreadable_directory_exits_1(tmp_path):  # type: ignore[no-untyped-def]
    p = invoke("--dir", tmp_path / "missing", "--output", "json", check_rc=1)
    doc = json.loads(p.stdout)
    assert doc["files"] == [] and "cannot read the directory" in doc["error"]


def test_progress_bars_render_when_asked(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    p = invoke("--single", f, "--progress", check_rc=0)
    assert "all files" in p.stderr and OK_LINE.match(
        [x for x in p.stderr.splitlines() if x.startswith("ok ")][0]
    )
    assert "all files" not in invoke("--single", f, "--no-progress", check_rc=0).stderr


def _marker_owner(f: Path) -> tuple[int, int, int]:
    """Slim f as root; (uid, gid) of its marker and uid of the marker directory."""
    invoke("--single", f, check_rc=0)
    marker = f.parent / ".slim_markers" / f.name
    return marker.stat().st_uid, marker.stat().st_gid, marker.parent.stat().st_uid


def test_markers_belong_to_sensor_when_that_account_exists(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PCAPSLIM_MARKER_OWNER", raising=False)
    with sensor_account() as (uid, gid):
        f = tmp_path / "s.pcap"
        f.write_bytes(capture())
        assert _marker_owner(f) == (uid, gid, uid)
        assert uid != os.geteuid()


def test_markers_belong_to_the_account_the_environment_names(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    with temporary_account() as acct:
        f = tmp_path / "o.pcap"
        f.write_bytes(capture())
        monkeypatch.setenv("PCAPSLIM_MARKER_OWNER", acct.name)
        assert _marker_owner(f) == (acct.uid, acct.gid, acct.uid)


def test_markers_belong_to_the_running_user_without_such_an_account(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    f = tmp_path / "g.pcap"
    f.write_bytes(capture())
    monkeypatch.setenv("PCAPSLIM_MARKER_OWNER", "pcapslim-no-such-account")
    assert _marker_owner(f) == (os.geteuid(), os.getegid(), os.geteuid())


def test_an_unprivileged_run_owns_its_markers_even_with_a_sensor_account(tmp_path):  # type: ignore[no-untyped-def]
    with sensor_account() as (sensor_uid, _), temporary_account() as acct:
        d = acct.directory()
        try:
            f = d / "u.pcap"
            f.write_bytes(capture())
            os.chown(f, acct.uid, acct.gid)
            p = subprocess.run(
                acct.command(sys.executable, "-m", "pcapslim", "--single", str(f)),
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert p.returncode == 0, p.stderr
            marker = d / ".slim_markers" / "u.pcap"
            assert marker.stat().st_uid == acct.uid != sensor_uid
        finally:
            shutil.rmtree(d)


def test_forensic_rules_on_the_command_line(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, f)
    check = json.loads(
        invoke(
            "--single", f, "--check-only", "--rules", "forensic", "--output", "json", check_rc=0
        ).stdout
    )
    assert check["summary"]["rules"] == "forensic" and check["files"][0]["rules"] == "forensic"
    default = json.loads(
        invoke("--single", f, "--check-only", "--output", "json", check_rc=0).stdout
    )
    assert default["summary"]["rules"] == "compatible"
    data = SAMPLE.read_bytes()
    compatible, forensic = naive.slim_bytes(data), naive.slim_bytes(data, Forensic().decide)
    zeros = dict.fromkeys(default["files"][0]["truncated_by"], 0)
    assert default["files"][0]["truncated_by"] == {**zeros, **compatible.categories}
    assert check["files"][0]["truncated_by"] == {**zeros, **forensic.categories}
    # the sample's one HTTP segment that starts with 0x17 is cleartext: the default rules cut
    # it, the forensic ones keep it (the twins agree on this, by their own reading)
    assert compatible.categories["tls_other_port"] == 1
    assert "tls_other_port" not in forensic.categories
    invoke("--single", f, "--rules", "forensic", check_rc=0)
    assert f.read_bytes() == forensic.data
    assert f.stat().st_size == check["files"][0]["out_bytes"]


# --- as a shell sees it ---------------------------------------------------------------------


def test_exit_codes_and_stdout_as_a_shell_sees_them(tmp_path):  # type: ignore[no-untyped-def]
    """Real processes: 0 when files were slimmed or there was nothing to do, 1 when a file
    failed or the directory cannot be read, 2 for a usage error; stdout carries the one-line
    JSON report and nothing else, and nothing at all with human output."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.pcap").write_bytes(capture())
    ok = run("--dir", d, "--output", "json", check_rc=0)
    assert len(ok.stdout.splitlines()) == 1 and ok.json()["summary"]["ok"] == 1
    assert ok.stderr == ""
    nothing = run("--dir", d, check_rc=0)
    assert nothing.stdout == "" and SUMMARY.match(nothing.stderr.strip())
    (d / "bad.pcap").write_bytes(b"not a capture, but named like one......")
    failed = run("--dir", d, "--output", "json", check_rc=1)
    assert [e["status"] for e in failed.json()["files"]] == ["fail"]
    assert run("--dir", d, check_rc=1).stdout == ""
    unreadable = run("--dir", tmp_path / "missing", "--output", "json", check_rc=1)
    assert "cannot read the directory" in unreadable.json()["error"]
    usage = run("--dir", d, "--workers", "0", "--output", "json", check_rc=2)
    assert usage.stdout == "" and "Usage" in usage.stderr


def test_lines_of_a_directory_run_do_not_wait_for_a_file_marked_meanwhile():  # type: ignore[no-untyped-def]
    """Another slimmer marks a listed file before this run takes it: the run hears of it and
    prints no line for it (directory runs do not list marked files), and the lines after it
    are printed as soon as their files finish, not at the end of the run."""
    from pcapslim.cli import _Lines

    out: list[str] = []
    lines = _Lines(["d/a.pcap", "d/b.pcap", "d/c.pcap"], out.append, listed=True)
    lines.add(pcapslim.FileResult("d/b.pcap", "fail", error="d/b.pcap: broken"))
    assert out == []  # a.pcap comes first
    lines.add(pcapslim.FileResult("d/a.pcap", "skipped_marker"))
    assert out == ["FAIL d/b.pcap: broken"]
    lines.add(pcapslim.FileResult("d/c.pcap", "skipped_busy"))
    assert out == ["FAIL d/b.pcap: broken", "skip (busy): d/c.pcap"]
    single: list[str] = []
    one = _Lines(["x.pcap"], single.append, listed=False)  # --single lists a marked file
    one.add(pcapslim.FileResult("x.pcap", "skipped_marker"))
    assert single == ["skip (marked): x.pcap"]
