"""Markers and the files beside them (SPEC §5 step 7): `D/.slim_markers/NAME` says NAME was
slimmed; `D/.slim_markers/NAME.offsets` holds its offset map (`--offset-map`).

The marker directory is created 0755 and its files 0644, owned by `sensor:sensor` when that
account exists (PCAPSLIM_MARKER_OWNER names another), else by the running user. It is used only
through its descriptor, opened O_DIRECTORY|O_NOFOLLOW relative to the capture directory's, and
adopted only when it is a real directory owned by the running user, the marker account or the
capture directory's owner; anything else standing there is reported, not followed. Its files
are created O_EXCL after whatever stood at their name is removed, and given their owner, then
their mode, through their descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .capdir import DIR_FLAGS, CaptureDir
from .errors import PlantedPathError

if TYPE_CHECKING:
    from .offsetmap import OffsetMapWriter

MARKER_DIR = ".slim_markers"
MARKER_OWNER = "sensor"  # markers belong to sensor:sensor when that user exists
MARKER_OWNER_ENV = "PCAPSLIM_MARKER_OWNER"  # another account name, for sensors that differ
MARKER_DIR_MODE = 0o755
MARKER_MODE = 0o644
TMP_SUFFIX = ".tmp"
OFFSETS_SUFFIX = ".offsets"


def marker_path(path: Path) -> Path:
    """What the marker of the capture `path` is called (in messages and for the operator)."""
    return path.parent / MARKER_DIR / path.name


OWNER_LOOKUP_SECONDS = 60.0  # how long an account lookup is reused (a service runs for weeks)
_owner_cache: dict[str, tuple[float, tuple[int, int] | None]] = {}


def owner_ids() -> tuple[int, int] | None:
    """The marker account's uid and gid, or None when there is no such account. Looked up at
    most once a minute: a lookup reads the account databases (0.1 ms, twice per file)."""
    owner = os.environ.get(MARKER_OWNER_ENV) or MARKER_OWNER
    now = time.monotonic()
    cached = _owner_cache.get(owner)
    if cached is not None and now - cached[0] < OWNER_LOOKUP_SECONDS:
        return cached[1]
    ids = _lookup(owner)
    _owner_cache[owner] = (now, ids)
    return ids


def forget_owner() -> None:
    """Look the account up afresh (a new run: the account may have been made meanwhile)."""
    _owner_cache.clear()


def _lookup(owner: str) -> tuple[int, int] | None:
    import grp
    import pwd

    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        return None
    try:
        gid = grp.getgrnam(owner).gr_gid
    except KeyError:
        gid = user.pw_gid
    return user.pw_uid, gid


class MarkerDir:
    """`D/.slim_markers`, held by its descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def existing(cls, d: CaptureDir) -> MarkerDir | None:
        """The marker directory of `d`, or None when there is none. PlantedPathError when
        something else stands there."""
        try:
            fd = os.open(MARKER_DIR, DIR_FLAGS, dir_fd=d.fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PlantedPathError(
                    f"{d.path / MARKER_DIR} is not a directory; remove it so markers can be written"
                ) from None
            raise
        return cls._adopted(fd, d)

    @classmethod
    def make(cls, d: CaptureDir) -> MarkerDir:
        """The marker directory of `d`, created (0755, the marker account's) when missing."""
        try:
            d.mkdir(MARKER_DIR, MARKER_DIR_MODE)
            made = True
        except FileExistsError:
            made = False
        m = cls.existing(d)
        if m is None:  # removed as soon as made: whoever does that gets no marker
            raise PlantedPathError(f"{d.path / MARKER_DIR} disappeared as it was made")
        # made here, and still the one made here (another user's swapped in is not changed)
        if made and os.fstat(m.fd).st_uid == os.geteuid():
            owner = owner_ids()
            try:
                if owner is not None:
                    os.fchown(m.fd, *owner)
                os.fchmod(m.fd, MARKER_DIR_MODE)
            except PermissionError:
                pass  # not root: the directory stays the running user's
        return m

    @classmethod
    def _adopted(cls, fd: int, d: CaptureDir) -> MarkerDir:
        path = d.path / MARKER_DIR
        try:
            st = os.fstat(fd)
            owner = owner_ids()
            expected = {os.geteuid(), os.fstat(d.fd).st_uid} | ({owner[0]} if owner else set())
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in expected:
                raise PlantedPathError(
                    f"{path} belongs to uid {st.st_uid}: neither the running user, the marker "
                    "account nor the directory's owner; remove it so markers can be written"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def is_marked(self, name: str) -> bool:
        """True when the marker is a regular file; something else planted there is an error."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise PlantedPathError(
                f"{self.path / name} exists but is not a regular file; remove it, then run again"
            )
        return True

    def create(self, name: str, mode: int = MARKER_MODE) -> int:
        """A new file `name` for writing, whatever stood there removed first (a directory
        cannot be: it is reported); owned by the marker account when there is one (and this
        user may give it away), then given its mode."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise PlantedPathError(
                f"{self.path / name} exists but is not a regular file; remove it, then run again"
            ) from None
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=self.fd)  # fmt: skip
        except FileExistsError:  # put back between the removal and the creation
            raise PlantedPathError(
                f"{self.path / name} keeps being put back; remove what stands there"
            ) from None
        try:
            owner = owner_ids()
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass  # not root: the file stays the running user's
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, name: str, durable: bool) -> None:
        """The marker of `name` (an empty file: only its directory entry matters), its entry
        made durable when asked. A marker lost to a power cut only has its capture slimmed
        again, to the same bytes; with an offset map it must not be lost (a second slimming
        would replace the map with one of the slim copy onto itself)."""
        os.close(self.create(name))
        if durable:
            os.fsync(self.fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass


def is_marked(d: CaptureDir, name: str) -> bool:
    """Whether `name` of `d` has a marker (PlantedPathError when something else stands at the
    marker or the marker directory)."""
    m = MarkerDir.existing(d)
    if m is None:
        return False
    try:
        return m.is_marked(name)
    finally:
        m.close()


class PendingMap:
    """The offset map of a file being slimmed (--offset-map): streamed into
    D/.slim_markers/NAME.offsets.tmp and renamed into place before the capture is replaced, so a
    marked file always has the map of its last slimming."""

    def __init__(self, d: CaptureDir, name: str) -> None:
        from .offsetmap import OffsetMapWriter

        self.final = name + OFFSETS_SUFFIX
        self.tmp = self.final + TMP_SUFFIX
        self.committed = False
        self._markers = MarkerDir.make(d)
        try:
            self._fh = os.fdopen(self._markers.create(self.tmp), "wb")
        except BaseException:
            self._markers.close()
            raise
        self.writer: OffsetMapWriter = OffsetMapWriter(self._fh)

    def commit(self) -> None:
        self.writer.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._markers.rename(self.tmp, self.final)
        os.fsync(self._markers.fd)  # the map's name on disk before the marker can be
        self.committed = True

    def discard(self) -> None:
        """The capture was not replaced: no map of a slimming that did not happen."""
        self._fh.close()
        for name in (self.tmp, self.final) if self.committed else (self.tmp,):
            self._markers.unlink(name)
        self.close()

    def close(self) -> None:
        self._markers.close()
