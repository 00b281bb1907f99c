"""Resident memory does not grow with the file: a whole `pcap-slim` process over a capture of
several hundred MB keeps its peak resident size (the kernel's high-water mark VmHWM, which
counts the mapped pages of the input) under the 64 MiB the memory budget allows on any file
size. Before the mapping was released behind the pass, a mapped run's peak was the file's
size.

(The same bound on 4 GiB, with the zstd and forensic modes, is in benches/budgets.toml.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import CLI

from benches.budget_check import communicate_with_peak
from benches.gen_capture import ensure

pytestmark = pytest.mark.slow  # whole processes over large files; no kernel is covered here

MIB = 1 << 20
LIMIT = 64 * MIB
SIZE_MB = 320  # far above the limit, so a run that keeps the file resident cannot pass


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure(tmp_path_factory.mktemp("big") / "big.pcap", SIZE_MB, seed=3)


def peak(*args: object) -> int:
    """The peak resident bytes of a whole run of the command (its VmHWM, read until it ends,
    as benches/budget_check reads it)."""
    p = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err, hwm = communicate_with_peak(p)
    assert p.returncode == 0, err
    return hwm


@pytest.mark.parametrize(
    "args",
    [
        ("--check-only", "--mmap"),
        ("--check-only", "--no-mmap"),
        ("--mmap",),
        ("--no-mmap",),
    ],
    ids=["check-only-mapped", "check-only-buffered", "in-place-mapped", "in-place-buffered"],
)
def test_a_large_file_is_slimmed_in_bounded_memory(tmp_path, big, args):  # type: ignore[no-untyped-def]
    f = tmp_path / "x.pcap"
    shutil.copyfile(big, f)
    size = f.stat().st_size
    got = peak("--single", f, *args)
    print(f"{' '.join(args)}: peak resident {got / MIB:.0f} MiB over {size / MIB:.0f} MiB")
    assert got <= LIMIT, got


def test_two_workers_stay_in_bounded_memory(tmp_path, big):  # type: ignore[no-untyped-def]
    for name in ("a.pcap", "b.pcap"):
        shutil.copyfile(big, tmp_path / name)
        os.utime(tmp_path / name, (0, 0))
    got = peak("--dir", tmp_path, "--workers", "2")
    print(f"--workers 2: peak resident {got / MIB:.0f} MiB over 2 x {SIZE_MB} MB")
    assert got <= LIMIT, got
