"""Check pcap-slim against the budgets in benches/budgets.toml.

    python -m benches.budget_check [--quick] [--budgets FILE] [--json OUT] [--repeat N]
                                   [--against PATH] [--only NAME ...]

Builds the inputs with the realistic generator (cached under benches/data/), runs every
scenario `repeat` times as a whole process on fresh copies with a warm page cache, and reports
the median, min and max wall time, the floor measured in the same run, the ratio to it, MB/s and
the peak resident memory of the process (a memory-mapped input counts in it). A `scaling`
scenario runs the same `--dir` job with one worker and with `workers`, alternating, and judges
the speed-up of the throughput. Exits 1 when a budget is exceeded, 2 when the budgets file is
malformed.

With --against PATH the same scenarios also run with that binary (same flags) and the table
shows both times and ours / theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benches.floors import unlink_floor, write_floor
from benches.gen_capture import cached, ensure

HERE = Path(__file__).parent
DATA = HERE / "data"
DEFAULT_BUDGETS = HERE / "budgets.toml"
KINDS = ("startup", "single", "dir", "cold", "scaling")
SAMPLE = HERE.parent / "samples" / "loopback_mixed.pcap"  # input = "sample"
FLOOR_PARTS = ("read", "write", "unlink", "decompress", "compress", "inplace", "startup")
# the command-line tools a compressed scenario's floor uses, at the levels pcapslim uses
CODEC_TOOLS = {
    "zstd": (["zstd", "-q", "-3", "-c"], ["zstd", "-dqc"], ".zst"),
    "gzip": (["gzip", "-6", "-c"], ["gzip", "-dc"], ".gz"),
}
MIB = 1 << 20
FLOOR_REPEAT = 3  # floor measurements of a scaling scenario (at most `repeat`), their median


class BudgetFileError(Exception):
    pass


@dataclass
class Scenario:
    name: str
    kind: str
    args: list[str] = field(default_factory=list)
    size_mib: float = 0.0
    files: int = 1
    packets: int | None = None
    format: str = "pcap"
    floor: str = ""
    budget: float | None = None
    budget_seconds: float | None = None
    quick: bool = False
    input: str = ""  # "sample": the bundled sample instead of a generated capture
    env: dict[str, str] = field(default_factory=dict)  # added to the command's environment
    max_rss_mib: float | None = None  # peak resident memory budget
    workers: int = 2  # scaling: the worker count compared with one worker
    min_speedup: float | None = None  # scaling: throughput with `workers` over one worker
    # judge the time beyond the start-up floor: the same command on an empty directory
    beyond_startup: bool = False
    compress: str = ""  # "zstd" or "gzip": the inputs compressed (by the command-line tool)
    fresh: bool = False  # every encrypted payload its own ciphertext (gen_capture --fresh)


@dataclass
class Result:
    name: str
    times: list[float]
    floor_s: float | None
    input_bytes: int
    peak_rss: int
    budget: float | None
    budget_seconds: float | None
    against_times: list[float] | None = None
    max_rss_mib: float | None = None
    one_worker_times: list[float] | None = None  # scaling: the same job with one worker
    min_speedup: float | None = None
    startup_s: float | None = None  # judged beyond this start-up floor, when measured

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float | None:
        if not self.floor_s:
            return None
        return (self.median - (self.startup_s or 0.0)) / self.floor_s

    @property
    def whole_ratio(self) -> float | None:
        return self.median / self.floor_s if self.floor_s else None

    @property
    def speedup(self) -> float | None:
        if not self.one_worker_times:
            return None
        start = self.startup_s or 0.0
        return (statistics.median(self.one_worker_times) - start) / (self.median - start)

    @property
    def whole_speedup(self) -> float | None:
        if not self.one_worker_times:
            return None
        return statistics.median(self.one_worker_times) / self.median

    @property
    def ok(self) -> bool:
        if self.budget is not None and (self.ratio is None or self.ratio > self.budget):
            return False
        if self.max_rss_mib is not None and self.peak_rss > self.max_rss_mib * MIB:
            return False
        if self.min_speedup is not None and (self.speedup or 0.0) < self.min_speedup:
            return False
        return not (self.budget_seconds is not None and self.median > self.budget_seconds)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "median_s": self.median,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "times_s": self.times,
            "floor_s": self.floor_s,
            "startup_s": self.startup_s,
            "ratio": self.ratio,
            "whole_ratio": self.whole_ratio,
            "budget": self.budget,
            "budget_seconds": self.budget_seconds,
            "mb_per_s": self.input_bytes / 1e6 / self.median if self.input_bytes else None,
            "peak_rss_bytes": self.peak_rss,
            "max_rss_mib": self.max_rss_mib,
            "ok": self.ok,
        }
        if self.one_worker_times:
            out["one_worker_median_s"] = statistics.median(self.one_worker_times)
            out["speedup"] = self.speedup
            out["whole_speedup"] = self.whole_speedup
            out["min_speedup"] = self.min_speedup
        if self.against_times:
            out["against_median_s"] = statistics.median(self.against_times)
            out["ours_over_theirs"] = self.median / statistics.median(self.against_times)
        return out


def load_budgets(path: Path) -> tuple[dict[str, Any], list[Scenario]]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BudgetFileError(f"{path}: {e}") from e
    scenarios = []
    for i, raw in enumerate(doc.get("scenario", []), start=1):
        try:
            s = Scenario(**raw)
        except TypeError as e:
            raise BudgetFileError(f"{path}: scenario {i}: {e}") from e
        if s.kind not in KINDS:
            raise BudgetFileError(f"{path}: {s.name}: kind must be one of {', '.join(KINDS)}")
        if s.kind == "scaling":
            if s.min_speedup is None or s.budget is not None or s.budget_seconds is not None:
                raise BudgetFileError(f"{path}: {s.name}: a scaling scenario has min_speedup only")
        elif (s.budget is None) == (s.budget_seconds is None):
            raise BudgetFileError(f"{path}: {s.name}: give exactly one of budget, budget_seconds")
        if s.budget is not None and not s.floor:
            raise BudgetFileError(f"{path}: {s.name}: a ratio budget needs a floor")
        if s.floor and any(p not in FLOOR_PARTS for p in s.floor.split("+")):
            raise BudgetFileError(f"{path}: {s.name}: floor parts are {', '.join(FLOOR_PARTS)}")
        scenarios.append(s)
    if not scenarios:
        raise BudgetFileError(f"{path}: no [[scenario]] tables")
    return doc.get("defaults", {}), scenarios


def _source(s: Scenario, index: int) -> Path:
    """The cached generated capture for file `index` of a scenario (or the bundled sample)."""
    if s.input == "sample":
        return SAMPLE
    ext = "pcapng" if s.format == "pcapng" else "pcap"
    if s.packets:
        name = f"budget_{s.packets}pkts_{index}.{ext}"
        return ensure(DATA / name, 0, s.format, seed=10 + index, max_packets=s.packets)
    name = f"budget_{s.size_mib:g}mib_{index}{'.fresh' if s.fresh else ''}.{ext}"
    plain = ensure(DATA / name, s.size_mib * MIB / 1e6, s.format, seed=10 + index, fresh=s.fresh)
    if not s.compress:
        return plain
    packer, _, suffix = CODEC_TOOLS[s.compress]

    def pack(out: Path) -> None:
        with open(out, "wb") as fh:
            subprocess.run([*packer, str(plain)], stdout=fh, check=True)

    return cached(plain.with_name(plain.name + suffix), pack)


def _slim_plain(s: Scenario) -> Path:
    """The uncompressed slim copy of a compressed scenario's input (what its floor compresses)."""
    from pcapslim import slim_file

    plain = _source(Scenario(s.name, s.kind, size_mib=s.size_mib, format=s.format,
                             fresh=s.fresh), 0)  # fmt: skip
    return cached(plain.with_name(plain.name + ".slim"), lambda out: slim_file(plain, out))


