"""Power loss, after the fact: the crash states a recorded run may leave on disk.

A run of the real command is recorded with `strace -f -y` (every system call that changes the
file system, with the path each descriptor refers to). Replaying the record gives the sequence
of operations on the files under one root; the persistence model says which of them a power cut
after operation k may have kept:

- ext4 `data=ordered`, as the in-place contract assumes: the data and attributes of a file are
  durable once an `fsync` of that file completes after them; a directory entry operation
  (create, mkdir, rename, unlink) is durable once an `fsync` of its directory (of both, for a
  rename between two) completes after it; `sync`/`syncfs` make everything durable. Nothing else
  is promised: any other operation may or may not have reached the disk.

A crash state after operation k is every durable operation plus any subset of the others (as
ALICE, OSDI 2014, builds them): the directory operations that reached the disk applied in their
program order (a rename that reached it moves its file even when the file's creation did not),
and each file whose pending operations did not all reach the disk holding a torn version. A
file is whole only when every operation the run ever made on it reached the disk.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# every system call that can change a file under the root; any other one that names such a file
# is refused (the model would not know what it did)
TRACED = (
    "open,openat,openat2,creat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,truncate,fsync,"
    "fdatasync,sync,syncfs,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,mkdir,"
    "mkdirat,rmdir,link,linkat,symlink,symlinkat,setxattr,lsetxattr,fsetxattr,removexattr,"
    "fremovexattr,chmod,fchmod,fchmodat,chown,lchown,fchown,fchownat,utimensat,fallocate,"
    "copy_file_range,sendfile,splice,mmap,msync"
)
MAX_STATES = 512  # crash states built per crash point: all of them, or this many at random


def strace_argv(log: Path) -> list[str]:
    return ["strace", "-f", "-y", "-qq", "-s", "0", "-o", str(log), "-e", f"trace={TRACED}"]


_CALL = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)(?:<(.*?)>)?")
_UNFINISHED = re.compile(r"^(\d+) +(.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. (\w+) resumed>(.*)$")
_FD = re.compile(r"(?:-?\d+|AT_FDCWD)<(.*?)>")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


def calls(log: str) -> Iterator[tuple[str, str, int, str | None]]:
    """(name, arguments, return value, path of the returned descriptor) of every completed call
    of an strace -f -y log, in the order they completed."""
    pending: dict[str, str] = {}
    for line in log.splitlines():
        m = _UNFINISHED.match(line)
        if m:
            pending[m.group(1)] = m.group(2)
            continue
        m = _RESUMED.match(line)
        if m:
            line = f"{m.group(1)} {pending.pop(m.group(1))}{m.group(3)}"
        m = _CALL.match(line)
        if m and m.group(4) != "?":
            yield m.group(2), m.group(3), int(m.group(4)), m.group(5)


@dataclass
class Op:
    kind: str  # create, mkdir, rename, unlink: directory entries; data, attr: a file's
    ino: int
    dirs: tuple[str, ...] = ()  # the directories whose fsync makes an entry operation durable
    name: str = ""
    dst: tuple[str, str] = ("", "")  # rename: the new directory and name
    text: str = ""  # the call, for messages

    @property
    def entry(self) -> bool:
        return self.kind in ("create", "mkdir", "rename", "unlink")


@dataclass
class Run:
    """The operations a recorded run made under `root` (paths in it relative to root, "" the
    root itself), the namespace before and after it, and when each operation became durable."""

    root: Path
    before: dict[str, dict[str, int]]  # directory -> name -> inode
    ops: list[Op] = field(default_factory=list)
    durable_at: list[float] = field(default_factory=list)  # index of the covering sync, or inf
    after: dict[str, dict[str, int]] = field(default_factory=dict)
    dirs: dict[int, str] = field(default_factory=dict)  # inode of a directory -> its path
    last_op: dict[int, int] = field(default_factory=dict)  # inode -> index of its last operation
    syncs: list[tuple[int, str, int]] = field(default_factory=list)  # (index, file|dir|all, ino)


def _rel(root: Path, path: str) -> str | None:
    if path.endswith(" (deleted)"):
        return None
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    return "" if str(rel) == "." else str(rel)


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def listing(root: Path) -> tuple[dict[str, dict[str, int]], dict[int, str]]:
    """The namespace under root: directory -> name -> inode number, and the directories."""
    ns: dict[str, dict[str, int]] = {}
    dirs: dict[int, str] = {root.stat().st_ino: ""}
    for here in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        rel = _rel(root, str(here)) or ""
        ns[rel] = {}
        for p in here.iterdir():
            st = p.lstat()
            ns[rel][p.name] = st.st_ino
            if p.is_dir() and not p.is_symlink():
                dirs[st.st_ino] = _rel(root, str(p)) or ""
    return ns, dirs


def replay(root: Path, before: dict[str, dict[str, int]], dirs: dict[int, str], log: str) -> Run:
    """The operations of a recorded run on the files under `root`, whose namespace before the
    run was `before` (from `listing`)."""
    run = Run(root, {d: dict(e) for d, e in before.items()}, dirs=dict(dirs))
    live = {d: dict(e) for d, e in before.items()}
    next_ino = [-1]  # inodes created by the run get negative numbers

    def new_ino() -> int:
        next_ino[0] -= 1
        return next_ino[0]

    def at(rel: str) -> int | None:
        parent, name = _split(rel)
        if rel == "":
            return next(i for i, d in run.dirs.items() if d == "")
        return live.get(parent, {}).get(name)

    def add(op: Op) -> None:
        run.ops.append(op)
        run.last_op[op.ino] = len(run.ops) - 1

    def file_op(kind: str, path: str | None, text: str) -> None:
        rel = _rel(root, path) if path else None
        if rel is None:
            return
        ino = at(rel)
        if ino is None:
            raise ValueError(f"an operation on {rel}, which the model does not know: {text}")
        add(Op(kind, ino, name=rel, text=text))

    for name, args, ret, retpath in calls(log):
        text = f"{name}({args}) = {ret}"
        fds = _FD.findall(args)
        strs = _STR.findall(args)
        touches = [r for r in (_rel(root, p) for p in fds) if r is not None]
        if ret < 0:
            continue
        if name in ("openat", "open", "creat", "openat2"):
            rel = _rel(root, retpath) if retpath else None
            if rel is None:
                continue
            creating = "O_CREAT" in args or name == "creat"
            if at(rel) is None:
                if not creating:
                    raise ValueError(f"an open of {rel}, which the model does not know: {text}")
                parent, base = _split(rel)
                ino = new_ino()
                live[parent][base] = ino
                add(Op("create", ino, dirs=(parent,), name=base, text=text))
            elif "O_TRUNC" in args and ("O_WRONLY" in args or "O_RDWR" in args):
                file_op("data", retpath, text)
            continue
        if name in ("write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate",
                    "fallocate"):  # fmt: skip
            if ret > 0 or name in ("ftruncate", "fallocate"):
                file_op("data", fds[0] if fds else None, text)
            continue
        if name in ("fchmod", "fchown", "fsetxattr", "fremovexattr"):
            file_op("attr", fds[0] if fds else None, text)
            continue
        if name == "utimensat" and args.split(",")[1].strip() == "NULL":
            file_op("attr", fds[0] if fds else None, text)
            continue
        if name in ("fsync", "fdatasync"):
            rel = _rel(root, fds[0]) if fds else None
            if rel is None:
                continue
            ino = at(rel)
            if ino is None:
                raise ValueError(f"an fsync of {rel}, which the model does not know: {text}")
            run.syncs.append((len(run.ops), "dir" if ino in run.dirs else "file", ino))
            continue
        if name in ("sync", "syncfs"):
            run.syncs.append((len(run.ops), "all", 0))
            continue
        if name in ("renameat", "renameat2", "rename"):
            if name == "rename":
                src, dst = (_rel(root, s) for s in strs[:2])
            else:
                src = _rel(root, f"{fds[0]}/{strs[0]}")
                dst = _rel(root, f"{fds[1]}/{strs[1]}")
                if name == "renameat2" and "RENAME_EXCHANGE" in args:
                    raise ValueError(f"an exchange the model does not know: {text}")
            if src is None and dst is None:
                continue
            if src is None or dst is None:
                raise ValueError(f"a rename into or out of the root: {text}")
            ino = at(src)
            if ino is None or ino in run.dirs:
                raise ValueError(f"a rename the model does not know: {text}")
            (sp, sn), (dp, dn) = _split(src), _split(dst)
            del live[sp][sn]
            live[dp][dn] = ino
            add(Op("rename", ino, dirs=tuple(dict.fromkeys((sp, dp))), name=sn, dst=(dp, dn),
                   text=text))  # fmt: skip
            continue
        if name in ("unlinkat", "unlink", "rmdir"):
            rel = _rel(root, f"{fds[0]}/{strs[0]}" if name == "unlinkat" else strs[0])
            if rel is None:
                continue
            if name == "rmdir" or "AT_REMOVEDIR" in args:
                raise ValueError(f"a directory removed, which the model does not know: {text}")
            parent, base = _split(rel)
            ino = live[parent].pop(base)
            add(Op("unlink", ino, dirs=(parent,), name=base, text=text))
            continue
        if name in ("mkdirat", "mkdir"):
            rel = _rel(root, f"{fds[0]}/{strs[0]}" if name == "mkdirat" else strs[0])
            if rel is None:
                continue
            parent, base = _split(rel)
            ino = new_ino()
            live[parent][base] = ino
            live[rel] = {}
            run.dirs[ino] = rel
            add(Op("mkdir", ino, dirs=(parent,), name=base, text=text))
            continue
        if name == "mmap":
            if touches and "PROT_WRITE" in args and "MAP_SHARED" in args:
                raise ValueError(f"a shared writable mapping the model does not follow: {text}")
            continue
        if touches:
            raise ValueError(f"a call the model does not know, on {touches}: {text}")
    run.after = live
    run.durable_at = [_durable_at(run, i) for i in range(len(run.ops))]
    return run


def _durable_at(run: Run, i: int) -> float:
    op = run.ops[i]
    covered = []
    if op.entry:
        for d in op.dirs:
            dino = next(k for k, v in run.dirs.items() if v == d)
            covered.append(next((s for s, kind, ino in run.syncs if s > i and (
                kind == "all" or (kind == "dir" and ino == dino))), float("inf")))  # fmt: skip
        return max(covered)
    return next((s for s, kind, ino in run.syncs if s > i and (
        kind == "all" or (kind == "file" and ino == op.ino))), float("inf"))  # fmt: skip


@dataclass(frozen=True)
class CrashState:
    k: int  # the power went after this many operations
    entries: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]  # reachable dir -> name -> ino
    whole: frozenset[int]  # the files that hold everything the run ever wrote to them
    torn: frozenset[int]  # the files some of whose written operations are lost

    def names(self, d: str) -> dict[str, int]:
        return dict(dict(self.entries).get(d, ()))


def crash_states(run: Run, rng: random.Random) -> Iterator[CrashState]:
    """Every crash state the model allows after each operation (at most MAX_STATES per point,
    drawn at random beyond that), each once."""
    seen: set[CrashState] = set()
    for k in range(len(run.ops) + 1):
        pending_entries = [i for i in range(k) if run.ops[i].entry and run.durable_at[i] >= k]
        pending_files = sorted({run.ops[i].ino for i in range(k)
                                if not run.ops[i].entry and run.durable_at[i] >= k})  # fmt: skip
        n = len(pending_entries) + len(pending_files)
        if n <= MAX_STATES.bit_length() - 1:
            choices: Iterator[tuple[int, ...]] = itertools.product((0, 1), repeat=n)
        else:
            picks = [tuple(rng.randint(0, 1) for _ in range(n)) for _ in range(MAX_STATES - 2)]
            choices = iter([(0,) * n, (1,) * n, *picks])
        for bits in choices:
            kept_entries = {i for i, b in zip(pending_entries, bits) if b}
            lost_files = {f for f, b in zip(pending_files, bits[len(pending_entries) :]) if not b}
            state = _state(run, k, kept_entries, lost_files)
            if state not in seen:
                seen.add(state)
                yield state


def _state(run: Run, k: int, kept: set[int], lost: set[int]) -> CrashState:
    ns = {d: dict(e) for d, e in run.before.items()}
    for i in range(k):
        op = run.ops[i]
        if not op.entry or not (run.durable_at[i] < k or i in kept):
            continue
        if op.kind in ("create", "mkdir"):
            ns.setdefault(op.dirs[0], {})[op.name] = op.ino
            if op.kind == "mkdir":
                ns.setdefault(run.dirs[op.ino], {})
        elif op.kind == "rename":
            src_dir = op.dirs[0]
            if ns.get(src_dir, {}).get(op.name) == op.ino:
                del ns[src_dir][op.name]
            ns.setdefault(op.dst[0], {})[op.dst[1]] = op.ino
        elif op.kind == "unlink":
            if ns.get(op.dirs[0], {}).get(op.name) == op.ino:
                del ns[op.dirs[0]][op.name]
    # what is reachable from the root: a directory whose entry did not reach the disk is not
    reachable = {"": ns.get("", {})}
    for d in sorted(ns, key=lambda p: p.count("/")):
        if d == "":
            continue
        parent, name = _split(d)
        dino = next(i for i, p in run.dirs.items() if p == d)
        if parent in reachable and reachable[parent].get(name) == dino:
            reachable[d] = ns[d]
    inos = {i for e in reachable.values() for i in e.values()}
    whole = frozenset(i for i in inos if i not in lost and run.last_op.get(i, -1) < k)
    torn = frozenset(i for i in inos if i in lost)
    entries = tuple(sorted((d, tuple(sorted(e.items()))) for d, e in reachable.items()))
    return CrashState(k, entries, whole, torn)
