"""Whose is a tmp file, and is its writer alive?

A pcapslim process that creates `D/name.tmp` holds an open-file-description lock on it
(`F_OFD_SETLK`: the kernel drops it when the process dies; it works on local file systems and
NFSv4, and, unlike a classic POSIX lock, neither another thread of the same process nor the
closing of another descriptor of the file disturbs it) and marks it as its own with the
extended attribute `user.pcapslim.owner` ("host boot-id pid"). So another slimmer, on this host
or another (Dask workers on shared storage), can tell:

- marked and locked: a live slimmer's; the file is busy;
- marked and not locked: its writer died (a killed worker): taken over at once;
- not marked (the native tool's tmp, which takes no lock, or a file system without extended
  attributes or locks): the age rule of SPEC §5 decides, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from functools import cache
from typing import TYPE_CHECKING

from .errors import PcapslimError

if TYPE_CHECKING:
    from .capdir import CaptureDir

OWNER_XATTR = "user.pcapslim.owner"
_LOCK_UNSUPPORTED = (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_F_WRLCK, _SEEK_SET = 1, 0
# struct flock on Linux: short type, short whence, off_t start, off_t len, pid_t pid (0: OFD)
_WHOLE_FILE = struct.pack("hhxxxxqqixxxx", _F_WRLCK, _SEEK_SET, 0, 0, 0)
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


@cache
def owner_mark() -> bytes:
    """This process: host, boot id, pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = "-"
    return f"{socket.gethostname()} {boot} {os.getpid()}".encode()


def lock(fd: int) -> bool:
    """Take the write lock on the open file; False when another holder has it. Raises
    OSError where the file system has no such locks."""
    try:
        fcntl.fcntl(fd, _OFD_SETLK, _WHOLE_FILE)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def claim(fd: int) -> bool:
    """Lock a new tmp and mark it as this process's; False where the file system allows
    neither (the tmp then goes by the age rule alone)."""
    try:
        if not lock(fd):
            return False
        os.setxattr(fd, OWNER_XATTR, owner_mark())
        return True
    except OSError as e:
        if e.errno in _LOCK_UNSUPPORTED or e.errno == errno.ENOTSUP:
            return False
        raise


def owner(path: str | os.PathLike[str]) -> bytes | None:
    """The mark on a tmp, or None (none, or no extended attributes here)."""
    try:
        return os.getxattr(path, OWNER_XATTR, follow_symlinks=False)
    except OSError:
        return None


def take_over(d: CaptureDir, name: str) -> bool | None:
    """For a marked tmp `name` of `d`: remove it when its writer is gone (True), leave it when
    the writer still holds it (False). None when the file is not a marked regular file (or is
    gone, or cannot be locked here): the age rule decides. Nothing but a regular file is ever
    opened for it; the lock is held while the file is removed, and only the file still standing
    at the name is removed, so two slimmers never remove each other's tmp."""
    try:
        fd = d.open_regular(name, os.O_RDWR)
    except (OSError, PcapslimError):  # gone, not ours to open, or not a regular file
        return None
    try:
        held = os.fstat(fd)
        try:
            os.getxattr(fd, OWNER_XATTR)
        except OSError:
            return None  # not marked, or no extended attributes here
        try:
            if not lock(fd):
                return False
        except OSError:
            return None
        now = d.lstat(name)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            return False  # replaced meanwhile by a live slimmer: look again later
        d.unlink(name)
        return True
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)