def _warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(16 << 20):
            pass


def _fresh_inputs(s: Scenario, work: Path) -> list[Path]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = s.files if s.kind in ("dir", "scaling") else 1
    copies = []
    suffix = CODEC_TOOLS[s.compress][2] if s.compress else ""
    for i in range(n):
        dst = work / f"capture_{i:04d}.{'pcapng' if s.format == 'pcapng' else 'pcap'}{suffix}"
        shutil.copyfile(_source(s, i % 8), dst)  # at most 8 distinct inputs per scenario
        copies.append(dst)
    os.sync()
    for c in copies:
        _warm(c)
    return copies


def communicate_with_peak(proc: subprocess.Popen[str]) -> tuple[str, str, int]:
    """(stdout, stderr, peak resident bytes) of a process, once it has ended. The peak is the
    kernel's high-water mark of the process's memory (VmHWM, which counts the mapped pages of
    files), read every 10 ms until the process ends: unlike sampling the resident size it
    misses no peak but one in a run's last 10 ms, and unlike wait4's ru_maxrss it does not
    start from the size of the process that forked it."""
    hwm = [0]

    def watch() -> None:
        status = f"/proc/{proc.pid}/status"
        while proc.returncode is None:
            try:
                with open(status) as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            hwm[0] = max(hwm[0], int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                break
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    return out, err, hwm[0]


def _run_once(
    cmd: list[str], s: Scenario, work: Path, workers: int | None = None
) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, output bytes) of one whole-process run."""
    env = dict(os.environ, **s.env)
    cache = None
    if s.kind == "startup":
        argv = [*cmd, *s.args]
    else:
        inputs = _fresh_inputs(s, work)
        in_dir = s.kind in ("dir", "scaling")
        target = ["--dir", str(work)] if in_dir else ["--single", str(inputs[0])]
        argv = [*cmd, *target, *s.args, "--output", "json"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if s.kind == "cold":
            cache = tempfile.mkdtemp(prefix="pcapslim-cold-")
            env["NUMBA_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    out, err, rss = communicate_with_peak(proc)
    wall = time.perf_counter() - t0
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{s.name}: {' '.join(argv)} exited {proc.returncode}: {err.strip()}")
    out_bytes = 0
    if s.kind != "startup":
        doc = json.loads(out)
        out_bytes = sum(f.get("out_bytes", 0) for f in doc["files"])
    return wall, rss, out_bytes


def _floor_median(s: Scenario, out_bytes: int, work: Path, times: int) -> float:
    """The floor measured `times` times, each on fresh copies: its median (one measurement of
    the tools' own runs varies by a third here)."""
    return statistics.median(_floor(s, out_bytes, work) for _ in range(max(times, 1)))


def _floor(s: Scenario, out_bytes: int, work: Path) -> float:
    inputs = _fresh_inputs(s, work)
    total = 0.0
    parts = s.floor.split("+")
    if "read" in parts:  # one process reads every file once
        total += _tool_seconds(["cat", *map(str, inputs)], None)
    if "write" in parts:
        total += write_floor(out_bytes, work, repeat=1)
    if "unlink" in parts:
        per_file = unlink_floor(inputs[0], work, repeat=1)
        total += per_file * len(inputs)
    if "inplace" in parts:  # benches/inplace_floor.py: the I/O of SPEC §5 alone, whole process
        in_bytes = sum(p.stat().st_size for p in inputs)
        workers = s.args[s.args.index("--workers") + 1] if "--workers" in s.args else "1"
        argv = [sys.executable, "-m", "benches.inplace_floor", "--workers", workers, "--ratio",
                str(out_bytes / max(in_bytes, 1)), *map(str, inputs)]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, cwd=Path(__file__).resolve().parent.parent)
        total += time.perf_counter() - t0
    if "decompress" in parts or "compress" in parts:
        packer, unpacker, _ = CODEC_TOOLS[s.compress]
        if "decompress" in parts:  # the input, to nowhere
            total += sum(_tool_seconds([*unpacker, str(p)], None) for p in inputs)
        if "compress" in parts:  # the slim output, into a file that is then fsynced
            total += _tool_seconds([*packer, str(_slim_plain(s))], work / "floor.out")
    shutil.rmtree(work, ignore_errors=True)
    return total


