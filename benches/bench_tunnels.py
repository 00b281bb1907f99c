"""Tunnel benchmark (SPEC §10): the 1 GiB benchmark capture against the same packets wrapped in
VXLAN, as a cloud sensor receives them from traffic mirroring.

    python -m benches.bench_tunnels [--size-mb 1073.8] [--repeat 5] [--json OUT]

Writes the wrapped copy once (benches/data/vxlan_<size>mb.pcap: each frame inside outer
Ethernet, IPv4, UDP to 4789 with a zero checksum, as AWS and the Linux driver send it, and an
8-byte VXLAN header), then times, warm and alternating so that both meet the same machine:
analyze_file (check-only) and slim_file (with fsync) of each, under both rule sets, and a whole
`pcap-slim --single --check-only` process of each. The figure is packet throughput (both hold
the same packets): wrapped / plain, target >= 0.8. Also prints the share of bytes each keeps.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

from benches.floors import timed
from benches.gen_capture import cached, ensure

DATA = Path(__file__).parent / "data"
TARGET = 0.8  # wrapped packet throughput / plain packet throughput
OUTER = (
    bytes.fromhex("02000000000a02000000000b0800")  # Ethernet to the sensor
    + bytes.fromhex("4500") + b"\0\0" + bytes.fromhex("000040004011") + b"\0\0"  # IPv4, UDP
    + bytes([172, 31, 0, 10, 172, 31, 0, 20])
)  # fmt: skip


def wrap_vxlan(src: Path, dst: Path) -> None:
    """Each record of a classic pcap (Ethernet) inside VXLAN over IPv4 (UDP checksum zero)."""
    data = memoryview(src.read_bytes())
    out = [bytes(data[:24])]
    pos = 24
    vxlan = bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
    while pos + 16 <= len(data):
        ts, frac, incl, orig = struct.unpack_from("<IIII", data, pos)
        frame = bytes(data[pos + 16 : pos + 16 + incl])
        ip = bytearray(OUTER[14:])
        total = 20 + 8 + 8 + orig
        ip[2:4] = struct.pack("!H", total & 0xFFFF)
        s = sum(struct.unpack("!10H", ip))
        s = (s & 0xFFFF) + (s >> 16)
        ip[10:12] = struct.pack("!H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
        udp = struct.pack("!HHHH", 49152 + incl % 16384, 4789, 8 + 8 + orig, 0)
        head = OUTER[:14] + bytes(ip) + udp + vxlan
        out.append(struct.pack("<IIII", ts, frac, incl + 50, orig + 50) + head + frame)
        pos += 16 + incl
    dst.write_bytes(b"".join(out))


def _process_check(path: Path) -> float:
    cmd = [sys.executable, "-m", "pcapslim", "--single", str(path), "--check-only"]
    return timed(lambda: subprocess.run(cmd, check=True, capture_output=True))[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=float, default=1073.8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import pcapslim

    plain = ensure(DATA / f"mixed_{a.size_mb:g}mb.pcap", a.size_mb)
    wrapped = cached(DATA / f"vxlan_{a.size_mb:g}mb.pcap", lambda p: wrap_vxlan(plain, p))
    out = DATA / "bench_tunnel_out.pcap"
    files = {"plain": plain, "vxlan": wrapped}
    results: dict[str, object] = {}
    ok = True
    for rules in ("compatible", "forensic"):
        stats = {k: pcapslim.analyze_file(p, rules=rules) for k, p in files.items()}
        assert stats["plain"].in_pkts == stats["vxlan"].in_pkts
        assert stats["vxlan"].tunnels["vxlan"] == stats["vxlan"].in_pkts
        times: dict[str, dict[str, list[float]]] = {k: {"analyze": [], "slim": []} for k in files}
        for _ in range(a.repeat):
            for k, p in files.items():
                analyze = partial(pcapslim.analyze_file, p, rules=rules)
                times[k]["analyze"].append(timed(analyze)[0])
                out.unlink(missing_ok=True)
                times[k]["slim"].append(timed(partial(pcapslim.slim_file, p, out, rules=rules))[0])
        out.unlink(missing_ok=True)
        for what in ("analyze", "slim"):
            t_plain = statistics.median(times["plain"][what])
            t_vxlan = statistics.median(times["vxlan"][what])
            ratio = t_plain / t_vxlan
            ok &= ratio >= TARGET
            print(f"{rules:10} {what:7} plain {t_plain:.3f} s, vxlan {t_vxlan:.3f} s: packet "
                  f"throughput {ratio:.2f} x (target >= {TARGET})")  # fmt: skip
            results[f"{rules}-{what}"] = {"plain_s": t_plain, "vxlan_s": t_vxlan, "ratio": ratio}
        for k, s in stats.items():
            print(f"{rules:10} {k:5} keeps {s.out_bytes / s.in_bytes:.1%} of {s.in_bytes} bytes "
                  f"({s.truncated} of {s.in_pkts} packets cut)")  # fmt: skip
            results[f"{rules}-{k}-kept"] = s.out_bytes / s.in_bytes
    procs: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(a.repeat):
        for k, p in files.items():
            procs[k].append(_process_check(p))
    t_plain, t_vxlan = (statistics.median(procs[k]) for k in files)
    ratio = t_plain / t_vxlan
    ok &= ratio >= TARGET
    print(f"process --check-only plain {t_plain:.3f} s, vxlan {t_vxlan:.3f} s: {ratio:.2f} x")
    results["process-check-only"] = {"plain_s": t_plain, "vxlan_s": t_vxlan, "ratio": ratio}
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
