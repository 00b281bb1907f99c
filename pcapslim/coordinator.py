"""Slimming files in place: the coordination contract of SPEC §5.

For each file D/name: honour D/.slim_markers/name; create D/name.tmp exclusively before reading;
write and verify the slim copy; carry over mode, owner and times; refuse if the original changed;
rename atomically; fsync the directory; write the marker last. A failure at any step removes
the tmp and leaves the original as it was.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import tmpowner
from .compression import Growing
from .engine import FdSink, process
from .errors import (
    Abandoned,
    PcapslimError,
    PlantedPathError,
    SourceChangedError,
    VerificationError,
)
from .inuse import being_written
from .offsetmap import OffsetMapWriter, map_path
from .shutdown import Shutdown
from .stats import SlimStats
from .throttle import CpuThrottle, IoThrottle

TMP_SUFFIX = ".tmp"
MARKER_DIR = ".slim_markers"
STALE_TMP_SECONDS = 300  # a tmp older than this belongs to a dead worker
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz", ".pcap.zst", ".pcapng.zst")
MARKER_OWNER = "sensor"  # markers belong to sensor:sensor when that user exists
MARKER_OWNER_ENV = "PCAPSLIM_MARKER_OWNER"  # another account name, for sensors that differ
MARKER_DIR_MODE = 0o755
MARKER_MODE = 0o644

STATUS_OK = "ok"
STATUS_MARKED = "skipped_marker"
STATUS_BUSY = "skipped_busy"
STATUS_FAIL = "fail"
STATUS_ABANDONED = "abandoned"  # a stop was requested before it was finished
STATUSES = (STATUS_OK, STATUS_MARKED, STATUS_BUSY, STATUS_FAIL, STATUS_ABANDONED)

FileProgress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)


@dataclass
class FileResult:
    path: str
    status: str
    stats: SlimStats | None = None
    error: str | None = None
    worker: str = ""  # the Dask worker that slimmed it (cluster runs)


@dataclass
class Job:
    """How files are processed: shared by all workers of one run."""

    check_only: bool = False
    use_mmap: bool = True
    rules: str = "compatible"  # or "forensic" (SPEC §8)
    io: IoThrottle | None = None
    cpu: CpuThrottle | None = None
    on_progress: FileProgress | None = None
    clock: Callable[[], float] = field(default=time.time)
    shutdown: Shutdown | None = None  # SIGTERM/SIGINT: abandon the file at its next window
    offset_map: bool = False  # write each file's offset map beside its marker
    compress_level: int | None = None  # compressed files: the codec's level (None: default)
    compress_threads: int = 0  # zstd worker threads beside the slimming ones


def marker_path(path: Path) -> Path:
    return path.parent / MARKER_DIR / path.name


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def is_marked(path: Path) -> bool:
    """True when the marker is a regular file; something else planted there is an error."""
    marker = marker_path(path)
    try:
        st = os.lstat(marker)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise PlantedPathError(
            f"{path}: {marker.parent} is not a directory; remove it so markers can be written"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise PlantedPathError(
            f"{path}: {marker} exists but is not a regular file; remove it, then run again"
        )
    return True


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


def pending_files(
    directory: Path,
    age_minutes: float,
    clock: Callable[[], float] = time.time,
    recursive: bool = False,
) -> list[Path]:
    """Captures in `directory` (with `recursive`, in the tree below it; no symlinks; old
    enough), oldest first; files with a marker, and files some process still has open for
    writing, are left out."""
    now = clock()
    found: list[tuple[int, Path]] = []
    for d in directories(directory, recursive):
        with os.scandir(d) as it:
            for entry in it:
                if not entry.name.endswith(CAPTURE_SUFFIXES) or not entry.is_file(
                    follow_symlinks=False
                ):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the directory was listed
                if age_minutes and now - st.st_mtime < age_minutes * 60:
                    continue
                found.append((st.st_mtime_ns, d / entry.name))
    found.sort()
    out = []
    for _, p in found:
        try:
            if is_marked(p):
                continue
        except PlantedPathError:
            pass  # reported when the file itself is processed
        out.append(p)
    busy = being_written(out)
    return [p for p in out if p not in busy]


def clean_stale_tmps(directory: Path, clock: Callable[[], float] = time.time) -> list[Path]:
    """Delete the tmp files of dead slimmers (NAME.pcap.tmp, ...): pcapslim's own as soon as
    their writer is gone, others (unmarked) once older than 5 minutes."""
    removed = []
    now = clock()
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not name.endswith(TMP_SUFFIX) or not name[: -len(TMP_SUFFIX)].endswith(
                CAPTURE_SUFFIXES
            ):
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_tmp(path: Path, clock: Callable[[], float]) -> int | None:
    """Open D/name.tmp exclusively, taking over a stale one; None when another worker's fresh
    tmp is there."""
    tmp = tmp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            try:
                st = os.lstat(tmp)
            except FileNotFoundError:
                continue  # its owner just renamed or removed it: try again
            if not stat.S_ISREG(st.st_mode):  # workers only ever create regular files
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise PlantedPathError(
                    f"{path}: {tmp} is {kind}; remove it so the file can be slimmed"
                ) from None
            taken = tmpowner.take_over(tmp)  # a pcapslim tmp: its lock says if its writer lives
            if taken is False:
                return None
            if taken is None:  # not marked: another tool's, or no locks here: the age rule
                if clock() - st.st_mtime < STALE_TMP_SECONDS:
                    return None
                os.unlink(tmp)  # stale: a dead worker's
            continue
        tmpowner.claim(tmp, fd)  # locked and marked as ours while we write it
        return fd
    return None


def _owner_ids() -> tuple[int, int] | None:
    import grp
    import pwd

    owner = os.environ.get(MARKER_OWNER_ENV) or MARKER_OWNER
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        return None
    try:
        gid = grp.getgrnam(owner).gr_gid
    except KeyError:
        gid = user.pw_gid
    return user.pw_uid, gid


def _marker_file(path: Path, name: str, mode: int = MARKER_MODE) -> int:
    """Open (create) D/.slim_markers/NAME for writing, the directory created 0755 when needed;
    both belong to sensor:sensor when that user exists (and we may give them away)."""
    mdir = path.parent / MARKER_DIR
    try:
        os.mkdir(mdir, MARKER_DIR_MODE)
        os.chmod(mdir, MARKER_DIR_MODE)
        created_dir = True
    except FileExistsError:
        created_dir = False
    st = os.lstat(mdir)
    if not stat.S_ISDIR(st.st_mode):
        raise PlantedPathError(
            f"{path}: {mdir} is not a directory; remove it so markers can be written"
        )
    fd = os.open(
        mdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode
    )
    try:
        os.fchmod(fd, mode)
        owner = _owner_ids()
        if owner is not None:
            try:
                os.fchown(fd, *owner)
                if created_dir:
                    os.chown(mdir, *owner)
            except PermissionError:
                pass  # not root: the marker stays the running user's
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_marker(path: Path) -> None:
    """D/.slim_markers/name: directory 0755, file 0644, sensor:sensor when that user exists."""
    fd = _marker_file(path, path.name)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent / MARKER_DIR)


class _PendingMap:
    """The offset map of a file being slimmed (--offset-map): streamed into
    D/.slim_markers/NAME.offsets.tmp and renamed into place before the capture is replaced, so a
    marked file always has the map of its last slimming."""

    def __init__(self, path: Path) -> None:
        self.final = Path(map_path(marker_path(path)))
        self.tmp = self.final.with_name(self.final.name + TMP_SUFFIX)
        self.committed = False
        self._fh = os.fdopen(_marker_file(path, self.tmp.name), "wb")
        self.writer = OffsetMapWriter(self._fh)

    def commit(self) -> None:
        self.writer.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.rename(self.tmp, self.final)
        self.committed = True

    def discard(self) -> None:
        """The capture was not replaced: no map of a slimming that did not happen."""
        self._fh.close()
        for p in (self.tmp, self.final) if self.committed else (self.tmp,):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


class _Accounting:
    """Turns the engine's per-window progress into throttle charges and progress reports."""

    def __init__(self, path: str, job: Job, report: bool = True) -> None:
        self.path = path
        self.job = job
        self.last = 0
        self.report = report  # the verification pass is throttled but not shown

    def __call__(self, done: int, total: int) -> None:
        if self.job.shutdown is not None:
            self.job.shutdown.check(self.path)
        if self.job.io is not None:
            self.job.io.account(done - self.last)
        if self.job.cpu is not None:
            self.job.cpu.checkpoint()
        self.last = done
        if self.report and self.job.on_progress is not None:
            self.job.on_progress(self.path, done, total)