def _tool_seconds(argv: list[str], out: Path | None) -> float:
    t0 = time.perf_counter()
    with open(out or os.devnull, "wb") as fh:
        subprocess.run(argv, stdout=fh, check=True)
        if out is not None:
            fh.flush()
            os.fsync(fh.fileno())
    return time.perf_counter() - t0


def run_scenario(s: Scenario, repeat: int, against: str | None, ours: list[str]) -> Result:
    work = Path(tempfile.mkdtemp(prefix="pcapslim-budget-", dir=DATA))
    try:
        if s.kind != "startup":
            _source(s, 0)
        if s.kind in ("single", "dir", "scaling"):
            _run_once(ours, s, work)  # fill the JIT cache, where the JIT runs, first
        one_worker: list[float] | None = None
        if s.kind == "scaling":  # one worker and `workers` alternate, meeting the same machine
            runs, one_worker = [], []
            for _ in range(repeat):
                one_worker.append(_run_once(ours, s, work, workers=1)[0])
                runs.append(_run_once(ours, s, work, workers=s.workers))
            theirs = [_run_once([against], s, work)[0] for _ in range(repeat)] if against else None
            startup = _startup_floor(ours, s, work, repeat) if s.beyond_startup else None
            out_bytes = runs[-1][2]
            floor = None
            if s.floor:
                floor = _floor_median(s, out_bytes, work, min(repeat, FLOOR_REPEAT))
        else:
            runs, theirs, startup, floor = _alternating(s, repeat, against, ours, work)
        size = 0
        if s.kind != "startup":
            files = s.files if s.kind in ("dir", "scaling") else 1
            size = sum(_source(s, i % 8).stat().st_size for i in range(files))
        return Result(
            s.name,
            [r[0] for r in runs],
            floor,
            size,
            max(r[1] for r in runs),
            s.budget,
            s.budget_seconds,
            theirs,
            s.max_rss_mib,
            one_worker,
            s.min_speedup,
            startup,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _alternating(
    s: Scenario, repeat: int, against: str | None, ours: list[str], work: Path
) -> tuple[list[tuple[float, int, int]], list[float] | None, float | None, float | None]:
    """`repeat` rounds, each of one run of ours, one of theirs, one measurement of the floor
    and one of the start-up (where the scenario needs them), so that each meets the machine
    as the others do (this one's speed drifts by a third within minutes): (our runs, their
    times, the median start-up, the median floor, its start-up part included)."""
    needs_startup = s.beyond_startup or "startup" in s.floor.split("+")
    if needs_startup:
        _startup_once(ours, s, work)  # the first run after a change pays for the bytecode
    runs: list[tuple[float, int, int]] = []
    theirs: list[float] = []
    startups: list[float] = []
    floors: list[float] = []
    for _ in range(repeat):
        runs.append(_run_once(ours, s, work))
        if against:
            theirs.append(_run_once([against], s, work)[0])
        if needs_startup:
            startups.append(_startup_once(ours, s, work))
        if s.floor:
            floors.append(_floor(s, runs[-1][2], work))
    startup = statistics.median(startups) if startups else None
    floor = statistics.median(floors) if floors else None
    if floor is not None and startup is not None and "startup" in s.floor.split("+"):
        floor += startup  # the command on an empty directory
    return runs, theirs if against else None, startup if s.beyond_startup else None, floor


def _startup_once(cmd: list[str], s: Scenario, work: Path) -> float:
    """Seconds of the same command on an empty directory (see _startup_floor)."""
    empty = work / "empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir(parents=True)
    argv = [*cmd, "--dir", str(empty), *s.args, "--output", "json"]
    t0 = time.perf_counter()
    subprocess.run(argv, env=dict(os.environ, **s.env), check=True, capture_output=True)
    return time.perf_counter() - t0


def _startup_floor(cmd: list[str], s: Scenario, work: Path, repeat: int) -> float:
    """Median seconds of the same command on an empty directory: the interpreter, NumPy, the
    command and its kernels, everything a run pays before it reads a byte."""
    empty = work / "empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir(parents=True)
    argv = [*cmd, "--dir", str(empty), *s.args, "--output", "json"]
    env = dict(os.environ, **s.env)

    def run() -> None:
        subprocess.run(argv, env=env, check=True, capture_output=True)

    run()
    times = []
    for _ in range(max(repeat, 5)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _print_table(results: list[Result], against: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="pcap-slim budgets")
    for col in (
        "scenario",
        "median s",
        "min s",
        "max s",
        "floor s",
        "start-up s",
        "ratio",
        "budget",
        "MB/s",
        "peak RSS MiB",
    ):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    if against:
        t.add_column("theirs s", justify="right")
        t.add_column("ours/theirs", justify="right")
    t.add_column("ok")
    for r in results:
        j = r.to_json()
        if r.budget is not None:
            budget = f"{r.budget:g}x"
        elif r.budget_seconds is not None:
            budget = f"{r.budget_seconds:g} s"
        else:
            budget = f"speed-up {r.speedup:.2f} >= {r.min_speedup:g}"
            if r.startup_s:
                budget += f" (whole {r.whole_speedup:.2f})"
        if r.max_rss_mib is not None:
            budget += f", <= {r.max_rss_mib:g} MiB"
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        if r.ratio and r.startup_s:
            ratio += f" (whole {r.whole_ratio:.2f})"
        row = [r.name, f"{r.median:.3f}", f"{min(r.times):.3f}", f"{max(r.times):.3f}",
               f"{r.floor_s:.3f}" if r.floor_s else "-",
               f"{r.startup_s:.3f}" if r.startup_s else "-", ratio,
               budget, f"{j['mb_per_s']:.0f}" if j["mb_per_s"] else "-",
               f"{r.peak_rss / MIB:.0f}"]  # fmt: skip
        if against and "against_median_s" in j:
            row += [f"{j['against_median_s']:.3f}", f"{j['ours_over_theirs']:.2f}"]
        elif against:
            row += ["-", "-"]
        row.append("yes" if r.ok else "OVER")
        t.add_row(*row)
    Console(width=170).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budgets", type=Path, default=DEFAULT_BUDGETS)
    ap.add_argument("--quick", action="store_true", help="only the scenarios marked quick")
    ap.add_argument("--repeat", type=int, help="runs per scenario (default from the budgets)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--against", help="another slimmer binary to run the same scenarios with")
    ap.add_argument("--only", nargs="*", help="scenario names to run")
    a = ap.parse_args(argv)
    try:
        defaults, scenarios = load_budgets(a.budgets)
    except BudgetFileError as e:
        print(f"budget_check: {e}", file=sys.stderr)
        return 2
    if a.quick:
        scenarios = [s for s in scenarios if s.quick]
    if a.only:
        scenarios = [s for s in scenarios if s.name in a.only]
    repeat = a.repeat or int(defaults.get("quick_repeat" if a.quick else "repeat", 3))
    DATA.mkdir(exist_ok=True)
    _compile_bytecode()
    ours = [sys.executable, "-m", "pcapslim"]
    results = []
    for s in scenarios:
        print(f"running {s.name} ...", file=sys.stderr, flush=True)
        results.append(run_scenario(s, repeat, a.against, ours))
    _print_table(results, a.against)
    if a.json:
        a.json.write_text(json.dumps([r.to_json() for r in results], indent=1))
    over = [r.name for r in results if not r.ok]
    if over:
        print(f"over budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


def _compile_bytecode() -> None:
    """Compile the package's bytecode, as `pip install` does for an installed copy: a checkout
    run with PYTHONDONTWRITEBYTECODE set would otherwise compile every module at every start
    (about 70 ms here), which no installed command pays."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("pcapslim")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(Path(spec.origin).parent, quiet=1)


if __name__ == "__main__":
    raise SystemExit(main())
