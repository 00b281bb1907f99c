"""The tests' shared helpers: where things are, the frames and captures most tests slim, files
and directories as the tests look at them, and waiting for something to happen."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import naive

from pcapslim import synth

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE = ROOT / "samples" / "loopback_mixed.pcap"
SAMPLE_PACKETS = 2065  # as the sample's own README (shared/samples) counts them
UNITS = ROOT / "contrib" / "systemd"


# --- frames and captures ---------------------------------------------------------------------


def tls_frame(payload: int = 200, sport: int = 443, dport: int = 50000) -> bytes:
    """An Ethernet frame of TLS application data (cut by both rule sets)."""
    return synth.eth_ip(synth.ipv4(synth.tcp(sport, dport, b"\x17\x03\x03" + bytes(payload)), 6))


def plain_frame(lines: int = 8) -> bytes:
    """An Ethernet frame of cleartext HTTP (kept)."""
    return synth.eth_ip(synth.ipv4(synth.tcp(80, 50000, b"GET / HTTP/1.1\r\n" * lines), 6))


TLS = tls_frame()
PLAIN = plain_frame()


def capture(
    n_tls: int = 3, n_plain: int = 2, *, tls: bytes = TLS, plain: bytes = PLAIN, **kw: Any
) -> bytes:
    """A classic pcap of `n_tls` TLS frames then `n_plain` cleartext ones (synth.pcap_bytes'
    options: byte order, nanoseconds, snaplen...)."""
    frames = [tls] * n_tls + [plain] * n_plain
    return synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)], **kw)


def big_capture(n_tls: int, n_plain: int = 0) -> bytes:
    """Like `capture`, with 1 kB TLS records and 1 kB cleartext ones."""
    return capture(n_tls, n_plain, tls=tls_frame(1000), plain=plain_frame(60))


def expected_slim(data: bytes) -> bytes:
    """What the naive twin (tests/naive.py, written from the spec) makes of a capture."""
    return naive.slim_bytes(data).data


# --- files and directories -------------------------------------------------------------------


def age(path: Path, seconds_ago: float) -> None:
    """Give `path` the times of `seconds_ago` seconds back."""
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def marker(path: Path) -> Path:
    return path.parent / ".slim_markers" / path.name


def marked(path: Path) -> bool:
    return marker(path).exists()


def tmps(d: Path) -> list[str]:
    """The tmp files left in a directory."""
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def listing(d: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under d: (mode, size, content of regular files) by relative path."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        out[str(p.relative_to(d))] = (st.st_mode, st.st_size, content)
    return out


def digest(p: Path) -> bytes:
    return hashlib.sha256(p.read_bytes()).digest()


# --- time ------------------------------------------------------------------------------------


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass; what it says last."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
