"""SIGKILL at random points of in-place slims, and several processes on one directory."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.cli import CLI

from benches.gen_capture import generate
from pcapslim import slim_file

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("PCAPSLIM_KILLS", "12"))


@pytest.fixture(scope="module")
def capture_and_slim(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("crash_src")
    orig = d / "orig.pcap"
    generate(orig, 50, seed=3)
    slim = d / "slim.pcap"
    slim_file(orig, slim)
    return orig.read_bytes(), slim.read_bytes()


def test_sigkill_at_any_point_leaves_the_original_or_the_complete_slim(tmp_path, capture_and_slim):  # type: ignore[no-untyped-def]
    orig, slim = capture_and_slim
    f = tmp_path / "k.pcap"
    tmp = tmp_path / "k.pcap.tmp"
    marker = tmp_path / ".slim_markers" / "k.pcap"
    r = random.Random(int(os.environ.get("PCAPSLIM_KILL_SEED", "11")))
    seen: Counter[str] = Counter()
    for _ in range(KILLS):
        f.write_bytes(orig)
        marker.unlink(missing_ok=True)
        p = subprocess.Popen(
            [*CLI, "--single", f, "--max-io-mbps", "40"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(r.uniform(0.2, 3.5))
        p.kill()
        p.wait()
        content = f.read_bytes()
        assert content in (orig, slim), "a partial file after SIGKILL"
        state = "original" if content == orig else "slim"
        state += "+marker" if marker.exists() else ""
        state += "+tmp" if tmp.exists() else ""
        seen[state] += 1
        # the next timer run comes later than 5 minutes: the dead worker's tmp is stale by then
        if tmp.exists():
            os.utime(tmp, (time.time() - 600, time.time() - 600))
        done = subprocess.run([*CLI, "--single", f], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f.read_bytes() == slim and marker.is_file() and not tmp.exists()
    print("states after SIGKILL:", dict(seen))
    assert seen["original+tmp"] + seen["original"] > 0  # some kills landed before the rename


def test_four_processes_with_two_workers_on_one_directory(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    d = tmp_path / "d"
    d.mkdir()
    expected = {}
    for i in range(50):
        p = src / f"c{i:02d}.pcap"
        generate(p, 0.3, seed=100 + i)
        slim_file(p, tmp_path / "x")
        expected[p.name] = (tmp_path / "x").read_bytes()
        (d / p.name).write_bytes(p.read_bytes())
    procs = [
        subprocess.Popen(
            [*CLI, "--dir", d, "--workers", "2", "--output", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    cut_by: Counter[str] = Counter()
    for doc in docs:
        assert doc["summary"]["fail"] == 0
        for e in doc["files"]:
            if e["status"] == "ok" and e["truncated"] > 0:
                cut_by[Path(e["file"]).name] += 1
    assert cut_by == Counter({name: 1 for name in expected})  # each file slimmed exactly once
    for name, data in expected.items():
        assert (d / name).read_bytes() == data
    assert sorted(p.name for p in (d / ".slim_markers").iterdir()) == sorted(expected)
    assert not list(d.glob("*.tmp"))


@pytest.mark.parametrize("name", ["c.pcap.tmp", "c.pcap"])
def test_a_file_gone_between_listing_and_stat_is_passed_over(tmp_path, monkeypatch, name):  # type: ignore[no-untyped-def]
    """Another slimmer renames its tmp into place (or a capture is removed) after this one
    listed the directory and before it looked at the entry: the entry is passed over, the
    run goes on (it failed the whole directory as unreadable)."""
    from pcapslim import capdir, eligibility

    (tmp_path / "keep.pcap").write_bytes(b"x")
    (tmp_path / name).write_bytes(b"y")
    real_scandir = os.scandir

    class Vanishing:  # the real listing; the file goes right after it was listed
        def __init__(self, path):  # type: ignore[no-untyped-def]
            self.it = real_scandir(path)

        def __enter__(self):  # type: ignore[no-untyped-def]
            entries = list(self.it)
            (tmp_path / name).unlink()
            return iter(entries)

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.it.close()

    monkeypatch.setattr(capdir.os, "scandir", Vanishing)
    with capdir.CaptureDir.open(tmp_path) as d:
        assert eligibility.clean_stale_tmps(d) == []
    (tmp_path / name).write_bytes(b"y")
    assert [t.path for t in eligibility.pending_files(tmp_path, 0)] == [tmp_path / "keep.pcap"]
