"""Generate a capture of whole conversations, for the forensic rules.

    python -m benches.gen_streams OUT --size-mb 1024 [--seed 1]

The template mix of `gen_capture` draws each frame on its own, so no TCP direction has
sequence numbers that follow on and the forensic rules (SPEC §8) never get to track a stream.
Here every TCP connection is a real byte stream cut into 1448-byte segments with consecutive
sequence numbers and an ACK for every second segment, and the conversations of a busy uplink
are interleaved packet by packet:

- TLS 1.2 on 443: ClientHello, a server flight whose certificate chain spans four segments,
  key exchange, then application data in records of up to 16 KiB (one record spans a dozen
  segments, so most segments start inside a record);
- TLS 1.3 on 443 and 8443, and on ports no list knows (4433, 9443, 8883);
- SSH: banners, KEXINIT, ECDH, NEWKEYS, then encrypted packets;
- plain HTTP with binary bodies; DNS; QUIC on UDP 443 (Initial, Handshake, then short-header
  packets); IKEv2 (IKE_SA_INIT, IKE_AUTH, then ESP in UDP 4500);
- a fifth of the conversations over IPv6, a tenth VLAN-tagged.

Payloads are random bytes under well-formed record, packet and message headers. Checksums are
left zero (the slimmer does not read them; it writes them for the packets it cuts).
"""

from __future__ import annotations

import argparse
import copy
import random
import struct
from collections.abc import Iterator
from pathlib import Path

from benches.gen_capture import cached
from pcapslim import synth

MSS = 1448
CONCURRENT = 200  # conversations open at once
# (conversation kind, weight)
KINDS = (
    ("tls12_443", 30),
    ("tls13_443", 25),
    ("tls13_8443", 5),
    ("tls13_unlisted", 8),
    ("ssh", 4),
    ("http", 10),
    ("dns", 8),
    ("quic", 7),
    ("ike", 3),
)
UNLISTED_TLS_PORTS = (4433, 9443, 8883)

Frame = bytes


class Noise:
    """Random bytes without the cost of drawing them each time: slices of one random block."""

    def __init__(self, r: random.Random) -> None:
        self.r = r
        self.block = r.randbytes(1 << 20)

    def take(self, n: int) -> bytes:
        if n <= 0:
            return b""
        out = b""
        while len(out) < n:
            start = self.r.randrange(0, len(self.block) - 1)
            out += self.block[start : start + n - len(out)]
        return out


class Endpoints:
    """Addresses, ports and link framing of one conversation."""

    def __init__(self, r: random.Random, server_port: int) -> None:
        self.v6 = r.random() < 0.2
        self.vlan = r.randrange(2, 4000) if r.random() < 0.1 else 0
        if self.v6:
            self.client = b"\x20\x01\x0d\xb8" + r.randbytes(12)
            self.server = b"\x26\x06\x47\x00" + r.randbytes(12)
        else:
            self.client = bytes([10, r.randrange(256), r.randrange(256), r.randrange(1, 255)])
            self.server = bytes([r.randrange(1, 224), r.randrange(256), r.randrange(256), 7])
        self.cport = r.randrange(32768, 61000)
        self.sport = server_port

    def frame(self, from_client: bool, proto: int, l4: bytes) -> Frame:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        if self.v6:
            ip = struct.pack("!IHBB", 0x60000000, len(l4), proto, 64) + src + dst
            etype = 0x86DD
        else:
            hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0)
            hdr += src + dst
            ip = hdr[:10] + struct.pack("!H", synth.checksum(hdr)) + hdr[12:]
            etype = 0x0800
        eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
        if self.vlan:
            eth += struct.pack("!HH", 0x8100, self.vlan)
        return eth + struct.pack("!H", etype) + ip + l4

    def ports(self, from_client: bool) -> tuple[int, int]:
        return (self.cport, self.sport) if from_client else (self.sport, self.cport)


