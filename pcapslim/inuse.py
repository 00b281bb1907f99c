"""Is a capture still being written? Asked of the kernel, not guessed from its age.

First choice, a read lease: `fcntl(F_SETLEASE, F_RDLCK)` on a read-only descriptor succeeds only
while no process has the file open for writing (EAGAIN otherwise), and is released at once. It
costs two system calls. Its limits: only the file's owner, or a process with CAP_LEASE (root has
it), may take a lease, and some file systems have none (NFS, FUSE; EINVAL or ENOLCK).

Where the lease cannot be taken, every process's open descriptors are looked at instead: the
entries of /proc/*/fd that point at the file, and the access mode in /proc/PID/fdinfo/FD. That
costs one readlink per open descriptor on the machine (milliseconds on a sensor with a few
thousand), and sees only the processes this one may inspect (all of them as root; its own
account's otherwise, or fewer under hidepid). A writer on another machine (NFS) is seen by
neither: there the age filter (`--age-minutes`) remains the guard.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

from .errors import PcapslimError

if TYPE_CHECKING:
    from .capdir import CaptureDir

LEASE_REFUSED = (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOLCK, errno.ENOTSUP)
ACCESS_MODE = os.O_ACCMODE  # the access bits of the flags in /proc/PID/fdinfo


def being_written(d: CaptureDir, names: list[str]) -> set[str]:
    """Those of the files `names` of `d` that some process holds open for writing: a lease per
    file, and one look through /proc for the files whose lease cannot be taken. Only regular
    files are opened (see CaptureDir.open_regular)."""
    busy: set[str] = set()
    unknown: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            fd = d.open_regular(name, os.O_RDONLY)
        except (OSError, PcapslimError):
            continue  # gone, unreadable or not a file: the file's own run says what is wrong
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                busy.add(name)
            elif e.errno in LEASE_REFUSED:
                st = os.fstat(fd)
                unknown[(st.st_dev, st.st_ino)] = name
            else:
                raise
        else:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        finally:
            os.close(fd)
    if unknown:
        busy.update(unknown[key] for key in _written_in_proc(set(unknown)))
    return busy


def _written_in_proc(files: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of the files (dev, ino) a descriptor that this process may inspect under /proc
    has open for writing."""
    found: set[tuple[int, int]] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in files and key not in found and _opened_for_writing(pid, fd):
                found.add(key)
    return found


def _opened_for_writing(pid: str, fd: str) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
            for line in fh:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & ACCESS_MODE != os.O_RDONLY
    except OSError:
        pass
    return False
