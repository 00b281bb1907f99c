"""Accounts the tests create for themselves, to run the command as someone other than root and
to own files and markers. Creating accounts needs root, as sensors and CI run the suite.

An account must reach the interpreter, the installed packages and pcapslim itself. Where one of
their directories is closed to others (a clone in root's 0700 home, an interpreter installed
under it), the account's command runs in a mount namespace of its own in which each such
directory is replaced by an empty one (0755) holding only the paths the command needs, bound
from the real ones: nothing outside the namespace changes, and the account sees nothing else of
the closed directory.
"""

from __future__ import annotations

import atexit
import grp
import os
import pwd
import shlex
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pcapslim


@dataclass
class Account:
    name: str
    uid: int
    gid: int  # primary group
    extra_gid: int  # a supplementary group it belongs to

    def command(self, *argv: str) -> list[str]:
        """argv run as this account, with its groups and no capabilities, where it can reach
        the interpreter and pcapslim."""
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        script = _reachable_script()
        if not script:
            return [*drop, *argv]
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'{script} && cd / && exec "$@"', "sh", *drop, *argv]  # fmt: skip

    def directory(self) -> Path:
        """A new directory it owns, outside the tests' private temporary tree (which only root
        can enter)."""
        d = Path(tempfile.mkdtemp(prefix="pcapslim-account-"))
        os.chown(d, self.uid, self.gid)
        os.chmod(d, 0o755)
        return d


def _needed() -> list[Path]:
    """What a command of the account reads: the interpreter, its standard library, the
    installed packages and pcapslim (an editable install's source tree)."""
    paths = {
        os.path.realpath(sys.executable),
        sys.prefix,
        sys.base_prefix,
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        os.path.dirname(os.path.realpath(pcapslim.__file__)),
        *site.getsitepackages(),
    }
    return sorted(Path(os.path.realpath(p)) for p in paths if os.path.exists(p))


def _closed(d: Path) -> bool:
    """Others may not pass through this directory."""
    return not os.stat(d).st_mode & stat.S_IXOTH


@cache
def _reachable_script() -> str:
    """Shell commands that, run as root in a new mount namespace, open the way to every needed
    path through the directories closed to others ("" when there are none)."""
    needed = _needed()
    closed = sorted(
        {a for p in needed for a in [p, *p.parents] if a.is_dir() and _closed(a)},
        key=lambda a: len(a.parts),
    )
    if not closed:
        return ""
    stash = Path(tempfile.mkdtemp(prefix="pcapslim-reach-"))
    atexit.register(_remove_empty, stash)
    lines = []
    for i, d in enumerate(closed):
        keep = stash / str(i)
        keep.mkdir()
        lines += [f"mount --bind {shlex.quote(str(d))} {keep}",
                  f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(d))}"]  # fmt: skip
        for child in sorted({p.relative_to(d).parts[0] for p in needed if d in p.parents}):
            inside, real = d / child, keep / child
            make = "mkdir" if inside.is_dir() else "touch"
            inside_q, real_q = shlex.quote(str(inside)), shlex.quote(str(real))
            lines += [f"{make} {inside_q}", f"mount --bind {real_q} {inside_q}"]
    return " && ".join(lines)


def _remove_empty(stash: Path) -> None:
    """The stash's mount points, empty outside the namespaces that used them."""
    for d in stash.iterdir():
        d.rmdir()
    stash.rmdir()


def _require_root() -> None:
    assert os.geteuid() == 0, "this test creates accounts: run the suite as root, as CI does"


@contextmanager
def temporary_account(stem: str = "pcapslimt") -> Iterator[Account]:
    _require_root()
    name = f"{stem}{os.getpid() % 100000}"
    extra = f"{name}x"
    subprocess.run(["groupadd", "--system", extra], check=True)
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
             "/usr/sbin/nologin", "--groups", extra, name],
            check=True,
        )  # fmt: skip
        try:
            user = pwd.getpwnam(name)
            yield Account(name, user.pw_uid, user.pw_gid, grp.getgrnam(extra).gr_gid)
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        subprocess.run(["groupdel", extra], check=False)  # userdel may have taken it


@contextmanager
def sensor_account() -> Iterator[tuple[int, int]]:
    """The account `sensor` (with its group), created for the test when the machine has none."""
    _require_root()
    try:
        user = pwd.getpwnam("sensor")
        yield user.pw_uid, grp.getgrnam("sensor").gr_gid
        return
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
         "/usr/sbin/nologin", "sensor"],
        check=True,
    )  # fmt: skip
    try:
        user = pwd.getpwnam("sensor")
        yield user.pw_uid, grp.getgrnam("sensor").gr_gid
    finally:
        subprocess.run(["userdel", "sensor"], check=True)
        subprocess.run(["groupdel", "sensor"], check=False)
