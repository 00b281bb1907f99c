"""The flow statistics notebook, executed end to end; its totals equal the command's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "flow_stats.ipynb"
SAMPLE = Path(__file__).parent.parent / "samples" / "loopback_mixed.pcap"


def _execute(env_capture: Path | None = None):  # type: ignore[no-untyped-def]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if env_capture is not None:  # set the path in the first code cell, as an analyst would
        first = next(c for c in nb.cells if c.cell_type == "code")
        first.source = first.source.replace("CAPTURE = None", f"CAPTURE = {str(env_capture)!r}")
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError when any cell fails
    return nb


def _totals(nb) -> dict:  # type: ignore[no-untyped-def,type-arg]
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out["text"].startswith('{"in_pkts"'):
                return json.loads(out["text"].splitlines()[0])
    raise AssertionError("the notebook printed no totals")


def _check_only(path: Path) -> dict:  # type: ignore[type-arg]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcapslim",
            "--single",
            str(path),
            "--check-only",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(p.stdout)["files"][0]


def _images(nb) -> int:  # type: ignore[no-untyped-def]
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def test_notebook_runs_on_the_bundled_sample_and_matches_check_only():  # type: ignore[no-untyped-def]
    nb = _execute()
    totals = _totals(nb)
    entry = _check_only(SAMPLE)
    for key, value in totals.items():
        assert entry[key] == value, key
    assert totals["in_pkts"] == 2065
    assert _images(nb) == 3


def test_notebook_takes_a_capture_path_in_its_first_cell(tmp_path):  # type: ignore[no-untyped-def]
    from benches.gen_capture import generate

    f = tmp_path / "other.pcapng"
    generate(f, 2, fmt="pcapng", seed=9)
    copy = tmp_path / "copy.pcapng"
    shutil.copyfile(f, copy)
    nb = _execute(copy)
    totals = _totals(nb)
    entry = _check_only(f)
    for key, value in totals.items():
        assert entry[key] == value, key
    assert entry["format"] == "pcapng"
