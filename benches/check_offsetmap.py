"""The offset map on a large capture: every record's old offset remaps to its new one.

    python -m benches.check_offsetmap [--size-mb 1073.8] [--format pcap|pcapng]

Slims a copy of a realistic capture in place with `pcap-slim --single FILE --offset-map` (a
whole process), then walks the original and the slim file record by record (a plain reader,
independent of pcapslim) and checks `pcapslim.offsetmap.remap` on every record start. Prints
the map's size, its breakpoints and the time the map added to the run.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benches.gen_capture import ensure
from pcapslim import offsetmap

DATA = Path(__file__).parent / "data"


def pcap_record_starts(path: Path) -> np.ndarray:
    """Offsets of the complete records of a classic pcap file (either byte order)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
        order = "<" if struct.unpack("<I", m[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        caplen = struct.Struct(order + "I")
        out, pos, size = [], 24, len(m)
        while pos + 16 <= size:
            n = caplen.unpack_from(m, pos + 8)[0]
            if pos + 16 + n > size:
                break
            out.append(pos)
            pos += 16 + n
    return np.array(out, dtype=np.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=float, default=1024 * (1 << 20) / 1e6)
    a = ap.parse_args()
    src = ensure(DATA / f"budget_{a.size_mb * 1e6 / (1 << 20):g}mib_0.pcap", a.size_mb, seed=10)
    work = DATA / "offsetmap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    target = work / "capture.pcap"
    shutil.copyfile(src, target)
    old = pcap_record_starts(src)
    runs = {}
    for flag in ("", "--offset-map"):
        shutil.copyfile(src, target)
        shutil.rmtree(work / ".slim_markers", ignore_errors=True)
        os.sync()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pcapslim", "--single", str(target)]
        subprocess.run(cmd + ([flag] if flag else []), check=True, capture_output=True)
        runs[flag or "without"] = time.perf_counter() - t0
    new = pcap_record_starts(target)
    map_file = Path(offsetmap.map_path(work / ".slim_markers" / target.name))
    t0 = time.perf_counter()
    got = offsetmap.remap(map_file, old)
    remap_s = time.perf_counter() - t0
    breaks, _ = offsetmap.load(map_file)
    ok = len(old) == len(new) and bool((got == new).all())
    print(f"{src.name}: {src.stat().st_size} bytes, {len(old)} records -> {target.stat().st_size}")
    print(f"every record remapped to its new offset: {ok}")
    print(
        f"map: {map_file.stat().st_size} bytes ({map_file.stat().st_size / len(old):.2f} per "
        f"record), {len(breaks)} breakpoints; remapping all offsets took {remap_s:.3f} s"
    )
    print(
        f"whole run: {runs['without']:.3f} s without the map, {runs['--offset-map']:.3f} s with it"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
