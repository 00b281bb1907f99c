"""The tool configuration in pyproject.toml holds: ruff (with rich/typer banned outside the CLI)
and mypy strict on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def test_ruff_finds_nothing():  # type: ignore[no-untyped-def]
    p = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pcapslim", "tests", "benches", "fixtures"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff_bans_rich_outside_the_cli(tmp_path):  # type: ignore[no-untyped-def]
    bad = ROOT / "pcapslim" / "_lint_probe.py"
    bad.write_text("import rich\n")
    try:
        p = subprocess.run(
            [sys.executable, "-m", "ruff", "check", str(bad)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        bad.unlink()
    assert p.returncode == 1 and "TID251" in p.stdout


def test_mypy_strict_passes_on_the_package():  # type: ignore[no-untyped-def]
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
