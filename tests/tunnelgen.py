"""Seeded random tunnel stacks (SPEC §10) around IP packets: VXLAN, Geneve, GRE with and
without its optional fields, ERSPAN II and III, GTP-U with and without its optional fields and
extension headers, IP in IP; outer IPv4 and IPv6; nested up to five deep (five is one too many);
now and then a header that does not parse (no VXLAN I flag, a Geneve version 1, GRE routing,
a GTP-U message that is no G-PDU, IP in IP whose inner version is the other one)."""

from __future__ import annotations

import random
import struct

from pcapslim import synth

KINDS = ("vxlan", "geneve", "gre", "erspan2", "erspan3", "gtpu", "ipip")


def _inner_ethernet(r: random.Random, packet: bytes) -> bytes:
    etype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    tags = [(0x8100, r.randrange(4096))] if r.random() < 0.2 else []
    return synth.ether(packet, etype, tags)


def _outer(r: random.Random, payload: bytes, proto: int, v6: bool, n: int) -> bytes:
    if v6:
        return synth.ipv6(payload, proto, f"2001:db8:10::{n + 1:x}", "2001:db8:10:ff::1")
    frag = 0x4000 if r.random() < 0.97 else 0x2000  # an outer fragment: kept
    return synth.ipv4(payload, proto, f"10.10.{n % 250}.1", "10.10.255.1", flags_frag=frag)


def _udp_outer(r: random.Random, payload: bytes, dport: int, v6: bool, n: int) -> bytes:
    sport = r.choice((dport, 40000 + n % 20000))
    pkt = _outer(r, synth.udp(sport, dport, payload), 17, v6, n)
    if v6 or r.random() < 0.5:  # computed (always over IPv6), else zero over IPv4
        src = f"2001:db8:10::{n + 1:x}" if v6 else f"10.10.{n % 250}.1"
        dst = "2001:db8:10:ff::1" if v6 else "10.10.255.1"
        pkt = synth.with_l4_checksum(pkt, src, dst)
    return pkt


def wrap_once(r: random.Random, packet: bytes, n: int, bad: bool = False) -> bytes:
    """One tunnel around an IP packet: the outer IP packet."""
    kind = r.choice(KINDS)
    v6 = r.random() < 0.3
    if kind == "vxlan":
        flags = 0x00 if bad else 0x08
        hdr = bytes([flags, 0, 0, 0]) + r.randbytes(3) + b"\0"
        return _udp_outer(r, hdr + _inner_ethernet(r, packet), r.choice((4789, 8472)), v6, n)
    if kind == "geneve":
        opt_words = r.choice((0, 0, 1, 3))
        ptype = r.choice((0x6558, 0x6558, 0x0800 if packet[0] >> 4 == 4 else 0x86DD))
        body = _inner_ethernet(r, packet) if ptype == 0x6558 else packet
        ver = 1 if bad else 0
        hdr = struct.pack("!BBH", (ver << 6) | opt_words, 0, ptype) + r.randbytes(3) + b"\0"
        return _udp_outer(r, hdr + r.randbytes(4 * opt_words) + body, 6081, v6, n)
    if kind in ("gre", "erspan2", "erspan3"):
        c, k, s = r.random() < 0.4, r.random() < 0.5, r.random() < 0.5 or kind != "gre"
        flags = (0x80 if c else 0) | (0x20 if k else 0) | (0x10 if s else 0) | (0x40 if bad else 0)
        if kind == "gre":
            ptype = r.choice((0x6558, 0x0800 if packet[0] >> 4 == 4 else 0x86DD))
            body = _inner_ethernet(r, packet) if ptype == 0x6558 else packet
        elif kind == "erspan2":  # version 1 (type II), then VLAN, session and index fields
            hdr = bytes([0x10 | r.randrange(16)]) + r.randbytes(7)
            ptype, body = 0x88BE, hdr + _inner_ethernet(r, packet)
        else:  # version 2 (type III); the O flag says an 8-byte platform subheader follows
            o = r.random() < 0.5
            hdr = bytearray(r.randbytes(12))
            hdr[0] = 0x20 | (hdr[0] & 0x0F)
            hdr[11] = (hdr[11] & 0xFE) | int(o)
            ptype = 0x22EB
            body = bytes(hdr) + (r.randbytes(8) if o else b"") + _inner_ethernet(r, packet)
        opt = b""
        if c:
            opt += b"\0\0\0\0"  # checksum and reserved, filled below
        if k:
            opt += r.randbytes(4)
        if s:
            opt += struct.pack("!I", r.randrange(1 << 32))
        gre = bytearray(struct.pack("!BBH", flags, 0, ptype) + opt + body)
        if c:
            gre[4:6] = struct.pack("!H", synth.checksum(bytes(gre)))
        return _outer(r, bytes(gre), 47, v6, n)
    if kind == "gtpu":
        pick = r.random()
        ext = b""
        if pick < 0.4:
            flags, opt = 0x30, b""
        elif pick < 0.7:
            flags, opt = 0x32, struct.pack("!HBB", r.randrange(65536), 0, 0)
        else:  # a PDU session container, then the end of the chain
            flags, opt = 0x34, struct.pack("!HBB", 0, 0, 0x85)
            ext = bytes([1, 0x10, r.randrange(64), 0])
        mtype = 254 if bad else 255
        gtp = struct.pack("!BBHI", flags, mtype, len(opt) + len(ext) + len(packet), 7)
        return _udp_outer(r, gtp + opt + ext + packet, 2152, v6, n)
    proto = 4 if packet[0] >> 4 == 4 else 41
    if bad:
        proto = 41 if proto == 4 else 4
    return _outer(r, packet, proto, v6, n)


