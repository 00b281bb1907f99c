"""Seeded random frames that reach every branch of the decision: link layers, tag stacks, IPv4
options, IPv6 extension chains, TCP options, the ports and first bytes the rules care about,
short and snaplen-cut frames, Ethernet trailers."""

from __future__ import annotations

import random
import struct

from pcapslim import synth

ETHER_LIKE = (1, 113, 276)
RAW = (101, 12, 14, 228, 229)
NULL = (0, 108)
UNSLICED = (105, 127, 147)
ALL_LINKS = ETHER_LIKE + RAW + NULL + UNSLICED

TCP_PORTS = (22, 22, 80, 443, 853, 465, 993, 995, 8443, 5061, 8080, 25, 3389)
UDP_PORTS = (53, 443, 500, 4500, 123, 5353)
FIRST_BYTES = (0x14, 0x15, 0x16, 0x17, 0x17, 0x17, 0x18, 0x00, 0x47, 0x53, 0xFF)
PAYLOAD_LENS = (0, 1, 4, 23, 24, 25, 26, 40, 100, 517, 1400)


def _payload(r: random.Random) -> bytes:
    n = r.choice(PAYLOAD_LENS) if r.random() < 0.8 else r.randrange(0, 1600)
    body = bytearray(r.randbytes(n))
    if n and r.random() < 0.7:
        body[0] = r.choice(FIRST_BYTES)
    if n >= 4 and r.random() < 0.15:
        body[:4] = b"SSH-"
    if n >= 3 and body and body[0] == 0x17 and r.random() < 0.5:
        body[1:3] = b"\x03\x03"
    return bytes(body)


def _ip4_options(r: random.Random) -> bytes:
    opts = b""
    for _ in range(r.randrange(0, 4)):
        kind = r.random()
        if kind < 0.25:
            opts += b"\x01"
        elif kind < 0.55:
            hops = r.randrange(0, 4)
            t = r.choice((0x83, 0x89, 0x03, 0x09, 0xA3))
            ln = 3 + 4 * hops
            if r.random() < 0.2:
                ln = r.choice((2, 5, 6, 7))
            body = bytes([4]) + r.randbytes(max(ln - 3, 0))
            opts += bytes([t, ln]) + body[: max(ln - 2, 0)]
        elif kind < 0.7:
            opts += b"\x00"
        elif kind < 0.85:
            opts += bytes([0x44, 8, 5, 0]) + r.randbytes(4)  # timestamp
        else:
            opts += bytes([r.randrange(2, 256), r.choice((0, 1, 2, 4, 40))]) + r.randbytes(2)
    return opts[:40]


def ip6_chain(r: random.Random, walkable: bool = False) -> list[synth.Ext]:
    """A random IPv6 extension chain; `walkable` leaves out what ends the walk (fragments, ESP,
    no-next, unknown headers), as the packets of a conversation carry."""
    chain: list[synth.Ext] = []
    for _ in range(r.choice((0, 0, 1, 2, 3))):
        pick = r.random() * (0.85 if walkable else 1.0)
        if pick < 0.2:
            chain.append(synth.hop_by_hop(r.choice((8, 16))))
        elif pick < 0.4:
            chain.append(synth.dest_opts(r.choice((8, 24))))
        elif pick < 0.7:
            rtype = r.choice((0, 2, 4, 3))
            n = 1 if rtype == 2 else r.randrange(0, 4)
            addrs = [f"2001:db8:{r.randrange(1, 99)}::{r.randrange(1, 99)}" for _ in range(n)]
            chain.append(synth.routing(rtype, r.choice((0, 1, 2)), addrs))
        elif pick < 0.85:
            chain.append(synth.auth_header(r.choice((1, 3))))
        elif pick < 0.95:
            chain.append(synth.fragment(r.randrange(0, 3), r.random() < 0.5))
        else:
            chain.append(synth.Ext(r.choice((50, 59, 135)), b"\0" * 6))
    return chain


def _transport(r: random.Random) -> tuple[int, bytes]:
    pick = r.random()
    payload = _payload(r)
    if pick < 0.6:
        ports = [r.choice(TCP_PORTS), r.randrange(1024, 65536)]
        r.shuffle(ports)
        opts = r.randbytes(r.choice((0, 0, 4, 12, 40)))
        seg = bytearray(synth.tcp(ports[0], ports[1], payload, options=opts))
        if r.random() < 0.05:
            seg[12] = r.randrange(0, 5) << 4  # data offset below 5
        if r.random() < 0.03:
            seg[12] = 0xF0  # data offset past the frame
        return 6, bytes(seg)
    if pick < 0.9:
        ports = [r.choice(UDP_PORTS), r.randrange(1024, 65536)]
        r.shuffle(ports)
        return 17, synth.udp(ports[0], ports[1], payload)
    return r.choice((1, 47, 50, 132)), payload


