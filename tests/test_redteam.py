"""Root over a hostile directory. An unprivileged account the test creates owns a capture
directory D (its parent is root's) and races the root slimmer inside it with a small compiled
attacker (tests/redteam/attacker.c: renameat2 RENAME_EXCHANGE swaps, spinning or triggered by
inotify, symlinks put in place of directories, FIFOs in place of captures), and with attacks
that need no race (FIFOs planted as markers, set-id captures). Beside D lies a root-only
directory with a root-only file, a root-only capture and a subdirectory: everything outside D
(names, modes, owners, sizes, contents, link targets) is compared before and after every run,
and must not change. Every loop is bounded in count and time; accounts and files go at the end.

PCAPSLIM_REDTEAM_TREE names another source tree (a scratch copy of earlier code) to run as the
root command instead of the installed one: the test must find what that code lets through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import naive
import pytest
from support import ROOT, capture, tls_frame
from support.accounts import Account, temporary_account
from support.cli import CLI

pytestmark = pytest.mark.slow  # whole races on real files; no kernel is covered here

ROUNDS = int(os.environ.get("PCAPSLIM_REDTEAM_ROUNDS", "4"))
SECONDS = 3.0  # an attacker's loop: at most this long (and at most MAX_SWAPS swaps)
MAX_SWAPS = 50_000_000
TREE = os.environ.get("PCAPSLIM_REDTEAM_TREE")  # earlier code, to show what it lets through


@pytest.fixture(scope="module")
def attacker() -> Iterator[Path]:
    """The attacker, compiled (gcc) into a directory every account can reach."""
    d = Path(tempfile.mkdtemp(prefix="pcapslim-attacker-"))
    os.chmod(d, 0o755)
    exe = d / "attacker"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(ROOT / "tests" / "redteam" /
                    "attacker.c")], check=True)  # fmt: skip
    os.chmod(exe, 0o755)
    yield exe
    shutil.rmtree(d)


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    with temporary_account("pcapslimrt") as acct:
        yield acct


@dataclass
class Sandbox:
    base: Path  # root's, 0755
    d: Path  # the capture directory: the account's
    secret: Path  # root's, 0700: what must never change

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Everything below `base` but inside D: name, type and mode, owner, size, content
        hash or link target."""
        out: dict[str, tuple[object, ...]] = {}
        for here, dirs, files in os.walk(self.base, followlinks=False):
            rel = Path(here).relative_to(self.base)
            if rel.parts[:1] == (self.d.name,):
                dirs[:] = []
                continue
            for name in [*dirs, *files, "."]:
                p = Path(here) / name
                if p == self.d:
                    continue
                st = p.lstat()
                what: object = None
                if stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(p.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    what = os.readlink(p)
                out[str(rel / name)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, what)
        return out


VICTIM = capture(40, 2)  # a root-only capture outside D: slimming it would change it


@pytest.fixture
def sandbox(account: Account) -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="pcapslim-redteam-"))
    os.chmod(base, 0o755)
    secret = base / "secret"
    secret.mkdir(mode=0o700)
    (secret / "secret.txt").write_text("root only\n")
    os.chmod(secret / "secret.txt", 0o600)
    (secret / "victim.pcap").write_bytes(VICTIM)
    os.chmod(secret / "victim.pcap", 0o600)
    (secret / "inner").mkdir(mode=0o700)
    (secret / "inner" / "keep.pcap").write_bytes(VICTIM)
    d = base / "D"
    d.mkdir()
    os.chown(d, account.uid, account.gid)
    yield Sandbox(base, d, secret)
    shutil.rmtree(base)


def own(account: Account, *paths: Path) -> None:
    for p in paths:
        os.chown(p, account.uid, account.gid, follow_symlinks=False)


def captures(sb: Sandbox, account: Account, n: int, where: Path | None = None) -> list[Path]:
    """`n` captures the account owns, oldest first, each with TLS to cut."""
    where = where or sb.d
    out = []
    for i in range(n):
        f = where / f"c{i:03d}.pcap"
        f.write_bytes(capture(30 + i % 7, 2))
        own(account, f)
        t = time.time() - 3600 + i
        os.utime(f, (t, t))
        out.append(f)
    return out


def root_command(*args: object) -> list[str]:
    """pcap-slim as root: the installed one, or the tree PCAPSLIM_REDTEAM_TREE names (run from
    inside it, since `python -m` puts the working directory first on the path)."""
    argv = [*CLI, *map(str, args)]
    if TREE:
        argv = ["env", "-C", TREE, f"PYTHONPATH={TREE}", *argv]
    return argv


