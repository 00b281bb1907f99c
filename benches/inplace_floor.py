"""The in-place floor: one Python process doing, per file, exactly the I/O of SPEC §5 and
nothing else, with as many worker threads as the run it judges.

    python -m benches.inplace_floor --workers N --ratio R FILE...

Per file: read it (1 MiB reads), create `FILE.tmp` exclusively and write `ratio` of the
file's size into it, read the tmp back, fsync it, rename it over the file, fsync the
directory, create the marker `.slim_markers/FILE` (the directory made once). No parsing, no
copying of records, no checks: what any slimmer keeping the contract must at least do.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20


def one(path: Path, ratio: float) -> None:
    d = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                size += n
        tmp = path.name + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=d)
        try:
            left = int(size * ratio)
            while left > 0:
                left -= os.write(fd, view[: min(left, CHUNK)])
            os.lseek(fd, 0, os.SEEK_SET)
            while os.readv(fd, [view]):
                pass
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path.name, src_dir_fd=d, dst_dir_fd=d)
        os.fsync(d)
        m = os.open(".slim_markers", os.O_RDONLY | os.O_DIRECTORY, dir_fd=d)
        try:
            os.close(os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=m))
        finally:
            os.close(m)
    finally:
        os.close(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ratio", type=float, required=True, help="slim size over original size")
    ap.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args()
    for parent in {f.parent for f in a.files}:
        (parent / ".slim_markers").mkdir(exist_ok=True)
    with ThreadPoolExecutor(a.workers) as pool:
        for done in [pool.submit(one, f, a.ratio) for f in a.files]:
            done.result()


if __name__ == "__main__":
    main()
