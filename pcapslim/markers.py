"""Markers and the files beside them (SPEC §5 step 7): `D/.slim_markers/NAME` says NAME was
slimmed; `D/.slim_markers/NAME.offsets` holds its offset map (`--offset-map`).

The marker directory is created 0755 and its files 0644, owned by `sensor:sensor` when that
account exists (PCAPSLIM_MARKER_OWNER names another), else by the running user.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PlantedPathError

if TYPE_CHECKING:
    from .offsetmap import OffsetMapWriter

MARKER_DIR = ".slim_markers"
MARKER_OWNER = "sensor"  # markers belong to sensor:sensor when that user exists
MARKER_OWNER_ENV = "PCAPSLIM_MARKER_OWNER"  # another account name, for sensors that differ
MARKER_DIR_MODE = 0o755
MARKER_MODE = 0o644
TMP_SUFFIX = ".tmp"
# a planted FIFO never blocks an open: it fails at once (ENXIO), then the type check speaks
_PLANTED = (errno.ENXIO, errno.ELOOP, errno.EISDIR)  # a FIFO, a symlink, a directory
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def marker_path(path: Path) -> Path:
    return path.parent / MARKER_DIR / path.name


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


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _open_beside_marker(path: Path, name: str, mode: int = MARKER_MODE) -> int:
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
    try:
        fd = os.open(mdir / name, _WRITE_FLAGS, mode)
    except OSError as e:
        if e.errno not in _PLANTED:
            raise
        raise PlantedPathError(
            f"{path}: {mdir / name} exists but is not a regular file; remove it, then run again"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PlantedPathError(
                f"{path}: {mdir / name} exists but is not a regular file; remove it, then run again"
            )
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
    fd = _open_beside_marker(path, path.name)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent / MARKER_DIR)


def offset_map_path(path: Path) -> Path:
    """Where the offset map of a capture lives: beside its marker."""
    from .offsetmap import SUFFIX

    return marker_path(path).with_name(path.name + SUFFIX)


class PendingMap:
    """The offset map of a file being slimmed (--offset-map): streamed into
    D/.slim_markers/NAME.offsets.tmp and renamed into place before the capture is replaced, so a
    marked file always has the map of its last slimming."""

    def __init__(self, path: Path) -> None:
        from .offsetmap import OffsetMapWriter

        self.final = offset_map_path(path)
        self.tmp = self.final.with_name(self.final.name + TMP_SUFFIX)
        self.committed = False
        self._fh = os.fdopen(_open_beside_marker(path, self.tmp.name), "wb")
        self.writer: OffsetMapWriter = OffsetMapWriter(self._fh)

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
