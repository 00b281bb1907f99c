"""The benchmark runner: it parses the budgets, its quick mode runs, an impossible budget fails,
and --against runs another binary beside ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from benches.budget_check import DEFAULT_BUDGETS, BudgetFileError, load_budgets


def _runner(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benches.budget_check", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_budgets_file_holds_every_required_scenario():  # type: ignore[no-untyped-def]
    defaults, scenarios = load_budgets(DEFAULT_BUDGETS)
    by_name = {s.name: s for s in scenarios}
    assert defaults["repeat"] >= 3
    for name in (
        "single-200mib-mmap",
        "single-200mib-no-mmap",
        "single-1gib-mmap",
        "single-1gib-no-mmap",
        "check-only-1gib",
        "dir-3x256mib-1-worker",
        "dir-3x256mib-2-workers",
        "dir-3x256mib-4-workers",
        "cold-jit-cache",
        "dir-500x100kib",
        "single-200mib-pcapng",
        "version",
        "single-10k-packets-warm",
        "check-only-sample",
        "first-run-after-install",
        "dir-4x256mib-check-only-scaling",
    ):
        assert name in by_name, name
    assert by_name["version"].budget_seconds == 0.10
    assert by_name["single-10k-packets-warm"].packets == 10000
    assert by_name["single-10k-packets-warm"].budget_seconds == 0.35
    sample = by_name["check-only-sample"]
    assert (sample.input, sample.budget_seconds, sample.max_rss_mib) == ("sample", 0.25, 80)
    assert by_name["first-run-after-install"].budget_seconds == 0.30
    assert (by_name["check-only-1gib"].floor, by_name["check-only-1gib"].budget) == ("read", 1.8)
    assert by_name["single-1gib-mmap"].floor == "read+write+unlink"
    assert by_name["single-1gib-mmap"].budget == 1.3
    scaling = by_name["dir-4x256mib-check-only-scaling"]
    assert (scaling.files, scaling.size_mib, scaling.workers) == (4, 256, 2)
    assert scaling.min_speedup == 1.7 and "--check-only" in scaling.args
    assert by_name["cold-jit-cache"].env == {"PCAPSLIM_KERNELS": "jit"}
    assert by_name["dir-500x100kib"].files == 500
    ratio = [s for s in scenarios if s.budget is not None]
    assert ratio and all(s.floor for s in ratio)
    assert any(s.quick for s in ratio)


@pytest.mark.parametrize(
    "text,what",
    [
        ("[[scenario]]\nname='x'\nkind='single'\nbudget=2\n", "needs a floor"),
        ("[[scenario]]\nname='x'\nkind='scaling'\nbudget_seconds=2\n", "min_speedup only"),
        ("[[scenario]]\nname='x'\nkind='bogus'\nbudget_seconds=2\n", "kind must be"),
        (
            "[[scenario]]\nname='x'\nkind='single'\nbudget=2\nbudget_seconds=2\nfloor='read'\n",
            "exactly one",
        ),
        ("[[scenario]]\nname='x'\nkind='single'\nbudget=2\nfloor='read+disk'\n", "floor parts"),
        ("[[scenario]]\nname='x'\nkind='single'\nbudget=2\nfloor='read'\nsurprise=1\n", "surprise"),
        ("[defaults]\nrepeat=3\n", "no [[scenario]]"),
        ("this is = = not toml", "budgets.toml"),
    ],
)
def test_malformed_budgets_are_refused(tmp_path, text, what):  # type: ignore[no-untyped-def]
    f = tmp_path / "budgets.toml"
    f.write_text(text)
    with pytest.raises(BudgetFileError, match=what.replace("[", r"\[")):
        load_budgets(f)
    p = _runner("--budgets", f)
    assert p.returncode == 2 and "budget_check:" in p.stderr


@pytest.mark.slow
def test_quick_mode_runs_and_reports_consistently(tmp_path):  # type: ignore[no-untyped-def]
    """Whether the budgets hold is the benchmark's verdict, not the suite's (this machine is
    shared): the exit code says it, and agrees with the scenarios' own verdicts."""
    out = tmp_path / "quick.json"
    p = _runner("--quick", "--json", out)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(results) == {
        "version",
        "check-only-sample",
        "single-10k-packets-warm",
        "dir-3x10mib-2-workers",
        "single-100mib",
    }
    assert (p.returncode == 0) == all(r["ok"] for r in results.values())
    sample = results["check-only-sample"]
    assert sample["max_rss_mib"] == 80 and sample["peak_rss_bytes"] > 0
    r = results["single-100mib"]
    assert r["floor_s"] > 0 and r["ratio"] == pytest.approx(r["median_s"] / r["floor_s"])
    assert (
        r["min_s"] <= r["median_s"] <= r["max_s"] and r["mb_per_s"] > 0 and r["peak_rss_bytes"] > 0
    )
    assert "pcap-slim budgets" in p.stdout and "single-100mib" in p.stdout


