"""The library API: analyse a capture, or write a slim copy of it."""

from __future__ import annotations

import os

from .engine import ProgressCallback, process
from .errors import PcapslimError
from .sinks import FdSink
from .source import open_capture
from .stats import SlimStats


def analyze_file(
    path: str | os.PathLike[str],
    *,
    on_progress: ProgressCallback | None = None,
    use_mmap: bool = True,
    rules: str = "compatible",
    compress_level: int | None = None,
) -> SlimStats:
    """The numbers slimming `path` would give; writes nothing. `rules`: "compatible" (SPEC §1)
    or "forensic" (SPEC §8). A gzip or zstd file is read through its decompressor, and its
    `out_bytes` are what the slim copy would take compressed (at `compress_level`)."""
    name = os.fspath(path)
    fd = open_capture(name)
    try:
        return process(
            name,
            fd,
            None,
            on_progress=on_progress,
            use_mmap=use_mmap,
            rules=rules,
            compress_level=compress_level,
        )
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
    compress_level: int | None = None,
) -> SlimStats:
    """Write a slim copy of `src` to `dst` (created or truncated; removed again on failure).
    `rules`: "compatible" (SPEC §1) or "forensic" (SPEC §8). A gzip or zstd `src` gives a
    `dst` in the same compression (at `compress_level`, the codec's default when None)."""
    src_name, dst_name = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst_name) and os.path.samefile(src_name, dst_name):
        raise PcapslimError(
            f"{src_name}: source and destination are the same file; use the pcap-slim "
            "command to slim a file in place"
        )
    in_fd = open_capture(src_name)
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
                compress_level=compress_level,
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
