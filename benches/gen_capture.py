"""Generate a realistic mixed capture of a given size, fast.

    python -m benches.gen_capture OUT --size-mb 1024 [--format pcap|pcapng] [--seed 1]

The mix is TLS-heavy like a sensor on an office uplink: TLS 1.2/1.3 on 443 (handshakes and
1400-byte application-data segments), TLS on other ports (8443, and 4433/9443 which only the
0x17 rule catches), plain HTTP, DNS, QUIC on UDP 443, SSH, IKE/NAT-T, bare ACKs; about a tenth
VLAN-tagged, a fifth IPv6, and a few snaplen-cut frames. Frames come from a pool of templates
with varied addresses and ports; timestamps advance steadily.
"""

from __future__ import annotations

import argparse
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcapslim import synth

# (name, share of packets)
MIX = (
    ("tls_appdata_443", 0.50),
    ("tls_handshake_443", 0.03),
    ("tls_appdata_8443", 0.04),
    ("tls_appdata_unlisted", 0.04),
    ("ack", 0.18),
    ("http", 0.07),
    ("dns", 0.04),
    ("quic", 0.05),
    ("ssh", 0.03),
    ("ipsec", 0.02),
)
SNAPLEN_CUT_SHARE = 0.01
VLAN_SHARE = 0.10
IPV6_SHARE = 0.20
TEMPLATES_PER_KIND = 64


ENCRYPTED = ("tls_appdata_443", "tls_appdata_8443", "tls_appdata_unlisted", "quic", "ssh", "ipsec")
FRESH_AFTER = 8  # payload bytes kept from the template (record header, packet type) when fresh


@dataclass
class Template:
    frame: bytes
    orig_len: int
    fresh: tuple[int, int] | None = None  # ciphertext in the frame: (offset, length)


def _payload(r: random.Random, kind: str) -> tuple[int, int, int, bytes]:
    """(protocol, client port side, server port, payload)"""
    if kind.startswith("tls_appdata"):
        port = {"tls_appdata_443": 443, "tls_appdata_8443": 8443}.get(kind, r.choice((4433, 9443)))
        n = r.choice((1400, 1400, 1400, 1400, 900, 300))
        return (
            6,
            r.randrange(32768, 61000),
            port,
            b"\x17\x03\x03" + struct.pack("!H", n - 5) + r.randbytes(n - 5),
        )
    if kind == "tls_handshake_443":
        n = r.choice((517, 1400, 1400, 250))
        return (
            6,
            r.randrange(32768, 61000),
            443,
            b"\x16\x03\x01" + struct.pack("!H", n - 5) + r.randbytes(n - 5),
        )
    if kind == "ack":
        return 6, r.randrange(32768, 61000), r.choice((443, 443, 80, 22)), b""
    if kind == "http":
        body = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
            + b"<p>hello</p>" * r.randrange(1, 110)
        )
        return 6, r.randrange(32768, 61000), 80, body
    if kind == "dns":
        return 17, r.randrange(32768, 61000), 53, r.randbytes(r.randrange(30, 300))
    if kind == "quic":
        return 17, r.randrange(32768, 61000), 443, b"\x41" + r.randbytes(r.choice((1199, 1250, 60)))
    if kind == "ssh":
        return 6, r.randrange(32768, 61000), 22, r.randbytes(r.choice((52, 100, 1400)))
    return 17, 4500, 4500, r.randbytes(r.choice((120, 1400)))


def _template(r: random.Random, kind: str) -> Template:
    proto, cport, sport, payload = _payload(r, kind)
    if r.random() < 0.5:
        cport, sport = sport, cport
    seg = (
        synth.tcp(
            cport,
            sport,
            payload,
            seq=r.randrange(1 << 32),
            flags=0x10 if not payload else 0x18,
            options=b"\x01\x01\x08\x0a" + r.randbytes(8),
        )
        if proto == 6
        else synth.udp(cport, sport, payload)
    )
    if r.random() < IPV6_SHARE:
        pkt = synth.ipv6(
            seg,
            proto,
            f"2001:db8:{r.randrange(1, 999):x}::{r.randrange(1, 999):x}",
            f"2001:db8:ffff::{r.randrange(1, 999):x}",
        )
        etype = 0x86DD
    else:
        pkt = synth.ipv4(
            seg,
            proto,
            f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
            f"172.16.{r.randrange(256)}.{r.randrange(1, 255)}",
            ident=r.randrange(65536),
        )
        etype = 0x0800
    tags = [(0x8100, r.randrange(1, 4095))] if r.random() < VLAN_SHARE else []
    frame = synth.ether(pkt, etype, tags)
    if len(frame) < 60:
        frame += bytes(60 - len(frame))  # Ethernet minimum: padding, not payload
    orig = len(frame)
    if r.random() < SNAPLEN_CUT_SHARE:
        frame = frame[:96]
    fresh = None
    at = frame.find(payload[:32]) if kind in ENCRYPTED and len(payload) > 32 else -1
    if at >= 0:
        start = at + FRESH_AFTER
        fresh = (start, min(len(payload) - FRESH_AFTER, len(frame) - start))
    return Template(frame, orig, fresh)