@pytest.mark.slow
def test_an_impossible_budget_fails_the_run(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "budgets.toml"
    f.write_text(
        "[defaults]\nrepeat = 1\n\n"
        "[[scenario]]\nname = 'version'\nkind = 'startup'\nargs = ['--version']\n"
        "budget_seconds = 30.0\n\n"
        "[[scenario]]\nname = 'too-tight'\nkind = 'single'\nsize_mib = 10\n"
        "floor = 'read+write'\nbudget = 0.001\n"
    )
    out = tmp_path / "r.json"
    p = _runner("--budgets", f, "--json", out)
    assert p.returncode == 1
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert results["version"]["ok"] is True and results["too-tight"]["ok"] is False
    assert "over budget: too-tight" in p.stderr


@pytest.mark.slow
def test_scaling_and_start_up_floor_are_measured(tmp_path):  # type: ignore[no-untyped-def]
    f = tmp_path / "budgets.toml"
    f.write_text(
        "[defaults]\nrepeat = 1\n\n"
        "[[scenario]]\nname = 'scale'\nkind = 'scaling'\nfiles = 2\nsize_mib = 2\n"
        "args = ['--check-only']\nworkers = 2\nmin_speedup = 0.01\nbeyond_startup = true\n\n"
        "[[scenario]]\nname = 'beyond'\nkind = 'single'\nsize_mib = 2\n"
        "args = ['--check-only']\nfloor = 'read'\nbudget = 1000.0\nbeyond_startup = true\n"
    )
    out = tmp_path / "r.json"
    p = _runner("--budgets", f, "--json", out)
    assert p.returncode in (0, 1), p.stdout + p.stderr  # on 2 MiB the machine's noise decides
    r = {r["name"]: r for r in json.loads(out.read_text())}
    scale, beyond = r["scale"], r["beyond"]
    assert scale["startup_s"] > 0 and scale["one_worker_median_s"] > 0
    assert scale["whole_speedup"] == pytest.approx(scale["one_worker_median_s"] / scale["median_s"])
    assert scale["speedup"] == pytest.approx(
        (scale["one_worker_median_s"] - scale["startup_s"])
        / (scale["median_s"] - scale["startup_s"])
    )
    assert beyond["ratio"] == pytest.approx(
        (beyond["median_s"] - beyond["startup_s"]) / beyond["floor_s"]
    )
    assert beyond["whole_ratio"] == pytest.approx(beyond["median_s"] / beyond["floor_s"])


@pytest.mark.slow
def test_against_runs_the_other_binary_with_the_same_flags(tmp_path):  # type: ignore[no-untyped-def]
    log = tmp_path / "calls.log"
    other = tmp_path / "other-slimmer"
    other.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} -m pcapslim "$@"\n')
    os.chmod(other, 0o755)
    out = tmp_path / "r.json"
    p = _runner(
        "--quick", "--only", "version", "dir-3x10mib-2-workers", "--against", other, "--json", out
    )
    assert p.returncode in (0, 1), p.stderr  # within budget or not: the machine's say
    results = {r["name"]: r for r in json.loads(out.read_text())}
    for r in results.values():
        assert r["against_median_s"] > 0 and r["ours_over_theirs"] > 0
    calls = log.read_text().splitlines()
    assert "--version" in calls
    assert any("--dir" in c and "--workers 2" in c and "--output json" in c for c in calls)
    assert "theirs s" in p.stdout


def test_the_floor_is_the_median_of_its_measurements(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """One measurement of the tools' own runs varies by a third on this machine: the judged
    floor is the median of three, each measured afresh."""
    from benches import budget_check as bc

    measured = iter([0.9, 1.4, 1.0])
    calls: list[Path] = []

    def one(s, out_bytes, work):  # type: ignore[no-untyped-def]
        calls.append(work)
        return next(measured)

    monkeypatch.setattr(bc, "_floor", one)
    s = bc.Scenario("x", "single", floor="read")
    assert bc._floor_median(s, 0, tmp_path, bc.FLOOR_REPEAT) == 1.0 and len(calls) == 3


def test_runs_floors_and_start_ups_alternate(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """This machine's speed drifts within minutes: each round runs ours, theirs, the start-up
    and the floor once, and the medians of the rounds are judged."""
    from benches import budget_check as bc

    order: list[str] = []
    ours = iter([2.0, 1.0, 3.0])
    theirs = iter([5.0, 4.0, 6.0])
    startups = iter([0.2, 0.1, 0.1, 0.3])  # the first one is the warm-up
    floors = iter([1.0, 0.5, 0.7])

    def run_once(cmd, s, work, workers=None):  # type: ignore[no-untyped-def]
        mine = cmd == ["ours"]
        order.append("ours" if mine else "theirs")
        return (next(ours) if mine else next(theirs)), 1, 100

    def startup_once(cmd, s, work):  # type: ignore[no-untyped-def]
        order.append("startup")
        return next(startups)

    def floor(s, out_bytes, work):  # type: ignore[no-untyped-def]
        assert out_bytes == 100
        order.append("floor")
        return next(floors)

    monkeypatch.setattr(bc, "_run_once", run_once)
    monkeypatch.setattr(bc, "_startup_once", startup_once)
    monkeypatch.setattr(bc, "_floor", floor)
    s = bc.Scenario("x", "dir", floor="read+startup")
    runs, their, startup, judged = bc._alternating(s, 3, "theirs", ["ours"], tmp_path)
    assert order == ["startup"] + ["ours", "theirs", "startup", "floor"] * 3
    assert [r[0] for r in runs] == [2.0, 1.0, 3.0] and their == [5.0, 4.0, 6.0]
    assert startup is None  # judged whole, not beyond start-up
    assert judged == 0.7 + 0.1  # the floors' median plus the start-ups' median
