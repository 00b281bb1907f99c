"""Slimming one file in place: the transaction of SPEC §5.

For a file D/name: honour its marker; create D/name.tmp exclusively before reading; write and
verify the slim copy; carry over owner, mode and times; refuse if the original changed; rename
atomically; fsync the directory; write the marker last. A failure at any step removes the tmp
and leaves the original as it was. Which files a run takes, and how many at once, is decided
elsewhere (pcapslim.eligibility, pcapslim.run); `Job` is what the run asks of every file.

Every operation in D is made relative to D's descriptor (pcapslim.capdir): the account owning
D may rename, swap or plant anything in it at any moment, and none of it leads an operation
outside D. The tmp gets its owner before its mode, and never the set-id bits.
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
from .capdir import CaptureDir, Target, check_regular
from .eligibility import STALE_TMP_SECONDS, tmp_name, tmp_path
from .engine import VERIFY_MAX_RECORDS, VERIFY_WINDOW_BYTES, WINDOW_BYTES, process
from .errors import (
    Abandoned,
    PcapslimError,
    PlantedPathError,
    SourceChangedError,
    VerificationError,
)
from .follow import Growing
from .helpers import helper
from .markers import MarkerDir, PendingMap, marker_path
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
from .stats import SlimStats
from .throttle import CpuThrottle, IoThrottle

# Files up to this size have their tmp re-read (SPEC §5, step 3) after it is written, in the
# writer's thread; larger ones while it is written, by a helper that follows the writer (which
# overlaps a large re-read with the write). A small file's re-read is short, and after the write
# it wakes no helper per file and per window: perf counted about half the futex time of 500 x
# 2 MiB in place with two workers; the wall time stayed within this machine's noise (0.98-0.99
# of the following re-read's, budget_check alternating both).
REREAD_AFTER_MAX = 8 << 20


@dataclass
class Job:
    """What a run asks of every file: its options, and what this process made of them for the
    files it runs at once (pcapslim.run.build_job). Shared by all workers of one run."""

    options: Options = field(default_factory=Options)
    use_mmap: bool = True  # mapped or buffered reads, as the options say for this concurrency
    io: IoThrottle | None = None  # the run's throttles in this process
    cpu: CpuThrottle | None = None
    shutdown: Shutdown | None = None  # SIGTERM/SIGINT: abandon the file at its next window
    window_bytes: int = WINDOW_BYTES  # input bytes per window (engine.window_for)
    # a core to spare for each file's helpers: mapping the next window in, copying and
    # compressing beside the index pass (with a core per file, they cost more than they save)
    spare_core: bool = True
    clock: Callable[[], float] = field(default=time.time)


def slim_in_place(target: Target | Path, job: Job) -> FileResult:
    """Run the contract of SPEC §5 on one file (a Path: a file of the operator's directory);
    never raises for a per-file problem."""
    started = start_in_place(target, job)
    return started if isinstance(started, FileResult) else started.finish()


def start_in_place(target: Target | Path, job: Job) -> FileResult | Commit:
    """Steps 1 to 3 of SPEC §5: up to the slim copy written (its re-read may still be running).
    What is left (the checks, the carry-over and its fsync, the rename, the directory's fsync,
    the marker) is the returned Commit's, whose `finish` must be called, on any thread: a
    worker hands it over and takes its next file meanwhile. A file that is done already (only
    checked, marked, busy, failed) has its result instead. Never raises for a per-file
    problem."""
    if not isinstance(target, Target):
        target = Target.of(target)
    path = target.path
    name = str(path)
    try:
        d = CaptureDir.open(target.root, target.parts)
    except OSError as e:
        return FileResult(name, STATUS_FAIL, error=_missing(path, e))
    started: FileResult | Commit | None = None
    try:
        started = _start_in(d, target.name, path, job)
        return started
    finally:
        if not isinstance(started, Commit):  # the commit closes the directory when it ends
            d.close()


def _missing(path: Path, e: OSError) -> str:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):  # never there, or gone before the run came
        return f"{path}: no such file; nothing was changed"
    if e.errno == errno.ELOOP:
        return f"{path}: a directory on its way is a symbolic link; nothing was changed"
    return _os_message(path, e)


def _start_in(d: CaptureDir, base: str, path: Path, job: Job) -> FileResult | Commit:
    name = str(path)
    try:
        st = d.lstat(base)
    except OSError as e:
        return FileResult(name, STATUS_FAIL, error=_missing(path, e))
    try:
        check_regular(path, st)
        markers = MarkerDir.existing(d)
        if markers is not None:
            try:
                if markers.is_marked(base):
                    return FileResult(name, STATUS_MARKED)
            finally:
                markers.close()
        if job.options.check_only:
            fd = d.open_read(base)
            try:
                return FileResult(
                    name, STATUS_OK, _analyze_fd(name, fd, job, _Accounting(name, job))
                )
            finally:
                os.close(fd)
        return Commit.start(d, base, path, job)
    except Exception as e:
        return _failed(path, e)


def _failed(path: Path, e: Exception) -> FileResult:
    """The result of a file whose transaction raised `e` (the original untouched)."""
    name = str(path)
    if isinstance(e, Abandoned):
        return FileResult(name, STATUS_ABANDONED, error=str(e))
    if isinstance(e, PcapslimError):
        return FileResult(name, STATUS_FAIL, error=str(e))
    if isinstance(e, OSError):
        return FileResult(name, STATUS_FAIL, error=_os_message(path, e))
    # a bug must not stop the other files of the run
    return FileResult(
        name,
        STATUS_FAIL,
        error=f"{path}: internal error {type(e).__name__}: {e}; the original is untouched "
        "(please report this)",
    )


def _reopen_for_reading(fd: int, d: CaptureDir, tmp: str) -> int:
    """A second, read-only descriptor of the file open on `fd` (the tmp being written): through
    /proc, so that whatever stands at its name by now is never the one read."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /proc: by its name, checked to be the same file
        rfd = d.open_read(tmp)
        a, b = os.fstat(fd), os.fstat(rfd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            os.close(rfd)
            raise PlantedPathError(
                f"{d.path / tmp}: the tmp file was replaced while it was written"
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


def _create_tmp(d: CaptureDir, base: str, path: Path, clock: Callable[[], float]) -> int | None:
    """Create D/name.tmp exclusively, taking over a stale one; None when another worker's fresh
    tmp is there."""
    tmp = tmp_name(base)
    for _ in range(3):
        try:
            fd = d.create(tmp)
        except FileExistsError:
            try:
                st = d.lstat(tmp)
            except FileNotFoundError:
                continue  # its owner just renamed or removed it: try again
            if not stat.S_ISREG(st.st_mode):  # workers only ever create regular files
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise PlantedPathError(
                    f"{path}: {tmp_path(path)} is {kind}; remove it so the file can be slimmed"
                ) from None
            taken = tmpowner.take_over(d, tmp)  # a pcapslim tmp: its lock says if it lives
            if taken is False:
                return None
            if taken is None:  # not marked: another tool's, or no locks here: the age rule
                if clock() - st.st_mtime < STALE_TMP_SECONDS:
                    return None
                d.unlink(tmp)  # stale: a dead worker's
            continue
        tmpowner.claim(fd)  # locked and marked as ours while we write it
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
        window_bytes=job.window_bytes,
        spare_core=job.spare_core,
        rules=job.options.rules,
        compress_level=job.options.compress_level,
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


class Commit:
    """One file's transaction between its slim copy written (steps 1 to 3 of SPEC §5, done by
    `start`) and its end (`finish`: the rest of it, then the directory is let go of)."""

    before: os.stat_result  # the original's, as `start` opened it

    def __init__(self, d: CaptureDir, base: str, path: Path, job: Job, tmp_fd: int) -> None:
        self.d, self.base, self.path, self.job = d, base, path, job
        self.tmp_fd = tmp_fd
        self.tmp_gone = False
        self.src_fd = -1
        self.offsets: PendingMap | None = None
        self.trailing: _Trailing | None = None
        self.stats = SlimStats(str(path))

    @classmethod
    def start(cls, d: CaptureDir, base: str, path: Path, job: Job) -> FileResult | Commit:
        name = str(path)
        tmp_fd = _create_tmp(d, base, path, job.clock)  # before the source is read (step 2)
        if tmp_fd is None:
            return FileResult(name, STATUS_BUSY)
        self = cls(d, base, path, job, tmp_fd)
        try:
            self.src_fd = d.open_read(base)
            self.before = os.fstat(self.src_fd)
            if job.options.offset_map:
                self.offsets = PendingMap(d, base)
            self.trailing = _Trailing(
                path,
                _reopen_for_reading(tmp_fd, d, tmp_name(base)),
                job,
                follow=self.before.st_size > REREAD_AFTER_MAX,
            )
            self.stats = process(
                name,
                self.src_fd,
                ThrottledSink(tmp_fd, job.io, self.trailing.growing),
                on_progress=_Accounting(name, job),
                use_mmap=job.use_mmap,
                window_bytes=job.window_bytes,
                spare_core=job.spare_core,
                rules=job.options.rules,
                offsets=self.offsets.writer if self.offsets is not None else None,
                compress_level=job.options.compress_level,
            )
            if self.trailing.growing is not None:
                self.trailing.growing.done()  # the re-read ends at what was written
        except BaseException:
            self._undo()
            raise
        return self

    def finish(self) -> FileResult:
        """Steps 3 to 7: the re-read's verdict, carry-over and fsync, the change check, the
        rename and the directory's fsync, the marker. Never raises for a per-file problem."""
        try:
            try:
                self._commit()
            except Exception as e:
                return _failed(self.path, e)
            return self._mark()
        finally:
            self.d.close()

    def _commit(self) -> None:
        d, base, path, job, stats = self.d, self.base, self.path, self.job, self.stats
        name = str(path)
        try:
            if stats.truncated == 0 and stats.out_bytes_uncompressed == stats.in_bytes_uncompressed:
                # nothing to cut (already slim, or nothing encrypted): the copy would equal the
                # original, which stays as it is; only the marker is written
                stats.out_bytes = stats.in_bytes
                assert self.trailing is not None
                self.trailing.abandon()
                self.trailing = None
                _not_abandoned(job, name)
                _check_unchanged(d, base, path, self.before)
                d.unlink(tmp_name(base))
                self.tmp_gone = True
                if self.offsets is not None:
                    self.offsets.commit()
                os.close(self.src_fd)
                self.src_fd = -1
            else:
                verifying, self.trailing = self.trailing, None
                assert verifying is not None
                check = verifying.result()
                _verify(path, check, stats, os.fstat(self.tmp_fd).st_size)
                _carry_over(self.tmp_fd, self.before)
                _not_abandoned(job, name)
                _check_unchanged(d, base, path, self.before)
                if self.offsets is not None:
                    self.offsets.commit()
                # 6. atomic rename, directory fsync
                d.rename(tmp_name(base), base)
                self.tmp_gone = True
                d.fsync()
        except BaseException:
            self._undo()
            raise
        self._close()
        if self.src_fd >= 0:
            _releaser.release(self.src_fd)  # the replaced original is freed in the background
            self.src_fd = -1

    def _mark(self) -> FileResult:
        """7. The marker is the last write."""
        name = str(self.path)
        try:
            markers = MarkerDir.make(self.d)
            try:
                markers.write(self.base, durable=self.job.options.offset_map)
            finally:
                markers.close()
        except (OSError, PcapslimError) as e:
            detail = (
                str(e) if isinstance(e, PcapslimError) else _os_message(marker_path(self.path), e)
            )
            return FileResult(
                name,
                STATUS_FAIL,
                self.stats,
                error=f"slimmed, but the marker could not be written: {detail}",
            )
        return FileResult(name, STATUS_OK, self.stats)

    def _undo(self) -> None:
        """The transaction failed: the re-read ends, the tmp (and a pending map) goes, the
        original stays as it is."""
        if self.trailing is not None:
            self.trailing.abandon()
            self.trailing = None
        if self.offsets is not None and not self.tmp_gone:
            self.offsets.discard()
            self.offsets = None
        if not self.tmp_gone:
            try:
                self.d.unlink(tmp_name(self.base))
            except FileNotFoundError:
                pass
            self.tmp_gone = True
        if self.src_fd >= 0:
            os.close(self.src_fd)
            self.src_fd = -1
        self._close()

    def _close(self) -> None:
        if self.tmp_fd >= 0:
            fd, self.tmp_fd = self.tmp_fd, -1
            os.close(fd)
        if self.offsets is not None:
            offsets, self.offsets = self.offsets, None
            offsets.close()


class _Trailing:
    """3. The verification re-read, following the tmp while it is written: a second thread
    reads (through the decompressor, for a compressed file) what the writer has put in the
    file so far and counts its records; the writer's end is its end. Re-reading after the
    write would cost a second pass over the slim copy (a tenth of a second per GiB of input,
    more when it must be decompressed). When the writer had to start the file again, the
    re-read is made afresh after the write."""

    def __init__(self, path: Path, read_fd: int, job: Job, follow: bool = True) -> None:
        """`read_fd`: a descriptor of the tmp for reading, this object's to close. Without
        `follow` (a small file: see REREAD_AFTER_MAX), the re-read is made after the write,
        in the writer's thread."""
        self.growing: Growing | None = Growing() if follow else None
        self._path, self._job = path, job
        self._fd = read_fd
        self._result: SlimStats | None = None
        self._error: BaseException | None = None
        self._done: Future[None] | None = helper("verify").submit(self._run) if follow else None

    def _run(self) -> None:
        try:
            assert self.growing is not None
            self._result = self._count(self.growing)
        except BaseException as e:  # raised in the writer's thread by `result`
            self._error = e

    def _count(self, follow: Growing | None) -> SlimStats:
        os.lseek(self._fd, 0, os.SEEK_SET)
        return process(
            str(tmp_path(self._path)),
            self._fd,
            None,
            on_progress=_Accounting(str(self._path), self._job, report=False),
            use_mmap=follow is None and self._job.use_mmap,
            window_bytes=VERIFY_WINDOW_BYTES,
            max_records=VERIFY_MAX_RECORDS,
            decide=False,
            rules=self._job.options.rules,
            follow=follow,
        )

    def result(self) -> SlimStats:
        """The writer is done: what the re-read found (its error, raised here)."""
        self._stop()
        try:
            if self.growing is None or self.growing.generation:
                return self._count(None)
            if self._error is not None:
                raise self._error
            assert self._result is not None
            return self._result
        finally:
            self._close()

    def abandon(self) -> None:
        """No result is wanted; the re-read ends. Safe after `result`, and twice."""
        self._stop()
        self._close()

    def _stop(self) -> None:
        """The writer is done: a following re-read reads to its end and ends."""
        if self.growing is not None:
            self.growing.done()
        if self._done is not None:
            self._done.result()

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
    """4. The original's owner and group (when permitted), then its mode without the set-id
    bits (a root-owned set-id tmp never exists, and a capture has no use for them), and its
    times; then fsync."""
    try:
        os.fchown(tmp_fd, before.st_uid, before.st_gid)
    except PermissionError:
        pass
    os.fchmod(tmp_fd, stat.S_IMODE(before.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    os.utime(tmp_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.fsync(tmp_fd)


def _check_unchanged(d: CaptureDir, base: str, path: Path, before: os.stat_result) -> None:
    """5. The original must be the same file, with the same size and mtime, as when read."""
    try:
        now = d.lstat(base)
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