def ip_packet(r: random.Random, version: int) -> bytes:
    proto, seg = _transport(r)
    if version == 4:
        flags = r.choice((0x4000, 0x4000, 0x0000, 0x2000, 0x0001, 0x6000, 0x4005))
        src = f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        dst = f"192.168.{r.randrange(256)}.{r.randrange(1, 255)}"
        pkt = synth.ipv4(seg, proto, src, dst, options=_ip4_options(r), flags_frag=flags)
        pkt = bytearray(pkt)
        pick = r.random()
        if pick < 0.05:
            pkt[2:4] = b"\0\0"  # segmentation offload
        elif pick < 0.12:
            pkt[2:4] = struct.pack("!H", r.randrange(0, len(pkt) + 50))
        if r.random() < 0.03:
            pkt[0] = 0x40 | r.randrange(0, 5)  # IHL below 5
        if r.random() < 0.02:
            pkt[0] = (pkt[0] & 0x0F) | 0x60  # wrong version nibble
        return bytes(pkt)
    pkt = bytearray(synth.ipv6(seg, proto, ext=ip6_chain(r)))
    if r.random() < 0.08:
        pkt[4:6] = struct.pack("!H", r.choice((0, r.randrange(0, len(pkt)))))
    return bytes(pkt)


def _tags(r: random.Random) -> list[tuple[int, int]]:
    return [
        (r.choice((0x8100, 0x88A8, 0x9100)), r.randrange(4096))
        for _ in range(r.choice((0, 0, 0, 1, 2, 3)))
    ]


MPLS_TYPES = (0x8847, 0x8848)  # unicast, multicast


def link_frame(r: random.Random, pkt: bytes, link: int, etype: int) -> bytes:
    """An IP packet (or whatever `etype` says it is) in a random frame of link type `link`:
    VLAN/QinQ tag stacks and MPLS unicast and multicast label stacks on the Ethernet-like
    types, trailers on Ethernet, either byte order of the BSD loopback family."""
    if link in ETHER_LIKE:
        tags = _tags(r)
        use_mpls = r.random() < 0.1
        mpls_type = r.choice(MPLS_TYPES)
        labels = [r.randrange(16, 1 << 20) for _ in range(r.randrange(1, 4))]
        if link == 1:
            trailer = r.randbytes(r.choice((0, 0, 0, 4, 6, 18)))
            if use_mpls:
                return synth.mpls(pkt, labels, tags, mpls_type) + trailer
            return synth.ether(pkt, etype, tags, trailer)
        inner = b""
        types = [t for t, _ in tags] + [mpls_type if use_mpls else etype]
        for i, (_, vid) in enumerate(tags):
            inner += struct.pack("!HH", vid, types[i + 1])
        if use_mpls:
            inner += synth.mpls_stack(labels)
        return (synth.sll if link == 113 else synth.sll2)(inner + pkt, types[0])
    if link in RAW:
        return pkt
    if link in NULL:
        version = pkt[0] >> 4 if pkt else 4
        fam = 2 if version == 4 else r.choice((10, 24, 28, 30))
        if r.random() < 0.03:
            fam = 7
        return synth.null(pkt, fam, r.random() < 0.5)
    return r.randbytes(r.randrange(0, 20)) + pkt


def frame(r: random.Random, link: int) -> bytes:
    version = 4 if r.random() < 0.6 else 6
    pkt = ip_packet(r, version)
    etype = 0x0800 if version == 4 else 0x86DD
    if r.random() < 0.04:
        etype = r.choice((0x0806, 0x88CC, 0x0800 if version == 6 else 0x86DD))
    f = link_frame(r, pkt, link, etype)
    pick = r.random()
    if pick < 0.08:
        f = f[: r.randrange(0, len(f) + 1)]  # snaplen cut at any point
    elif pick < 0.1:
        f = f[: r.randrange(0, 60)]  # very short
    return f


def frames(seed: int, count: int, link: int) -> list[bytes]:
    r = random.Random(seed)
    return [frame(r, link) for _ in range(count)]
