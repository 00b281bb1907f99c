"""Which files a directory run takes: the one rule, the directory listing, and the cleanup of
tmp files that dead slimmers left behind (SPEC §5).

A file is eligible when its name is a capture's (`*.pcap`, `*.pcapng`, and their `.gz` and
`.zst` forms), it is a regular file, it is older than `--age-minutes`, it has no marker, and no
process has it open for writing (pcapslim.inuse). Symlinks and directories are passed over; a
FIFO, socket or device node named like a capture is taken, never opened, and fails at once
with a message that says what it is (pcapslim.coordinator).
One-shot `--dir` runs and the watcher both ask `select`; a run given files by name takes them
as they are (only the marker is honoured, by the coordinator).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import tmpowner
from .errors import PlantedPathError
from .inuse import being_written
from .markers import MARKER_DIR, TMP_SUFFIX, is_marked

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz", ".pcap.zst", ".pcapng.zst")
STALE_TMP_SECONDS = 300  # an unmarked tmp older than this belongs to a dead worker


def is_capture_name(name: str) -> bool:
    return name.endswith(CAPTURE_SUFFIXES)


def tmp_path(path: Path) -> Path:
    """Where the slim copy of `path` is written before it replaces it."""
    return path.with_name(path.name + TMP_SUFFIX)


def unmarked(path: Path) -> bool:
    """No marker: a run would take the file. Something planted at the marker counts as none
    here; the file's own run says what is wrong."""
    try:
        return not is_marked(path)
    except PlantedPathError:
        return True


@dataclass(frozen=True)
class Candidate:
    path: Path
    mtime_ns: int
    size: int


@dataclass
class Selection:
    ready: list[Candidate] = field(default_factory=list)  # eligible, oldest first
    due: dict[Path, float] = field(default_factory=dict)  # too young: when they come of age
    written: list[Path] = field(default_factory=list)  # open for writing by some process


def select(
    entries: Iterable[tuple[Path, os.stat_result]], age_seconds: float, now: float
) -> Selection:
    """The rule, over files and their lstat results (as a listing gives them)."""
    out = Selection()
    fresh: list[Candidate] = []
    special: set[Path] = set()
    for path, st in entries:
        if not is_capture_name(path.name):
            continue
        if not stat.S_ISREG(st.st_mode):
            if not _special(st.st_mode):
                continue  # symlinks and directories are not captures of this directory
            special.add(path)  # taken, to fail at once: never opened, never waited on
        if age_seconds and now - st.st_mtime < age_seconds:
            out.due[path] = st.st_mtime + age_seconds
            continue
        if unmarked(path):
            fresh.append(Candidate(path, st.st_mtime_ns, st.st_size))
    fresh.sort(key=lambda c: (c.mtime_ns, str(c.path)))
    busy = being_written([c.path for c in fresh if c.path not in special])
    out.ready = [c for c in fresh if c.path not in busy]
    out.written = [c.path for c in fresh if c.path in busy]
    return out


def _special(mode: int) -> bool:
    """A FIFO, socket or device node: named like a capture, it fails with a clear message."""
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def directories(directory: Path, recursive: bool = False) -> list[Path]:
    """`directory`, and with `recursive` every directory below it (symlinks not followed,
    marker directories left out): each keeps its own markers."""
    if not recursive:
        return [directory]
    out = []
    for here, subdirs, _ in os.walk(directory, onerror=_raise, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if d != MARKER_DIR)
        out.append(Path(here))
    return out


def _raise(e: OSError) -> None:
    raise e


def listing(directory: Path) -> list[tuple[Path, os.stat_result]]:
    """The entries of `directory` named like captures, with their lstat results; an entry gone
    between the listing and its stat is passed over."""
    out = []
    with os.scandir(directory) as it:
        for entry in it:
            if not is_capture_name(entry.name):
                continue
            try:
                out.append((directory / entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # removed since the directory was listed
    return out


def pending_files(
    directory: Path,
    age_minutes: float,
    clock: Callable[[], float] = time.time,
    recursive: bool = False,
) -> list[Path]:
    """The eligible files of `directory` (with `recursive`, of the tree below it), oldest
    first. OSError when a directory cannot be read."""
    now = clock()
    entries = [e for d in directories(directory, recursive) for e in listing(d)]
    return [c.path for c in select(entries, age_minutes * 60, now).ready]


def clean_stale_tmps(directory: Path, clock: Callable[[], float] = time.time) -> list[Path]:
    """Delete the tmp files of dead slimmers (NAME.pcap.tmp, ...): pcapslim's own as soon as
    their writer is gone, others (unmarked) once older than 5 minutes."""
    removed = []
    now = clock()
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not name.endswith(TMP_SUFFIX) or not is_capture_name(name[: -len(TMP_SUFFIX)]):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # renamed into place or removed by its slimmer since the listing
            if stat.S_ISDIR(st.st_mode):
                continue
            taken = tmpowner.take_over(entry.path)  # a pcapslim tmp whose writer is gone
            if taken is True:
                removed.append(Path(entry.path))
            if taken is not None or now - st.st_mtime < STALE_TMP_SECONDS:
                continue
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # gone already, or not ours to remove: the file's own run will say
    return removed