class Tcp:
    """One TCP connection: each direction's stream cut into segments with consecutive
    sequence numbers; the other side acknowledges every second segment."""

    def __init__(self, r: random.Random, ends: Endpoints) -> None:
        self.ends = ends
        self.seq = [r.randrange(1 << 32), r.randrange(1 << 32)]  # client, server
        self.unacked = [0, 0]

    def _segment(self, from_client: bool, payload: bytes, flags: int) -> Frame:
        d = 0 if from_client else 1
        sport, dport = self.ends.ports(from_client)
        ack = self.seq[1 - d]
        l4 = struct.pack("!HHIIBBHHH", sport, dport, self.seq[d], ack, 0x50, flags, 65535, 0, 0)
        self.seq[d] = (self.seq[d] + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
        return self.ends.frame(from_client, 6, l4 + payload)

    def handshake(self) -> Iterator[Frame]:
        yield self._segment(True, b"", 0x02)  # SYN
        yield self._segment(False, b"", 0x12)  # SYN-ACK
        yield self._segment(True, b"", 0x10)

    def send(self, from_client: bool, data: bytes) -> Iterator[Frame]:
        d = 0 if from_client else 1
        for i in range(0, len(data), MSS):
            yield self._segment(from_client, data[i : i + MSS], 0x18)
            self.unacked[d] += 1
            if self.unacked[d] == 2:
                self.unacked[d] = 0
                yield self._segment(not from_client, b"", 0x10)

    def close(self) -> Iterator[Frame]:
        yield self._segment(True, b"", 0x11)
        yield self._segment(False, b"", 0x11)
        yield self._segment(True, b"", 0x10)


def _record(rtype: int, body: bytes) -> bytes:
    return bytes([rtype]) + b"\x03\x03" + struct.pack("!H", len(body)) + body


def _handshake_msg(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def _app_data(noise: Noise, total: int) -> bytes:
    """`total` bytes of plaintext sent as TLS records of up to 16 KiB (+ 17 bytes of tag)."""
    out = []
    while total > 0:
        n = min(total, 16384)
        out.append(_record(0x17, noise.take(n + 17)))
        total -= n
    return b"".join(out)


def _response_size(r: random.Random) -> int:
    return int(min(4_000_000, r.lognormvariate(10.5, 1.4)))


def tls(r: random.Random, noise: Noise, port: int, version: int) -> Iterator[Frame]:
    conn = Tcp(r, Endpoints(r, port))
    yield from conn.handshake()
    hello = _handshake_msg(1, b"\x03\x03" + noise.take(508))
    yield from conn.send(True, _record(0x16, hello))
    if version == 12:
        chain = b"".join(noise.take(r.randrange(1100, 1700)) for _ in range(3))
        flight = _record(
            0x16,
            _handshake_msg(2, noise.take(86))
            + _handshake_msg(11, chain)
            + _handshake_msg(12, noise.take(329))
            + _handshake_msg(14, b""),
        )
        yield from conn.send(False, flight)
        yield from conn.send(
            True,
            _record(0x16, _handshake_msg(16, noise.take(66)))
            + _record(0x14, b"\x01")
            + _record(0x16, noise.take(40)),
        )
        yield from conn.send(False, _record(0x14, b"\x01") + _record(0x16, noise.take(40)))
    else:
        yield from conn.send(
            False,
            _record(0x16, _handshake_msg(2, noise.take(118)))
            + _record(0x14, b"\x01")
            + _record(0x17, noise.take(r.randrange(2500, 5200))),
        )
        yield from conn.send(True, _record(0x14, b"\x01") + _record(0x17, noise.take(53)))
    for _ in range(r.randrange(1, 6)):
        yield from conn.send(True, _app_data(noise, r.randrange(200, 900)))
        yield from conn.send(False, _app_data(noise, _response_size(r)))
    yield from conn.close()


def _ssh_packet(noise: Noise, msg: int, body_len: int) -> bytes:
    pad = 4 + (-(5 + body_len + 4) % 8)
    length = 1 + 1 + body_len + pad
    return struct.pack("!IBB", length, pad, msg) + noise.take(body_len) + bytes(pad)


def ssh(r: random.Random, noise: Noise) -> Iterator[Frame]:
    conn = Tcp(r, Endpoints(r, 22))
    yield from conn.handshake()
    yield from conn.send(False, b"SSH-2.0-OpenSSH_9.6\r\n")
    yield from conn.send(True, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    yield from conn.send(False, _ssh_packet(noise, 20, r.randrange(900, 1200)))
    yield from conn.send(True, _ssh_packet(noise, 20, r.randrange(1200, 1500)))
    yield from conn.send(True, _ssh_packet(noise, 30, 36))
    yield from conn.send(
        False, _ssh_packet(noise, 31, r.randrange(500, 700)) + _ssh_packet(noise, 21, 0)
    )
    yield from conn.send(True, _ssh_packet(noise, 21, 0))
    for _ in range(r.randrange(5, 40)):  # encrypted from here on
        yield from conn.send(True, noise.take(r.randrange(36, 120)))
        yield from conn.send(False, noise.take(r.randrange(36, 60_000)))
    yield from conn.close()


def http(r: random.Random, noise: Noise) -> Iterator[Frame]:
    conn = Tcp(r, Endpoints(r, 80))
    yield from conn.handshake()
    for _ in range(r.randrange(1, 4)):
        yield from conn.send(True, b"GET /img/7.jpg HTTP/1.1\r\nHost: example.test\r\n\r\n")
        body = noise.take(_response_size(r) // 4)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        yield from conn.send(False, head + body)
    yield from conn.close()


def _udp(ends: Endpoints, from_client: bool, payload: bytes) -> Frame:
    sport, dport = ends.ports(from_client)
    return ends.frame(
        from_client, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    )


def dns(r: random.Random, noise: Noise) -> Iterator[Frame]:
    ends = Endpoints(r, 53)
    yield _udp(ends, True, noise.take(2) + b"\x01\x00\x00\x01" + bytes(6) + noise.take(24))
    yield _udp(ends, False, noise.take(2) + b"\x81\x80\x00\x01\x00\x02" + noise.take(90))


def quic(r: random.Random, noise: Noise) -> Iterator[Frame]:
    ends = Endpoints(r, 443)
    v1 = b"\x00\x00\x00\x01"
    yield _udp(ends, True, b"\xc3" + v1 + noise.take(1195))  # Initial, padded
    yield _udp(ends, False, b"\xc1" + v1 + noise.take(1195))  # Initial
    yield _udp(ends, False, b"\xe1" + v1 + noise.take(1195))  # Handshake
    yield _udp(ends, True, b"\xe1" + v1 + noise.take(80))
    for _ in range(r.randrange(5, 200)):  # 1-RTT, short header
        yield _udp(ends, True, b"\x41" + noise.take(r.randrange(30, 60)))
        yield _udp(ends, False, b"\x41" + noise.take(r.randrange(1000, 1252)))


def ike(r: random.Random, noise: Noise) -> Iterator[Frame]:
    ends = Endpoints(r, 500)
    spi = noise.take(8)

    def msg(exchange: int, flags: int, body: int) -> bytes:
        hdr = (
            spi
            + noise.take(8)
            + bytes([33, 0x20, exchange, flags])
            + struct.pack("!II", 0, 28 + body)
        )
        return hdr + noise.take(body)

    yield _udp(ends, True, msg(34, 0x08, r.randrange(300, 500)))
    yield _udp(ends, False, msg(34, 0x20, r.randrange(300, 500)))
    nat = copy.copy(ends)  # the same hosts, NAT traversal ports
    nat.cport = nat.sport = 4500
    yield _udp(nat, True, bytes(4) + msg(35, 0x08, r.randrange(900, 1300)))
    yield _udp(nat, False, bytes(4) + msg(35, 0x20, r.randrange(900, 1300)))
    for k in range(r.randrange(10, 300)):  # ESP in UDP
        yield _udp(nat, k % 2 == 0, noise.take(4) + struct.pack("!I", k + 1) + noise.take(1300))


def conversation(r: random.Random, noise: Noise, kind: str) -> Iterator[Frame]:
    if kind == "tls12_443":
        return tls(r, noise, 443, 12)
    if kind == "tls13_443":
        return tls(r, noise, 443, 13)
    if kind == "tls13_8443":
        return tls(r, noise, 8443, 13)
    if kind == "tls13_unlisted":
        return tls(r, noise, r.choice(UNLISTED_TLS_PORTS), 13)
    return {"ssh": ssh, "http": http, "dns": dns, "quic": quic, "ike": ike}[kind](r, noise)


def generate(out: Path, size_mb: float, seed: int = 1, concurrent: int = CONCURRENT) -> int:
    """Write a classic pcap of about size_mb MB with `concurrent` conversations open at any
    time; return its packet count."""
    r = random.Random(seed)
    noise = Noise(r)
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    active = [conversation(r, noise, r.choices(names, weights)[0]) for _ in range(concurrent)]
    target = int(size_mb * 1_000_000)
    ts = 1_700_000_000_000_000  # microseconds
    count = 0
    with open(out, "wb") as fh:
        fh.write(synth.pcap_bytes([]))
        written = fh.tell()
        parts: list[bytes] = []
        while written < target:
            i = r.randrange(concurrent)
            frame = next(active[i], None)
            if frame is None:
                active[i] = conversation(r, noise, r.choices(names, weights)[0])
                continue
            ts += r.randrange(1, 200)
            parts.append(
                struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame))
            )
            parts.append(frame)
            written += 16 + len(frame)
            count += 1
            if len(parts) >= 20_000:
                fh.write(b"".join(parts))
                parts.clear()
        fh.write(b"".join(parts))
    return count


def ensure(out: Path, size_mb: float, seed: int = 1) -> Path:
    """The capture of `generate`, made once."""
    return cached(out, lambda p: generate(p, size_mb, seed))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path)
    ap.add_argument("--size-mb", type=float, required=True, help="approximate size in MB")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    n = generate(a.out, a.size_mb, a.seed)
    print(f"{a.out}: {n} packets, {a.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
