"""Accounts the tests create for themselves, to run the command as someone other than root and
to own files and markers. Creating accounts needs root, as sensors and CI run the suite."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Account:
    name: str
    uid: int
    gid: int  # primary group
    extra_gid: int  # a supplementary group it belongs to

    def command(self, *argv: str) -> list[str]:
        """argv run as this account, with its groups and no capabilities."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *argv]

    def directory(self) -> Path:
        """A new directory it owns, outside the tests' private temporary tree (which only root
        can enter)."""
        d = Path(tempfile.mkdtemp(prefix="pcapslim-account-"))
        os.chown(d, self.uid, self.gid)
        os.chmod(d, 0o755)
        return d


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
