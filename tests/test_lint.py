"""The tool configuration in pyproject.toml holds: ruff (with rich/typer banned outside the CLI)
and mypy strict on the package. Nothing is written into the checkout: ruff reads the probes
from stdin, under the file names they pretend to have, and neither tool keeps a cache there."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.slow


def test_ruff_finds_nothing():  # type: ignore[no-untyped-def]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "pcapslim",
            "tests",
            "benches",
            "fixtures",
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def _ruff_on(source: str, as_file: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", as_file, "-"],
        cwd=ROOT,
        input=source,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("library", ["rich", "typer"])
def test_ruff_bans_rich_and_typer_outside_the_cli(library):  # type: ignore[no-untyped-def]
    before = sorted(p.name for p in (ROOT / "pcapslim").iterdir())
    probe = f"import {library}\n\nprint({library})\n"
    outside = _ruff_on(probe, "pcapslim/_lint_probe.py")
    assert outside.returncode == 1 and "TID251" in outside.stdout, outside.stdout
    inside = _ruff_on(probe, "pcapslim/cli.py")
    assert "TID251" not in inside.stdout, inside.stdout
    assert sorted(p.name for p in (ROOT / "pcapslim").iterdir()) == before


def test_mypy_strict_passes_on_the_package(tmp_path):  # type: ignore[no-untyped-def]
    p = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