def run_root(*args: object, timeout: float = 120) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    p = subprocess.run(root_command(*args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


class Attack:
    """The attacker running as the account, for one run of the slimmer."""

    def __init__(self, exe: Path, account: Account, *argv: str) -> None:
        self.p = subprocess.Popen(account.command(str(exe), *argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip

    def done(self) -> str:
        out, err = self.p.communicate(timeout=SECONDS + 30)
        assert self.p.returncode == 0, err
        return out


def swaps(out: str) -> int:
    return int(out.split()[1])


def _markers_with_a_decoy(sb: Sandbox, account: Account) -> None:
    """D/.slim_markers (the account's) and D/decoy, a symlink to the root-only directory: the
    attacker exchanges the two."""
    m = sb.d / ".slim_markers"
    m.mkdir(exist_ok=True)
    own(account, m)
    decoy = sb.d / "decoy"
    decoy.symlink_to(sb.secret)
    own(account, decoy)


def _reset(sb: Sandbox) -> None:
    for p in sb.d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@pytest.mark.parametrize(
    "flags",
    [(), ("--workers", "2"), ("--offset-map",), ("--workers", "2", "--offset-map")],
    ids=["dir", "workers-2", "offset-map", "workers-2-offset-map"],
)
def test_the_marker_directory_swapped_for_a_symlink_leads_nowhere(  # type: ignore[no-untyped-def]
    sandbox, account, attacker, flags
):
    before = sandbox.snapshot()
    total, results = 0, []
    for _ in range(ROUNDS):
        _reset(sandbox)
        captures(sandbox, account, 40)
        _markers_with_a_decoy(sandbox, account)
        attack = Attack(attacker, account, "swap", str(sandbox.d), ".slim_markers", "decoy",
                        str(MAX_SWAPS), str(SECONDS))  # fmt: skip
        rc, out, err, _ = run_root("--dir", sandbox.d, *flags, "--output", "json")
        total += swaps(attack.done())
        assert rc in (0, 1), err
        results += [e["status"] for e in json.loads(out)["files"]]
        assert sandbox.snapshot() == before
    print(f"{' '.join(flags) or '--dir'}: {ROUNDS} runs, {total} swaps, "
          f"{results.count('ok')} ok / {results.count('fail')} failed files")  # fmt: skip
    assert total > 0


def test_the_marker_directory_swapped_while_watching_leads_nowhere(sandbox, account, attacker):  # type: ignore[no-untyped-def]
    before = sandbox.snapshot()
    _markers_with_a_decoy(sandbox, account)
    p = subprocess.Popen(root_command("--dir", sandbox.d, "--watch", "--rescan-seconds", "1",
                                      "--offset-map", "--output", "json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    attack = Attack(attacker, account, "swap", str(sandbox.d), ".slim_markers", "decoy",
                    str(MAX_SWAPS), str(SECONDS))  # fmt: skip
    try:
        incoming = sandbox.base / "incoming"
        for i in range(3):  # files arriving while the attacker swaps
            incoming.mkdir()
            for f in captures(sandbox, account, 10, incoming):
                os.rename(f, sandbox.d / f"r{i}{f.name}")
            incoming.rmdir()
            time.sleep(0.7)
        n = swaps(attack.done())
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert sandbox.snapshot() == before
    files = [json.loads(x) for x in out.splitlines() if '"file"' in x]
    print(f"--watch: {n} swaps, {len(files)} files reported")
    assert n > 0


def test_a_subdirectory_replaced_by_a_symlink_after_the_listing_leads_nowhere(  # type: ignore[no-untyped-def]
    sandbox, account, attacker
):
    """`--recursive`: the tree is listed, then the account puts a symlink to the root-only
    directory in place of a subdirectory (no tight race: after the first tmp appears). Root
    slimmed the root-only capture outside D through it and left its tmp and marker there."""
    before = sandbox.snapshot()
    for _ in range(ROUNDS):
        _reset(sandbox)
        slow = sandbox.d / "a_first.pcap"
        slow.write_bytes(capture(4000, 0, tls=tls_frame(1000)))  # ~4 MB, throttled below
        own(account, slow)
        os.utime(slow, (0, 0))
        sub = sandbox.d / "sub"
        sub.mkdir()
        own(account, sub)
        (sub / "victim.pcap").write_bytes(VICTIM)
        own(account, sub / "victim.pcap")
        attack = Attack(attacker, account, "replace-on-tmp", str(sandbox.d), "sub",
                        str(sandbox.secret), str(SECONDS + 10))  # fmt: skip
        rc, out, err, _ = run_root("--dir", sandbox.d, "--recursive", "--max-io-mbps", "8",
                                   "--output", "json")  # fmt: skip
        assert attack.done().strip() == "replaced 1"
        assert rc in (0, 1), err
        assert sandbox.snapshot() == before
        entry = next(e for e in json.loads(out)["files"] if e["file"].endswith("victim.pcap"))
        assert entry["status"] == "fail", entry
    print(f"--recursive, a subdirectory replaced by a symlink: {ROUNDS} runs, nothing outside D")


def test_a_fifo_swapped_for_a_capture_never_holds_the_run(sandbox, account, attacker):  # type: ignore[no-untyped-def]
    """A FIFO exchanged with the capture again and again: every run ends at once (the FIFO
    fails with a message that says what it is), and SIGTERM ends a watcher within the grace."""
    before = sandbox.snapshot()
    x = sandbox.d / "x.pcap"
    fifo = sandbox.d / "x.fifo"
    longest, outcomes, total = 0.0, [], 0
    for _ in range(ROUNDS * 5):
        _reset(sandbox)
        x.write_bytes(capture())
        os.mkfifo(fifo)
        own(account, x, fifo)
        attack = Attack(attacker, account, "swap", str(sandbox.d), "x.pcap", "x.fifo",
                        str(MAX_SWAPS), "1")  # fmt: skip
        rc, out, err, took = run_root("--single", x, "--output", "json", timeout=30)
        total += swaps(attack.done())
        assert rc in (0, 1), err
        longest = max(longest, took)
        (entry,) = json.loads(out)["files"]
        outcomes.append(entry["status"])
        if entry["status"] == "fail":
            assert "named pipe" in entry["error"] or "changed" in entry["error"] or \
                "removed" in entry["error"], entry["error"]  # fmt: skip
    assert sandbox.snapshot() == before
    print(f"FIFO swapped for the capture: {len(outcomes)} runs, {total} swaps, "
          f"{outcomes.count('fail')} failed, the longest run {longest:.2f} s")  # fmt: skip
    assert longest < 10
    # a watcher over a directory where FIFOs keep replacing captures stops on SIGTERM
    _reset(sandbox)
    for f in captures(sandbox, account, 10):
        os.mkfifo(f.with_suffix(".fifo"))
        own(account, f.with_suffix(".fifo"))
    p = subprocess.Popen(root_command("--dir", sandbox.d, "--watch", "--rescan-seconds", "1",
                                      "--output", "json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    attacks = [Attack(attacker, account, "swap", str(sandbox.d), f"c00{i}.pcap", f"c00{i}.fifo",
                      str(MAX_SWAPS), "2") for i in range(3)]  # fmt: skip
    for a in attacks:
        a.done()
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 0
    assert took < 9, took  # within the grace
    assert sandbox.snapshot() == before


def test_fifos_planted_as_marker_and_offset_map_tmp_fail_at_once(sandbox, account):  # type: ignore[no-untyped-def]
    before = sandbox.snapshot()
    m = sandbox.d / ".slim_markers"
    m.mkdir()
    a, b = sandbox.d / "a.pcap", sandbox.d / "b.pcap"
    a.write_bytes(capture())
    b.write_bytes(capture())
    os.mkfifo(m / "a.pcap")  # a marker that is a FIFO
    os.mkfifo(m / "b.pcap.offsets.tmp")  # an offset map's tmp that is a FIFO
    own(account, m, a, b, m / "a.pcap", m / "b.pcap.offsets.tmp")
    rc, out, err, took = run_root("--dir", sandbox.d, "--offset-map", "--output", "json",
                                  timeout=30)  # fmt: skip
    assert rc == 1, err
    status = {Path(e["file"]).name: e for e in json.loads(out)["files"]}
    assert status["a.pcap"]["status"] == "fail"
    assert "not a regular file" in status["a.pcap"]["error"]
    assert status["b.pcap"]["status"] == "ok"  # what stood at the map's tmp was removed first
    assert took < 10, took
    assert a.read_bytes() == capture() and b.read_bytes() == naive.slim_bytes(capture()).data
    assert sandbox.snapshot() == before


def test_a_set_id_capture_never_has_a_root_owned_set_id_tmp(sandbox, account, attacker):  # type: ignore[no-untyped-def]
    before = sandbox.snapshot()
    s = sandbox.d / "s.pcap"
    data = capture(4000, 0, tls=tls_frame(1000))
    seen, looks = 0, 0
    for _ in range(ROUNDS):
        _reset(sandbox)
        s.write_bytes(data)
        own(account, s)
        os.chmod(s, 0o6755)
        watch = Attack(attacker, account, "watch-setid", str(sandbox.d), "s.pcap.tmp", "3")
        time.sleep(0.2)
        rc, out, err, _ = run_root("--single", s, "--max-io-mbps", "8", "--output", "json")
        words = watch.done().split()
        seen, looks = seen + int(words[1]), looks + int(words[3])
        assert rc == 0, err
        st = s.stat()
        assert (st.st_uid, st.st_gid) == (account.uid, account.gid)
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), oct(st.st_mode)
        assert s.read_bytes() == naive.slim_bytes(data).data
    print(f"set-id capture: {ROUNDS} runs, {looks} looks at the tmp, {seen} root-owned set-id")
    assert seen == 0
    assert sandbox.snapshot() == before


def test_the_attacker_can_act(sandbox, account, attacker):  # type: ignore[no-untyped-def]
    """The swaps are real: the account exchanges the names it is given in D."""
    _markers_with_a_decoy(sandbox, account)
    out = Attack(attacker, account, "swap", str(sandbox.d), ".slim_markers", "decoy", "1001",
                 "2").done()  # fmt: skip
    assert swaps(out) == 1002  # an even count: the names are back where they were
    assert (sandbox.d / "decoy").is_symlink() and not (sandbox.d / ".slim_markers").is_symlink()
