"""Slimming one file in place: the transaction of SPEC §5.

For a file D/name: honour its marker; create D/name.tmp exclusively before reading; write and
verify the slim copy; carry over mode, owner and times; refuse if the original changed; rename
atomically; fsync the directory; write the marker last. A failure at any step removes the tmp
and leaves the original as it was. Which files a run takes, and how many at once, is decided
elsewhere (pcapslim.eligibility, pcapslim.run); `Job` is what the run asks of every file.
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
from .eligibility import STALE_TMP_SECONDS, tmp_path
from .engine import process
from .errors import (
    Abandoned,
    PcapslimError,
    PlantedPathError,
    SourceChangedError,
    VerificationError,
)
from .follow import Growing
from .markers import PendingMap, fsync_dir, is_marked, marker_path, write_marker
from .results import (
    STATUS_ABANDONED,
    STATUS_BUSY,
    STATUS_FAIL,
    STATUS_MARKED,
    STATUS_OK,
    FileResult,
)
from .run import Options
from .shutdown import Shutdown
from .sinks import ThrottledSink
from .source import check_regular, open_capture
from .stats import SlimStats
from .throttle import CpuThrottle, IoThrottle


@dataclass
class Job:
    """What a run asks of every file: its options, and what this process made of them for the
    files it runs at once (pcapslim.run.build_job). Shared by all workers of one run."""

    options: Options = field(default_factory=Options)
    use_mmap: bool = True  # mapped or buffered reads, as the options say for this concurrency
    io: IoThrottle | None = None  # the run's throttles in this process
    cpu: CpuThrottle | None = None
    shutdown: Shutdown | None = None  # SIGTERM/SIGINT: abandon the file at its next window
    compress_threads: int = 0  # zstd worker threads beside the slimming ones
    clock: Callable[[], float] = field(default=time.time)


def slim_in_place(path: Path, job: Job) -> FileResult:
    """Run the contract of SPEC §5 on one file; never raises for a per-file problem."""
    name = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # never there, or gone before the run came to it
        return FileResult(name, STATUS_FAIL, error=f"{path}: no such file; nothing was changed")
    except OSError as e:
        return FileResult(name, STATUS_FAIL, error=_os_message(path, e))
    try:
        check_regular(path, st)
        if is_marked(path):
            return FileResult(name, STATUS_MARKED)
        if job.options.check_only:
            fd = open_capture(path, follow_symlinks=False)
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


def _reopen_for_reading(fd: int, path: Path) -> int:
    """A second, read-only descriptor of the file open on `fd` (the tmp being written): through
    /proc, so that whatever stands at `path` by now is never the one read."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /proc: by the path, checked to be the same file
        rfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        a, b = os.fstat(fd), os.fstat(rfd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            os.close(rfd)
            raise PlantedPathError(
                f"{path}: the tmp file was replaced while it was written"
            ) from None
        return rfd


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
        errno.EAGAIN: "another process holds a lease on it; it will be taken on a later run",
    }.get(e.errno or 0, "the original is untouched")
    return f"{where}: {reason} ({hint})"


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
        progress = self.job.options.on_progress
        if self.report and progress is not None:
            progress(self.path, done, total)


def _analyze_fd(path: str, fd: int, job: Job, acct: _Accounting) -> SlimStats:
    return process(
        path,
        fd,
        None,
        on_progress=acct,
        use_mmap=job.use_mmap,
        rules=job.options.rules,
        compress_level=job.options.compress_level,
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


def _slim_in_place(path: Path, job: Job) -> FileResult:
    name = str(path)
    tmp = tmp_path(path)
    tmp_fd = _create_tmp(path, job.clock)  # before the source is read (SPEC §5 step 2)
    if tmp_fd is None:
        return FileResult(name, STATUS_BUSY)
    tmp_gone = False
    src_fd = -1
    offsets: PendingMap | None = None
    trailing: _Trailing | None = None
    try:
        src_fd = open_capture(path, follow_symlinks=False)
        before = os.fstat(src_fd)
        if job.options.offset_map:
            offsets = PendingMap(path)
        trailing = _Trailing(path, tmp, tmp_fd, job)
        sink = ThrottledSink(tmp_fd, job.io, trailing.growing)
        stats = process(
            name,
            src_fd,
            sink,
            on_progress=_Accounting(name, job),
            use_mmap=job.use_mmap,
            rules=job.options.rules,
            offsets=offsets.writer if offsets is not None else None,
            compress_level=job.options.compress_level,
            compress_threads=job.compress_threads,
        )
        if stats.truncated == 0 and stats.out_bytes_uncompressed == stats.in_bytes_uncompressed:
            # nothing to cut (already slim, or nothing encrypted): the copy would equal the
            # original, which stays as it is; only the marker is written
            stats.out_bytes = stats.in_bytes
            trailing.abandon()
            trailing = None
            _not_abandoned(job, name)
            _check_unchanged(path, before)
            os.unlink(tmp)
            tmp_gone = True
            if offsets is not None:
                offsets.commit()
            os.close(src_fd)
            src_fd = -1
        else:
            verifying, trailing = trailing, None
            check = verifying.result()
            _verify(path, check, stats, os.fstat(tmp_fd).st_size)
            _carry_over(tmp_fd, before)
            _not_abandoned(job, name)
            _check_unchanged(path, before)
            if offsets is not None:
                offsets.commit()
            # 6. atomic rename, directory fsync
            os.rename(tmp, path)
            tmp_gone = True
            fsync_dir(path.parent)
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

    def __init__(self, path: Path, tmp: Path, tmp_fd: int, job: Job) -> None:
        self.growing = Growing()
        self._path, self._tmp, self._job = path, tmp, job
        self._fd = _reopen_for_reading(tmp_fd, tmp)
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
            rules=self._job.options.rules,
            follow=follow,
        )

    def result(self) -> SlimStats:
        """The writer is done: what the re-read found (its error, raised here)."""
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
            self._close()

    def abandon(self) -> None:
        """No result is wanted; the re-read ends. Safe after `result`, and twice."""
        self.growing.done()
        self._thread.join()
        self._close()

    def _close(self) -> None:
        # closed once: a second close could hit a descriptor another thread opened since
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _not_abandoned(job: Job, name: str) -> None:
    """Nothing is committed once the file was to be abandoned (its run may have stopped waiting
    for it and reported it so)."""
    if job.shutdown is not None:
        job.shutdown.check(name)


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