def wrap(r: random.Random, packet: bytes, n: int) -> bytes:
    """A random stack of 1 to 5 tunnels (one in twenty holds a header that does not parse)."""
    depth = r.choice((1, 1, 1, 2, 2, 3, 4, 5))
    for _ in range(depth):
        packet = wrap_once(r, packet, n, bad=r.random() < 0.05)
    return packet


def mutate_tunnel_header(r: random.Random, frame: bytes, link: int) -> bytes:
    """Change one field of one tunnel header the frame holds (found with the twin's own walk):
    a port, flags, a version, a protocol type, a length, the outer IP's length or protocol.
    The frame as it was when it holds no tunnel."""
    import naive

    net = naive.network(frame, link)
    if net is None or not net.enclosing:
        return frame
    outer, kind = r.choice(net.enclosing)
    b = bytearray(frame)
    at = outer.l4
    assert at is not None
    pick = r.random()
    if pick < 0.2:  # the enclosing IP packet's length or protocol
        if outer.version == 4:
            if r.random() < 0.5:
                b[outer.ip + 2 : outer.ip + 4] = struct.pack("!H", r.randrange(20, len(b) + 40))
            else:
                b[outer.ip + 9] = r.choice((4, 41, 47, 17, 6))
        else:
            b[outer.ip + 4 : outer.ip + 6] = struct.pack("!H", r.randrange(0, len(b)))
    elif outer.proto == 17:
        field = r.choice(("dport", "flags", "type", "length", "udp_length"))
        if field == "dport":
            b[at + 2 : at + 4] = struct.pack("!H", r.choice((4789, 8472, 6081, 2152, 53, 443)))
        elif field == "flags" and at + 9 <= len(b):
            b[at + 8] = r.randrange(256)  # VXLAN flags, Geneve version and option length, GTP
        elif field == "type" and at + 12 <= len(b):
            b[at + 9 : at + 12] = r.randbytes(3)  # GTP message type, Geneve protocol type
        elif field == "length" and at + 12 <= len(b):
            b[at + 10 : at + 12] = struct.pack("!H", r.randrange(65536))  # GTP-U length
        elif at + 6 <= len(b):
            b[at + 4 : at + 6] = struct.pack("!H", r.randrange(65536))
    elif outer.proto == 47 and at + 4 <= len(b):
        if r.random() < 0.5:
            b[at] = r.randrange(256)  # checksum, routing, key, sequence flags
            b[at + 1] = r.choice((0, 0, 1, 7))  # version
        else:
            ptype = r.choice((0x0800, 0x86DD, 0x6558, 0x88BE, 0x22EB, 0x8847, 0x880B))
            b[at + 2 : at + 4] = struct.pack("!H", ptype)
    elif outer.proto in (4, 41) and at < len(b):
        b[at] = (r.choice((4, 6, 5)) << 4) | (b[at] & 0x0F)  # the inner version
    return bytes(b)
