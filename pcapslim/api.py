"""The library API: analyse a capture, or write a slim copy of it."""

from __future__ import annotations

import os

from .engine import FdSink, ProgressCallback, process
from .errors import PcapslimError
from .stats import SlimStats


def analyze_file(
    path: str | os.PathLike[str],
    *,
    on_progress: ProgressCallback | None = None,
    use_mmap: bool = True,
    rules: str = "compatible",
) -> SlimStats:
    """The numbers slimming `path` would give; writes nothing. `rules`: "compatible" (SPEC §1)
    or "forensic" (SPEC §8)."""
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return process(name, fd, None, on_progress=on_progress, use_mmap=use_mmap, rules=rules)
    finally:
        os.close(fd)


def slim_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    on_progress: ProgressCallback | None = None,
    use_mmap: bool = True,
    fsync: bool = True,
    rules: str = "compatible",
) -> SlimStats:
    """Write a slim copy of `src` to `dst` (created or truncated; removed again on failure).
    `rules`: "compatible" (SPEC §1) or "forensic" (SPEC §8)."""
    src_name, dst_name = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst_name) and os.path.samefile(src_name, dst_name):
        raise PcapslimError(
            f"{src_name}: source and destination are the same file; use the pcap-slim "
            "command to slim a file in place"
        )
    in_fd = os.open(src_name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out_fd = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            stats = process(
                src_name,
                in_fd,
                FdSink(out_fd, writeback=fsync),
                on_progress=on_progress,
                use_mmap=use_mmap,
                rules=rules,
            )
            if fsync:
                os.fsync(out_fd)
        except BaseException:
            os.close(out_fd)
            os.unlink(dst_name)
            raise
        os.close(out_fd)
        return stats
    finally:
        os.close(in_fd)
