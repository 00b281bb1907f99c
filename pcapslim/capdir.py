"""A capture directory held by a descriptor: every file-system operation inside it is made
relative to that descriptor, so that nothing the account owning the directory does inside it
(renaming, swapping in symlinks, FIFOs or other directories, at any moment) can lead an
operation of the slimmer, which runs as root, anywhere else.

The directory a run is given (`--dir`, or the directory of a `--single` file) is the operator's
and is opened as named. Everything below it belongs to the capture account: each subdirectory
of a recursive walk is opened one component at a time, O_DIRECTORY|O_NOFOLLOW, relative to the
one above; files are opened O_NOFOLLOW|O_NONBLOCK relative to their directory and checked by
their descriptor before anything is read; renames, unlinks and stats name a file relative to the
directory's descriptor; owners and modes change only through descriptors.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType

from .errors import NotRegularFileError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular(path: str | os.PathLike[str], st: os.stat_result) -> None:
    """A capture is a regular file; NotRegularFileError names what stands there instead."""
    if stat.S_ISREG(st.st_mode):
        return
    kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
    raise NotRegularFileError(
        f"{os.fspath(path)}: {kind}, not a regular file: only capture files are slimmed; "
        "nothing was changed"
    )


class CaptureDir:
    """An open directory: `path` is only what it is called in messages."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, root: Path, parts: Sequence[str] = ()) -> CaptureDir:
        """The operator's directory `root` (opened as named), then each of `parts` below it,
        one component at a time, never through a symlink."""
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        d = cls(fd, root)
        for part in parts:
            try:
                below = d.child(part)
            finally:
                d.close()
            d = below
        return d

    def child(self, name: str) -> CaptureDir:
        """The subdirectory `name`: a real directory, not a symlink to one."""
        _one_component(name)
        return CaptureDir(os.open(name, DIR_FLAGS, dir_fd=self.fd), self.path / name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> CaptureDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __str__(self) -> str:
        return str(self.path)

    # --- entries ----------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """Every entry with its lstat result; one gone between the listing and its stat is
        passed over."""
        out = []
        with os.scandir(self.fd) as it:
            for entry in it:
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return out

    def subdirectories(self) -> list[str]:
        """The names of the real subdirectories (no symlinks)."""
        return sorted(n for n, st in self.entries() if stat.S_ISDIR(st.st_mode))

    # --- files ------------------------------------------------------------------------------

    def open_read(self, name: str) -> int:
        """A read-only descriptor of the regular file `name`; NotRegularFileError for anything
        else, which is never opened (see `open_regular`)."""
        return self.open_regular(name, os.O_RDONLY)

    def open_regular(self, name: str, flags: int) -> int:
        """`name` opened with `flags` when it is a regular file (NotRegularFileError when it is
        not). Only a handle of the entry is taken first (O_PATH, without following a link:
        nothing of a FIFO, socket or device runs); checked, the file is opened through that
        handle, so what is opened is what was checked. Without /proc, opened O_NONBLOCK (a FIFO
        never blocks), checked by its descriptor, then switched to blocking."""
        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            check_regular(self.path / name, os.fstat(handle))
            try:
                return os.open(f"/proc/self/fd/{handle}", flags | os.O_CLOEXEC)
            except FileNotFoundError:
                pass  # no /proc here
        finally:
            os.close(handle)
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            check_regular(self.path / name, os.fstat(fd))
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create(self, name: str, mode: int = 0o600) -> int:
        """A new file `name`, opened for writing; FileExistsError when anything stands there."""
        return os.open(name, CREATE_FLAGS, mode, dir_fd=self.fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def mkdir(self, name: str, mode: int) -> None:
        os.mkdir(name, mode, dir_fd=self.fd)

    def fsync(self) -> None:
        """Make the directory's entries (a rename, a new file) durable."""
        os.fsync(self.fd)


def _one_component(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single path component: {name!r}")


@dataclass(frozen=True)
class Target:
    """A capture to slim: the file `name` in the directory `parts` below the operator's
    directory `root`. `path` is what it is called in reports."""

    root: Path
    parts: tuple[str, ...]
    name: str

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> Target:
        """A file named by the operator (`--single`, the library): its directory is theirs."""
        p = Path(path)
        return cls(p.parent, (), p.name)

    @cached_property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts, self.name)

    @contextmanager
    def directory(self) -> Iterator[CaptureDir]:
        d = CaptureDir.open(self.root, self.parts)
        try:
            yield d
        finally:
            d.close()

    def __str__(self) -> str:
        return str(self.path)
