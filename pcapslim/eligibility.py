"""Which files a directory run takes: the one rule, the directory walk and listing, and the
cleanup of tmp files that dead slimmers left behind (SPEC §5). Every look inside a capture
directory goes through its descriptor (pcapslim.capdir).

A file is eligible when its name is a capture's (`*.pcap`, `*.pcapng`, and their `.gz` and
`.zst` forms), it is a regular file, it is older than `--age-minutes`, it has no marker, and no
process has it open for writing (pcapslim.inuse). Symlinks and directories are passed over; a
FIFO, socket or device node named like a capture is taken, never opened, and fails at once
with a message that says what it is (pcapslim.coordinator). One-shot `--dir` runs and the
watcher both ask `select`; a run given files by name takes them as they are (only the marker is
honoured, by the coordinator).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import tmpowner
from .capdir import CaptureDir, Target
from .errors import PlantedPathError
from .inuse import being_written
from .markers import MARKER_DIR, TMP_SUFFIX, MarkerDir, is_marked

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz", ".pcap.zst", ".pcapng.zst")
STALE_TMP_SECONDS = 300  # an unmarked tmp older than this belongs to a dead worker
# a directory of the tree that is no longer one by the time it is opened: passed over
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def is_capture_name(name: str) -> bool:
    return name.endswith(CAPTURE_SUFFIXES)


def tmp_name(name: str) -> str:
    """The name the slim copy of `name` is written under before it replaces it."""
    return name + TMP_SUFFIX


def tmp_path(path: Path) -> Path:
    """What the tmp of the capture `path` is called (in messages and tests)."""
    return path.with_name(tmp_name(path.name))


def unmarked(d: CaptureDir, name: str) -> bool:
    """No marker: a run would take the file. Something planted at the marker counts as none
    here; the file's own run says what is wrong."""
    try:
        return not is_marked(d, name)
    except PlantedPathError:
        return True


@dataclass(frozen=True)
class Candidate:
    target: Target
    mtime_ns: int
    size: int

    @property
    def path(self) -> Path:
        return self.target.path


@dataclass
class Selection:
    ready: list[Candidate] = field(default_factory=list)  # eligible, oldest first
    due: dict[str, float] = field(default_factory=dict)  # too young: when they come of age
    written: list[str] = field(default_factory=list)  # open for writing by some process


def select(
    d: CaptureDir,
    target: Callable[[str], Target],
    entries: Iterable[tuple[str, os.stat_result]],
    age_seconds: float,
    now: float,
) -> Selection:
    """The rule, over entries of the directory `d` and their lstat results (as a listing gives
    them); `target` names a file of `d` as a run's target."""
    out = Selection()
    fresh: list[Candidate] = []
    special: set[str] = set()
    markers = _markers(d)
    try:
        for name, st in entries:
            if not is_capture_name(name):
                continue
            if not stat.S_ISREG(st.st_mode):
                if not _special(st.st_mode):
                    continue  # symlinks and directories are not captures of this directory
                special.add(name)  # taken, to fail at once: never opened, never waited on
            if age_seconds and now - st.st_mtime < age_seconds:
                out.due[name] = st.st_mtime + age_seconds
                continue
            if not _marked(markers, name):
                fresh.append(Candidate(target(name), st.st_mtime_ns, st.st_size))
    finally:
        if markers is not None:
            markers.close()
    fresh.sort(key=lambda c: (c.mtime_ns, c.target.name))
    busy = being_written(d, [c.target.name for c in fresh if c.target.name not in special])
    out.ready = [c for c in fresh if c.target.name not in busy]
    out.written = [c.target.name for c in fresh if c.target.name in busy]
    return out


def _markers(d: CaptureDir) -> MarkerDir | None:
    try:
        return MarkerDir.existing(d)
    except PlantedPathError:
        return None  # each file's own run reports what is planted


def _marked(markers: MarkerDir | None, name: str) -> bool:
    if markers is None:
        return False
    try:
        return markers.is_marked(name)
    except PlantedPathError:
        return False  # the file's own run reports it


def _special(mode: int) -> bool:
    """A FIFO, socket or device node: named like a capture, it fails with a clear message."""
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def directories(root: Path, recursive: bool = False) -> list[tuple[str, ...]]:
    """The directories a run looks in, as their names below `root`: `root` itself, and with
    `recursive` every real directory below it (never through a symlink; marker directories left
    out; one that stops being a directory while it is walked is passed over). OSError when
    `root` cannot be read."""
    out: list[tuple[str, ...]] = [()]
    if not recursive:
        return out
    with CaptureDir.open(root) as top:
        _walk(top, (), out)
    return out


def _walk(d: CaptureDir, parts: tuple[str, ...], out: list[tuple[str, ...]]) -> None:
    for name in d.subdirectories():
        if name == MARKER_DIR:
            continue
        try:
            below = d.child(name)
        except OSError as e:
            if e.errno in _GONE:
                continue
            raise
        with below:
            out.append((*parts, name))
            _walk(below, (*parts, name), out)


def pending_files(
    root: Path,
    age_minutes: float,
    clock: Callable[[], float] = time.time,
    recursive: bool = False,
) -> list[Target]:
    """The eligible files below `root` (with `recursive`, in the whole tree), oldest first.
    OSError when `root` cannot be read."""
    now = clock()
    found: list[Candidate] = []
    for parts in directories(root, recursive):
        try:
            d = CaptureDir.open(root, parts)
        except OSError as e:
            if parts and e.errno in _GONE:
                continue  # no longer a directory below root
            raise
        with d:
            entries = [(n, st) for n, st in d.entries() if is_capture_name(n)]
            chosen = select(d, _targets(root, parts), entries, age_minutes * 60, now)
            found.extend(chosen.ready)
    found.sort(key=lambda c: (c.mtime_ns, str(c.path)))
    return [c.target for c in found]


def _targets(root: Path, parts: tuple[str, ...]) -> Callable[[str], Target]:
    return lambda name: Target(root, parts, name)


def clean_stale_tmps(d: CaptureDir, clock: Callable[[], float] = time.time) -> list[Path]:
    """Delete the tmp files of dead slimmers in `d` (NAME.pcap.tmp, ...): pcapslim's own as
    soon as their writer is gone, others (unmarked) once older than 5 minutes."""
    removed = []
    now = clock()
    for name, st in d.entries():
        if not name.endswith(TMP_SUFFIX) or not is_capture_name(name[: -len(TMP_SUFFIX)]):
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        taken = tmpowner.take_over(d, name)  # a pcapslim tmp whose writer is gone
        if taken is True:
            removed.append(d.path / name)
        if taken is not None or now - st.st_mtime < STALE_TMP_SECONDS:
            continue
        try:
            d.unlink(name)
            removed.append(d.path / name)
        except OSError:
            pass  # gone already, or not ours to remove: the file's own run will say
    return removed
