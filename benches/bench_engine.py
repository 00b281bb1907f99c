"""Engine benchmark (issue: slimming engine): analyze and slim of one large capture against
the floors measured in the same run, and the forensic rules against the default ones.

    python -m benches.bench_engine [--size-mb 1073.8] [--repeat 3] [--json OUT]

Prints the read floor (`cat FILE > /dev/null`, warm cache), warm analyze_file, warm slim_file
including fsync, the write floor (write + fsync of the output size), first-call times (compile
with an empty JIT cache, and cache load), the ratios against the targets, and the peak
anonymous memory of analyze and slim. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benches.floors import PeakAnon, median_time, read_floor, timed, write_floor
from benches.gen_capture import ensure
from benches.gen_streams import ensure as ensure_streams

DATA = Path(__file__).parent / "data"
ANALYZE_TARGET = 2.0  # x read floor
SLIM_TARGET = 1.5  # x (read floor + write floor)
MEMORY_TARGET = 256 << 20
RULES = ("compatible", "forensic")
FORENSIC_TARGET = 0.7  # forensic throughput / compatible throughput, analyze and slim

FIRST_CALL = (
    "import time, pcapslim; t = time.perf_counter(); pcapslim.analyze_file({path!r}); "
    "pcapslim.slim_file({path!r}, {out!r}); print(time.perf_counter() - t)"
)


def first_call_seconds(path: Path, cache_dir: str | None) -> float:
    """Time of the first analyze + slim in a fresh interpreter (compile or cache load)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory() as tmp:
        code = FIRST_CALL.format(path=str(path), out=os.path.join(tmp, "o.pcap"))
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
    return float(out.stdout.strip().splitlines()[-1])