def generate(
    out: Path,
    size_mb: float,
    fmt: str = "pcap",
    seed: int = 1,
    max_packets: int | None = None,
    fresh: bool = False,
) -> int:
    """Write the capture (about size_mb MB, or exactly max_packets packets); return its packet
    count. With `fresh`, every encrypted payload gets ciphertext of its own (as on a real link:
    compressors then find nothing to gain in it) instead of its template's."""
    r = random.Random(seed)
    kinds = [k for k, _ in MIX]
    shares = np.array([s for _, s in MIX])
    pool: list[Template] = []
    weights: list[float] = []
    for kind, share in MIX:
        for _ in range(TEMPLATES_PER_KIND):
            pool.append(_template(r, kind))
            weights.append(share / TEMPLATES_PER_KIND)
    assert len(kinds) == len(shares)
    frames = [t.frame for t in pool]
    p = np.array(weights) / np.sum(weights)
    rng = np.random.default_rng(seed)
    target = int(size_mb * 1_000_000)
    hdr_len = 16 if fmt == "pcap" else 32
    mean = float(np.dot(p, [len(f) + hdr_len + (-len(f) % 4) for f in frames]))
    written = 0
    count = 0
    ts = 1_700_000_000_000_000  # microseconds
    with open(out, "wb") as fh:
        if fmt == "pcap":
            fh.write(synth.pcap_bytes([]))
        else:
            fh.write(synth.pcapng_shb() + synth.pcapng_idb(1))
        written = fh.tell()
        while written < target if max_packets is None else count < max_packets:
            n = max(1, min(100_000, int((target - written) / mean) + 1))
            if max_packets is not None:
                n = min(100_000, max_packets - count)
            idx = rng.choice(len(pool), size=n, p=p)
            gaps = rng.integers(1, 400, size=n)
            stamps = ts + np.cumsum(gaps)
            ts = int(stamps[-1])
            parts: list[bytes] = []
            if fmt == "pcap":
                caps = np.array([len(f) for f in frames])[idx]
                origs = np.array([t.orig_len for t in pool])[idx]
                hdr = np.empty((n, 4), dtype="<u4")
                hdr[:, 0] = stamps // 1_000_000
                hdr[:, 1] = stamps % 1_000_000
                hdr[:, 2] = caps
                hdr[:, 3] = origs
                hb = hdr.tobytes()
                for k, i in enumerate(idx.tolist()):
                    parts.append(hb[16 * k : 16 * k + 16])
                    region = pool[i].fresh if fresh else None
                    if region is None:
                        parts.append(frames[i])
                    else:
                        a, n_fresh = region
                        f = frames[i]
                        parts += (f[:a], rng.bytes(n_fresh), f[a + n_fresh :])
            else:
                for k, i in enumerate(idx.tolist()):
                    t = pool[i]
                    s = int(stamps[k])
                    parts.append(
                        synth.pcapng_epb(
                            synth.Record(
                                t.frame, ts=s // 1_000_000, frac=s % 1_000_000, orig_len=t.orig_len
                            )
                        )
                    )
            chunk = b"".join(parts)
            fh.write(chunk)
            written += len(chunk)
            count += n
    return count


def cached(out: Path, write: Callable[[Path], object]) -> Path:
    """Benchmark inputs are reused across runs: `write(path)` makes `out` only when it is not
    there, under another name first, so an interrupted run never leaves a cut-short input."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        write(partial)
        partial.rename(out)
    return out


def ensure(
    out: Path,
    size_mb: float,
    fmt: str = "pcap",
    seed: int = 1,
    max_packets: int | None = None,
    fresh: bool = False,
) -> Path:
    """The capture of `generate`, made once."""
    return cached(out, lambda p: generate(p, size_mb, fmt, seed, max_packets, fresh))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--size-mb", type=float, required=True, help="approximate size in MB (10^6 bytes)"
    )
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="ciphertext of its own in every packet")
    a = ap.parse_args()
    n = generate(a.out, a.size_mb, a.format, a.seed, fresh=a.fresh)
    print(f"{a.out}: {n} packets, {a.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
