"""Seeded random TCP conversations and UDP datagrams for the forensic rules: TLS record
streams, SSH key exchanges, cleartext, QUIC and IKE, with retransmissions, reordering, gaps and
captures that start mid-connection."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import randframes

from pcapslim import synth


def tls_stream(r: random.Random, bad: bool = False) -> bytes:
    out = b""
    types = (
        [0x16, 0x16]
        + [0x14]
        + [0x16]
        + [r.choice((0x17, 0x17, 0x17, 0x15, 0x18, 0x16)) for _ in range(r.randrange(3, 14))]
    )
    for t in types:
        n = r.choice((0, 5, 40, 300, 1400, 1448, 4000, r.randrange(0, 18433)))
        ver = b"\x03\x03"
        if bad and r.random() < 0.1:
            ver, n = b"\x03\x09", min(n, 100)  # an implausible header
        out += bytes([t]) + ver + struct.pack("!H", n) + r.randbytes(n)
    return out


def ssh_stream(r: random.Random) -> bytes:
    def packet(msg: int, n: int) -> bytes:
        pad = 4 + r.randrange(0, 8)
        body = bytes([msg]) + r.randbytes(n)
        return struct.pack("!IB", len(body) + pad + 1, pad) + body + bytes(pad)

    out = b"SSH-2.0-OpenSSH_9.6p1\r\n"
    out += packet(20, r.randrange(300, 1500)) + packet(r.choice((30, 31)), r.randrange(40, 600))
    out += packet(21, 0) + r.randbytes(r.randrange(100, 5000))  # NEWKEYS, then encrypted
    return out


def cleartext_stream(r: random.Random) -> bytes:
    parts = [b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"]
    for _ in range(r.randrange(1, 6)):
        chunk = bytearray(r.randbytes(r.randrange(30, 2000)))
        if r.random() < 0.5:
            chunk[0:3] = b"\x17\x03" + bytes([r.choice((1, 3, 4, 9))])
        parts.append(bytes(chunk))
    return b"".join(parts)


def segments(r: random.Random, stream: bytes, isn: int) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(stream):
        n = r.choice((1, 3, 60, 536, 1448, 1448, r.randrange(1, 1449)))
        out.append(((isn + at) & 0xFFFFFFFF, stream[at : at + n]))
        at += n
    return out


def perturb(r: random.Random, segs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    segs = list(segs)
    pick = r.random()
    if pick < 0.15 and len(segs) > 2:
        i = r.randrange(len(segs) - 1)
        segs.insert(r.randrange(i + 1, len(segs) + 1), segs[i])  # retransmission
    elif pick < 0.3 and len(segs) > 2:
        i = r.randrange(len(segs) - 1)
        segs[i], segs[i + 1] = segs[i + 1], segs[i]  # reordering
    elif pick < 0.4 and len(segs) > 2:
        del segs[r.randrange(len(segs))]  # a gap
    elif pick < 0.5 and len(segs) > 3:
        segs = segs[r.randrange(1, len(segs) - 1) :]  # capture starts mid-connection
    return segs


@dataclass
class IpShape:
    """The IP header a conversation's packets carry besides the addresses: IPv4 options, or an
    IPv6 extension chain (both may change the pseudo-header of a cut packet)."""

    v4_options: bytes = b""
    v6_chain: tuple[synth.Ext, ...] = ()


def ip_shape(r: random.Random, v6: bool) -> IpShape:
    if v6:
        chain = randframes.ip6_chain(r, walkable=True)
        return IpShape(v6_chain=tuple(chain))
    opts = b""
    if r.random() < 0.3:
        opts = r.choice(
            (
                b"\x01\x01\x01\x00",  # NOPs, end of list
                bytes([0x83, 7, 4]) + bytes([198, 51, 100, 9]) + b"\x00",  # loose source route
                bytes([0x89, 11, 4]) + bytes(8) + b"\x01",  # strict source route, two hops
                bytes([0x44, 8, 5, 0]) + bytes(4),  # timestamp
            )
        )
    return IpShape(v4_options=opts)


def _ip(v6: bool, shape: IpShape, src: str, dst: str, seg: bytes, proto: int) -> bytes:
    if v6:
        return synth.ipv6(seg, proto, src, dst, ext=list(shape.v6_chain))
    return synth.ipv4(seg, proto, src, dst, options=shape.v4_options)


def conversation(r: random.Random, n: int, shaped: bool = False) -> list[bytes]:
    """The IP packets of one TCP conversation, in the order the capture sees them; with
    `shaped`, IPv4 options and IPv6 extension headers on its packets."""
    kind = r.choice(("tls", "tls", "tls_bad", "ssh", "ssh", "clear", "random"))
    v6 = r.random() < 0.3
    c = f"2001:db8::{n + 1:x}" if v6 else f"10.1.{n // 250}.{n % 250 + 1}"
    s = "2001:db8:ff::1" if v6 else "192.0.2.1"
    port = {"tls": r.choice((443, 8443, 9443, 4433)), "tls_bad": r.choice((443, 9443)),
            "ssh": r.choice((22, 2222)), "clear": r.choice((80, 8080, 443, 22)),
            "random": r.choice((22, 443, 5000))}[kind]  # fmt: skip
    cport = 30000 + n
    if kind.startswith("tls"):
        up, down = tls_stream(r, kind == "tls_bad"), tls_stream(r, kind == "tls_bad")
    elif kind == "ssh":
        up, down = ssh_stream(r), ssh_stream(r)
    elif kind == "clear":
        up, down = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", cleartext_stream(r)
    else:
        up, down = r.randbytes(r.randrange(0, 3000)), r.randbytes(r.randrange(0, 6000))
    ups = perturb(r, segments(r, up, r.randrange(1 << 32)))
    downs = perturb(r, segments(r, down, r.randrange(1 << 32)))
    shape = ip_shape(r, v6) if shaped else IpShape()
    packets = []
    while ups or downs:
        side = ups if (ups and (not downs or r.random() < 0.5)) else downs
        seq, data = side.pop(0)
        if side is ups:
            seg = synth.tcp(cport, port, data, seq=seq)
            packets.append(_ip(v6, shape, c, s, seg, 6))
        else:
            seg = synth.tcp(port, cport, data, seq=seq)
            packets.append(_ip(v6, shape, s, c, seg, 6))
    return packets


def udp_datagram(r: random.Random, n: int) -> bytes:
    """One QUIC or IKE datagram as an IP packet."""
    if r.random() < 0.5:
        ptype = r.randrange(4)
        first = r.choice((0xC0 | (ptype << 4), 0x40, 0x80 | (ptype << 4)))
        version = r.choice((1, 1, 0x6B3343CF, 0, 0xFF00001D))
        payload = bytes([first]) + struct.pack("!I", version) + r.randbytes(r.randrange(20, 1250))
        ports = (40000 + n, 443)
    else:
        major = r.choice((1, 2, 3))
        hdr = (
            r.randbytes(16)
            + bytes([33, major << 4, r.choice((34, 35, 37, 2, 5)), r.choice((0, 1, 8, 9))])
            + r.randbytes(8)
        )
        payload = hdr + r.randbytes(r.randrange(0, 400))
        ports = (500, 500)
        if r.random() < 0.5:
            ports = (4500, 4500)
            payload = (b"\0\0\0\0" if r.random() < 0.6 else r.randbytes(4)) + payload
    if r.random() < 0.5:
        ports = ports[::-1]
    return synth.ipv4(synth.udp(ports[0], ports[1], payload), 17, "10.9.0.1", "10.9.0.2")


def capture_packets(
    seed: int, conversations: int, datagrams: int, shaped: bool = False
) -> list[bytes]:
    """IP packets of conversations interleaved (each keeps its own order) and UDP datagrams
    among them."""
    r = random.Random(seed)
    queues = [conversation(r, i, shaped) for i in range(conversations)]
    queues += [[udp_datagram(r, i)] for i in range(datagrams)]
    packets = []
    while queues:
        q = r.choice(queues)
        packets.append(q.pop(0))
        if not q:
            queues.remove(q)
    return packets


def capture_frames(seed: int, conversations: int, datagrams: int) -> list[bytes]:
    """The same as Ethernet frames."""
    return [synth.eth_ip(p) for p in capture_packets(seed, conversations, datagrams)]