def alternating(
    fn: Callable[..., object], repeat: int, setup: Callable[[], object] | None = None
) -> dict[str, float]:
    """Median seconds of fn(rules="compatible") and fn(rules="forensic"), run in turns."""
    times: dict[str, list[float]] = {"compatible": [], "forensic": []}
    for _ in range(repeat):
        for rules, got in times.items():
            if setup is not None:
                setup()
            got.append(timed(partial(fn, rules=rules))[0])
    return {rules: statistics.median(got) for rules, got in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=float, default=1073.8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import pcapslim

    src = ensure(DATA / f"mixed_{a.size_mb:g}mb.pcap", a.size_mb)
    small = ensure(DATA / "mixed_5mb.pcap", 5)
    out = DATA / "bench_out.pcap"

    with tempfile.TemporaryDirectory() as cache:
        cold = first_call_seconds(small, cache)
    first_call_seconds(small, None)  # fills the package's own cache if it is empty
    cached = first_call_seconds(small, None)
    pcapslim.analyze_file(small)  # compile or load in this process before timing
    pcapslim.slim_file(small, out)

    rf = read_floor(src, a.repeat)
    with PeakAnon() as mem_a:
        an = median_time(lambda: pcapslim.analyze_file(src), a.repeat)
    with PeakAnon() as mem_s:
        sl = median_time(
            lambda: pcapslim.slim_file(src, out),
            a.repeat,
            setup=lambda: out.unlink(missing_ok=True),
        )  # a new file, like a tmp
    _, stats = timed(lambda: pcapslim.analyze_file(src))
    wf = write_floor(stats.out_bytes, DATA, a.repeat)
    out.unlink(missing_ok=True)

    # forensic rules (SPEC §8): on the template mix, and on a capture of whole conversations
    # where they have streams to follow; their runs alternate with runs of the default rules so
    # that both meet the same machine
    pcapslim.analyze_file(small, rules="forensic")
    pcapslim.slim_file(small, out, rules="forensic")
    streams = ensure_streams(DATA / f"streams_{a.size_mb:g}mb.pcap", a.size_mb)
    forensic: dict[str, dict[str, object]] = {}
    for label, path in (("template mix", src), ("conversations", streams)):
        kept = {r: pcapslim.analyze_file(path, rules=r).out_bytes for r in RULES}
        pair_an = alternating(partial(pcapslim.analyze_file, path), a.repeat)
        pair_sl = alternating(
            partial(pcapslim.slim_file, path, out),
            a.repeat,
            setup=lambda: out.unlink(missing_ok=True),
        )
        out.unlink(missing_ok=True)
        forensic[label] = {
            "input_bytes": path.stat().st_size,
            "kept_bytes": kept,
            "analyze_s": pair_an,
            "slim_s": pair_sl,
            "analyze_throughput_vs_compatible": pair_an["compatible"] / pair_an["forensic"],
            "slim_throughput_vs_compatible": pair_sl["compatible"] / pair_sl["forensic"],
        }

    size = stats.in_bytes
    res = {
        "input_bytes": size,
        "output_bytes": stats.out_bytes,
        "packets": stats.in_pkts,
        "read_floor_s": rf,
        "write_floor_s": wf,
        "analyze_s": an[0],
        "analyze_min_max_s": an[1:],
        "slim_s": sl[0],
        "slim_min_max_s": sl[1:],
        "analyze_ratio": an[0] / rf,
        "slim_ratio": sl[0] / (rf + wf),
        "first_call_empty_cache_s": cold,
        "first_call_cached_s": cached,
        "peak_anon_analyze_bytes": mem_a.peak,
        "peak_anon_slim_bytes": mem_s.peak,
        "forensic": forensic,
    }
    mb = size / 1e6
    print(
        f"input {size} bytes, {stats.in_pkts} packets, output {stats.out_bytes} bytes "
        f"({stats.out_bytes / size:.1%})"
    )
    print(f"read floor  (cat > /dev/null)  {rf:8.3f} s  {mb / rf:8.0f} MB/s")
    print(f"write floor (write + fsync)    {wf:8.3f} s")
    print(
        f"analyze_file (warm)            {an[0]:8.3f} s  {mb / an[0]:8.0f} MB/s  "
        f"ratio {res['analyze_ratio']:.2f} (target <= {ANALYZE_TARGET})"
    )
    print(
        f"slim_file incl. fsync (warm)   {sl[0]:8.3f} s  {mb / sl[0]:8.0f} MB/s  "
        f"ratio {res['slim_ratio']:.2f} (target <= {SLIM_TARGET})"
    )
    print(f"first call, empty JIT cache    {cold:8.3f} s   (5 MB file, analyze + slim)")
    print(f"first call, JIT cache on disk  {cached:8.3f} s")
    print(
        f"peak anonymous memory: analyze {mem_a.peak / 2**20:.1f} MiB, slim "
        f"{mem_s.peak / 2**20:.1f} MiB (target < {MEMORY_TARGET >> 20} MiB)"
    )
    for label, f in forensic.items():
        kept, an_s, sl_s = f["kept_bytes"], f["analyze_s"], f["slim_s"]
        size_f = f["input_bytes"]
        print(
            f"forensic rules, {label}: retained {kept['forensic'] / size_f:.1%} (compatible "
            f"{kept['compatible'] / size_f:.1%}); analyze {an_s['forensic']:.3f} s vs "
            f"{an_s['compatible']:.3f} s, slim {sl_s['forensic']:.3f} s vs "
            f"{sl_s['compatible']:.3f} s; throughput "
            f"{f['analyze_throughput_vs_compatible']:.2f} / "
            f"{f['slim_throughput_vs_compatible']:.2f} x compatible "
            f"(target >= {FORENSIC_TARGET})"
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    ok = (
        res["analyze_ratio"] <= ANALYZE_TARGET
        and res["slim_ratio"] <= SLIM_TARGET
        and max(mem_a.peak, mem_s.peak) < MEMORY_TARGET
        and all(
            min(f["analyze_throughput_vs_compatible"], f["slim_throughput_vs_compatible"])
            >= FORENSIC_TARGET
            for f in forensic.values()
        )
    )
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
