"""Power loss, not only SIGKILL: the in-place contract's durability order, checked on every crash
state a real run may leave behind (tests/support/crashstates.py builds them from an strace
record of the run, under ext4 data=ordered: a file's data durable after its fsync, a directory
entry after its directory's fsync, nothing else).

In every crash state: each capture holds its original or the whole of its slim copy; no marker
exists for a file whose slim copy (and, with --offset-map, whose map) is not on disk; no file
that is not a capture stands under a capture's name. A sample of the states is also built on
disk and slimmed again, as the next run after the power comes back would: every capture ends
as its slim copy, marked, with no tmp left behind. A scratch copy of the code with its order
broken (the directory fsync after the rename removed; the tmp's fsync removed) must be caught.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import zstandard
from support import ROOT, capture, expected_slim, plain_frame, tls_frame
from support.cli import CLI
from support.crashstates import CrashState, Run, crash_states, listing, replay, strace_argv

import pcapslim
from pcapslim.eligibility import is_capture_name
from pcapslim.markers import MARKER_DIR, OFFSETS_SUFFIX

pytestmark = pytest.mark.slow  # whole recorded runs; no kernel is covered here

RECOVERIES = 40  # crash states per scenario built on disk and slimmed again
RAW = {
    "a.pcap": capture(12, 3),
    "b.pcap": capture(40, 5, tls=tls_frame(900), plain=plain_frame(30)),
    "c.pcap": capture(0, 4),  # nothing to cut: only its marker is written
}
COMPRESSED = {
    "d.pcap.gz": capture(30, 2),
    "e.pcap.zst": capture(25, 6, tls=tls_frame(600)),
}
SCENARIOS = {
    "dir": (RAW, ()),
    "compressed": (COMPRESSED | {"f.pcap": capture(5, 1)}, ()),
    "offset-map": (RAW, ("--offset-map",)),
    "workers-2": (RAW | COMPRESSED, ("--workers", "2", "--offset-map")),
}


def stored(name: str, raw: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.compress(raw, mtime=0)
    if name.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def plain(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def make_dir(d: Path, files: dict[str, bytes]) -> None:
    d.mkdir()
    t = time.time() - 3600
    for name, raw in files.items():
        (d / name).write_bytes(stored(name, raw))
        os.utime(d / name, (t, t))


def recorded_run(tmp_path: Path, files: dict[str, bytes], flags: tuple[str, ...],
                 tree: Path | None = None) -> tuple[Run, dict[int, bytes]]:  # fmt: skip
    """Run `pcap-slim --dir` under strace over a fresh directory of `files`; the operations it
    made, and the content of every file the model knows at the end (originals and results)."""
    d = tmp_path / "D"
    make_dir(d, files)
    before, dirs = listing(d)
    contents = {ino: (d / name).read_bytes() for name, ino in before[""].items()}
    log = tmp_path / "strace.log"
    env = ["env", "-C", str(tree), f"PYTHONPATH={tree}"] if tree else []
    p = subprocess.run([*strace_argv(log), *env, *CLI, "--dir", str(d), *flags, "--output",
                        "json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    run = replay(d, before, dirs, log.read_text())
    for rel, entries in run.after.items():
        for name, ino in entries.items():
            if ino not in run.dirs:
                contents[ino] = (d / rel / name).read_bytes()
    # the run's own end state, against the naive twin (written from the spec)
    for name, raw in files.items():
        assert plain(name, (d / name).read_bytes()) == expected_slim(raw), name
        assert (d / MARKER_DIR / name).exists(), name
    return run, contents


def violations(run: Run, state: CrashState, captures: list[str], offset_map: bool) -> list[str]:
    """What a crash state breaks of the contract (nothing, if it holds)."""
    d, m = state.names(""), state.names(MARKER_DIR)
    final_d, final_m = run.after[""], run.after.get(MARKER_DIR, {})
    out = []
    for c in captures:
        ino = d.get(c)
        if ino is None:
            out.append(f"{c} is gone")
        elif ino == run.before[""][c]:
            continue  # the original
        elif ino != final_d[c]:
            out.append(f"{c} holds a file that is neither its original nor its slim copy")
        elif ino not in state.whole:
            out.append(f"{c} holds its slim copy, not all of which reached the disk")
    for name in d:
        if name not in captures and name != MARKER_DIR and is_capture_name(name):
            out.append(f"{name}: not a capture, under a capture's name")
    for name in m:
        if name.endswith(".tmp") or name.endswith(OFFSETS_SUFFIX):
            continue
        if d.get(name) != final_d.get(name) or d.get(name) not in state.whole:
            out.append(f"the marker of {name} exists, its slim copy is not on disk")
        elif offset_map:
            mo = m.get(name + OFFSETS_SUFFIX)
            if mo is None or mo != final_m.get(name + OFFSETS_SUFFIX) or mo not in state.whole:
                out.append(f"the marker of {name} exists, the map of its slimming is not on disk")
    return out


def materialize(run: Run, state: CrashState, contents: dict[int, bytes], where: Path) -> None:
    """The crash state on disk: whole files as the run left them, torn ones cut in half (a tmp
    the run removed: empty); every file an hour old, as the next timer run finds them."""
    t = time.time() - 3600
    for rel, entries in state.entries:
        (where / rel).mkdir(parents=True, exist_ok=True)
        for name, ino in entries:
            if ino in run.dirs:
                continue
            data = contents.get(ino, b"")
            if ino not in state.whole:
                data = data[: len(data) // 2]
            (where / rel / name).write_bytes(data)
            os.utime(where / rel / name, (t, t))


def recover(where: Path, files: dict[str, bytes], offset_map: bool) -> None:
    """The next run after the power comes back: every capture ends slimmed and marked, with
    its map, and nothing of the crashed run is left."""
    results = pcapslim.slim_dir(where, pcapslim.Options(offset_map=offset_map))
    assert all(r.status == "ok" for r in results), [(r.path, r.status, r.error) for r in results]
    for name, raw in files.items():
        assert plain(name, (where / name).read_bytes()) == expected_slim(raw), name
        assert (where / MARKER_DIR / name).is_file(), name
        if offset_map:
            assert (where / MARKER_DIR / (name + OFFSETS_SUFFIX)).is_file(), name
    left = [p.name for p in where.rglob("*.tmp")]
    assert left == [], left


def explore(run: Run, files: dict[str, bytes], offset_map: bool) -> tuple[list[CrashState],
                                                                          list[str]]:  # fmt: skip
    states, found = [], []
    for state in crash_states(run, random.Random(20)):
        states.append(state)
        found += [f"after op {state.k} ({run.ops[state.k - 1].text if state.k else 'none'}): "
                  f"{v}" for v in violations(run, state, sorted(files), offset_map)]  # fmt: skip
    return states, found


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_crash_state_of_a_run_keeps_the_contract(tmp_path, scenario):  # type: ignore[no-untyped-def]
    files, flags = SCENARIOS[scenario]
    offset_map = "--offset-map" in flags
    run, contents = recorded_run(tmp_path, files, flags)
    kinds = {
        k: sum(op.kind == k for op in run.ops)
        for k in ("create", "mkdir", "rename", "unlink", "data", "attr")
    }
    assert kinds["rename"] >= sum(expected_slim(r) != r for r in files.values())
    states, found = explore(run, files, offset_map)
    print(f"{scenario}: {len(run.ops)} operations {kinds}, {len(run.syncs)} fsyncs, "
          f"{len(states)} crash states, {len(found)} violations")  # fmt: skip
    assert found == [], found[:10]
    # the next run, on a sample of the states built on disk
    rng = random.Random(7)
    sample = rng.sample(states, min(RECOVERIES, len(states)))
    for i, state in enumerate(sample):
        where = tmp_path / f"crash{i}"
        materialize(run, state, contents, where)
        try:
            recover(where, files, offset_map)
        except AssertionError as e:
            raise AssertionError(f"after op {state.k}: {state.entries}") from e
        shutil.rmtree(where)
    print(f"{scenario}: {len(sample)} crash states slimmed again, each to the right end")


def scratch_tree(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the package with one piece of its code replaced (exactly once)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "pcapslim", tree / "pcapslim",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    f = tree / "pcapslim" / file
    text = f.read_text()
    assert text.count(old) == 1, (file, old)
    f.write_text(text.replace(old, new))
    return tree


BROKEN = {
    "no directory fsync after the rename": (
        "coordinator.py",
        "                self.tmp_gone = True\n                d.fsync()\n",
        "                self.tmp_gone = True\n",
        "the marker of {} exists, its slim copy is not on disk",
    ),
    "no fsync of the tmp before the rename": (
        "coordinator.py",
        "    os.utime(tmp_fd, ns=(before.st_atime_ns, before.st_mtime_ns))\n    os.fsync(tmp_fd)\n",
        "    os.utime(tmp_fd, ns=(before.st_atime_ns, before.st_mtime_ns))\n",
        "{} holds its slim copy, not all of which reached the disk",
    ),
    "no fsync of the offset map before its rename": (
        "markers.py",
        "        self._fh.flush()\n        os.fsync(self._fh.fileno())\n",
        "        self._fh.flush()\n",
        "the marker of {} exists, the map of its slimming is not on disk",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_order_is_caught(tmp_path, broken):  # type: ignore[no-untyped-def]
    file, old, new, expected = BROKEN[broken]
    tree = scratch_tree(tmp_path, file, old, new)
    files = {"a.pcap": RAW["a.pcap"], "b.pcap": RAW["b.pcap"]}
    run, _ = recorded_run(tmp_path, files, ("--offset-map",), tree=tree)
    states, found = explore(run, files, offset_map=True)
    print(f"{broken}: {len(states)} crash states, {len(found)} violations, e.g. {found[:1]}")
    assert any(expected.format("a.pcap") in v for v in found), found[:10]