class _ThrottledSink(FdSink):
    def __init__(self, fd: int, io: IoThrottle | None, growing: Growing | None = None) -> None:
        super().__init__(fd, writeback=True, growing=growing)  # fsynced before the rename
        self.io = io

    def write(self, data):  # type: ignore[no-untyped-def]
        super().write(data)
        if self.io is not None:
            self.io.account(len(data))


def _analyze_fd(path: str, fd: int, job: Job, acct: _Accounting) -> SlimStats:
    return process(
        path,
        fd,
        None,
        on_progress=acct,
        use_mmap=job.use_mmap,
        rules=job.rules,
        compress_level=job.compress_level,
        compress_threads=job.compress_threads,
    )


class _Releaser:
    """Closes the replaced originals on a background thread. Renaming over a file drops its last
    link; while a descriptor stays open the file system frees its blocks only at that close,
    which for a large capture takes a while (about 1.4 s per GiB on ext4 here). Closing later
    lets the next file start meanwhile; `drain` waits for all of it."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: list[Future[None]] = []

    def release(self, fd: int) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, "pcapslim-release")
            self._pending.append(self._pool.submit(os.close, fd))

    def drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for f in pending:
            f.result()


_releaser = _Releaser()


def drain() -> None:
    """Wait until every replaced original has been let go of (call before exiting)."""
    _releaser.drain()


def slim_in_place(path: Path, job: Job) -> FileResult:
    """Run the contract of SPEC §5 on one file; never raises for a per-file problem."""
    name = str(path)
    try:
        if is_marked(path):
            return FileResult(name, STATUS_MARKED)
        if job.check_only:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                return FileResult(
                    name, STATUS_OK, _analyze_fd(name, fd, job, _Accounting(name, job))
                )
            finally:
                os.close(fd)
        return _slim_in_place(path, job)
    except Abandoned as e:
        return FileResult(name, STATUS_ABANDONED, error=str(e))
    except PcapslimError as e:
        return FileResult(name, STATUS_FAIL, error=str(e))
    except OSError as e:
        return FileResult(name, STATUS_FAIL, error=_os_message(path, e))
    except Exception as e:  # a bug must not stop the other files of the run
        return FileResult(
            name,
            STATUS_FAIL,
            error=f"{path}: internal error {type(e).__name__}: {e}; the original is untouched "
            "(please report this)",
        )


def _os_message(path: Path, e: OSError) -> str:
    where = e.filename if e.filename else path
    reason = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "free some space; the original is untouched",
        errno.EDQUOT: "the disk quota is exhausted; the original is untouched",
        errno.EACCES: "check the permissions; the original is untouched",
        errno.EPERM: "check the permissions; the original is untouched",
        errno.EROFS: "the file system is read-only; the original is untouched",
        errno.ELOOP: "a symlink stands where a regular file must be; the original is untouched",
        errno.ENOENT: "it disappeared during the run",
    }.get(e.errno or 0, "the original is untouched")
    return f"{where}: {reason} ({hint})"


def _slim_in_place(path: Path, job: Job) -> FileResult:
    name = str(path)
    tmp = tmp_path(path)
    tmp_fd = _create_tmp(path, job.clock)  # before the source is read (SPEC §5 step 2)
    if tmp_fd is None:
        return FileResult(name, STATUS_BUSY)
    tmp_gone = False
    src_fd = -1
    offsets: _PendingMap | None = None
    trailing: _Trailing | None = None
    try:
        src_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        before = os.fstat(src_fd)
        if not stat.S_ISREG(before.st_mode):
            raise PcapslimError(f"{path}: not a regular file; nothing was changed")
        if job.offset_map:
            offsets = _PendingMap(path)
        trailing = _Trailing(path, tmp, job)
        sink = _ThrottledSink(tmp_fd, job.io, trailing.growing)
        stats = process(
            name,
            src_fd,
            sink,
            on_progress=_Accounting(name, job),
            use_mmap=job.use_mmap,
            rules=job.rules,
            offsets=offsets.writer if offsets is not None else None,
            compress_level=job.compress_level,
            compress_threads=job.compress_threads,
        )
        if stats.truncated == 0 and stats.out_bytes_uncompressed == stats.in_bytes_uncompressed:
            # nothing to cut (already slim, or nothing encrypted): the copy would equal the
            # original, which stays as it is; only the marker is written
            stats.out_bytes = stats.in_bytes
            trailing.abandon()
            trailing = None
            _check_unchanged(path, before)
            os.unlink(tmp)
            tmp_gone = True
            if offsets is not None:
                offsets.commit()
            os.close(src_fd)
            src_fd = -1
        else:
            check = trailing.result()
            trailing = None
            _verify(path, check, stats, os.fstat(tmp_fd).st_size)
            _carry_over(tmp_fd, before)
            _check_unchanged(path, before)
            if offsets is not None:
                offsets.commit()
            # 6. atomic rename, directory fsync
            os.rename(tmp, path)
            tmp_gone = True
            _fsync_dir(path.parent)
    except BaseException:
        if trailing is not None:
            trailing.abandon()
        if offsets is not None and not tmp_gone:
            offsets.discard()
        if not tmp_gone:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if src_fd >= 0:
            os.close(src_fd)
        raise
    finally:
        os.close(tmp_fd)
    if src_fd >= 0:
        _releaser.release(src_fd)  # the replaced original is freed in the background
    # 7. the marker is the last write
    try:
        write_marker(path)
    except (OSError, PcapslimError) as e:
        detail = str(e) if isinstance(e, PcapslimError) else _os_message(marker_path(path), e)
        return FileResult(
            name,
            STATUS_FAIL,
            stats,
            error=f"slimmed, but the marker could not be written: {detail}",
        )
    return FileResult(name, STATUS_OK, stats)


class _Trailing:
    """3. The verification re-read, following the tmp while it is written: a second thread
    reads (through the decompressor, for a compressed file) what the writer has put in the
    file so far and counts its records; the writer's end is its end. Re-reading after the
    write would cost a second pass over the slim copy (a tenth of a second per GiB of input,
    more when it must be decompressed). When the writer had to start the file again, the
    re-read is made afresh after the write."""

    def __init__(self, path: Path, tmp: Path, job: Job) -> None:
        self.growing = Growing()
        self._path, self._tmp, self._job = path, tmp, job
        self._fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._result: SlimStats | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pcapslim-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._count(self.growing)
        except BaseException as e:  # raised in the writer's thread by `result`
            self._error = e

    def _count(self, follow: Growing | None) -> SlimStats:
        os.lseek(self._fd, 0, os.SEEK_SET)
        return process(
            str(self._tmp),
            self._fd,
            None,
            on_progress=_Accounting(str(self._path), self._job, report=False),
            use_mmap=follow is None and self._job.use_mmap,
            decide=False,
            rules=self._job.rules,
            follow=follow,
        )

    def result(self) -> SlimStats:
        """The writer is done: what the re-read found."""
        self.growing.done()
        self._thread.join()
        try:
            if self.growing.generation:
                return self._count(None)
            if self._error is not None:
                raise self._error
            assert self._result is not None
            return self._result
        finally:
            os.close(self._fd)

    def abandon(self) -> None:
        self.growing.done()
        self._thread.join()
        os.close(self._fd)


def _verify(path: Path, check: SlimStats, stats: SlimStats, size_now: int) -> None:
    """3. The re-read tmp holds exactly as many records (and bytes) as were written, and the
    file is still that long."""
    if size_now != stats.out_bytes:
        raise VerificationError(
            f"{path}: the slim copy is {size_now} bytes on disk, {stats.out_bytes} were "
            "written; the original was kept"
        )
    got = (check.records, check.in_pkts, check.in_bytes, check.in_bytes_uncompressed)
    want = (stats.records, stats.in_pkts, stats.out_bytes, stats.out_bytes_uncompressed)
    if got != want:
        raise VerificationError(
            f"{path}: the slim copy re-read as {check.in_pkts} packets / {check.records} "
            f"records / {check.in_bytes} bytes ({check.in_bytes_uncompressed} uncompressed), "
            f"expected {stats.in_pkts} / {stats.records} / {stats.out_bytes} "
            f"({stats.out_bytes_uncompressed}); the original was kept"
        )


def _carry_over(tmp_fd: int, before: os.stat_result) -> None:
    """4. The original's mode, owner and group (when permitted) and times; then fsync."""
    os.fchmod(tmp_fd, stat.S_IMODE(before.st_mode))
    try:
        os.fchown(tmp_fd, before.st_uid, before.st_gid)
    except PermissionError:
        pass
    os.utime(tmp_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.fsync(tmp_fd)


def _check_unchanged(path: Path, before: os.stat_result) -> None:
    """5. The original must be the same file, with the same size and mtime, as when read."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise SourceChangedError(
            f"{path}: the file was removed while it was being slimmed"
        ) from None
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    ):
        raise SourceChangedError(
            f"{path}: the file changed while it was being read (size or mtime); it was left "
            "as it is and will be taken again on a later run"
        )
