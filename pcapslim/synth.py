"""Synthetic captures: frame builders and classic pcap / pcapng writers.

Used by the fixture script, the tests and the benchmark generator to build captures whose every
byte is known. Builders return bytes; checksums are filled in unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .constants import (
    ETH_TYPE_IP,
    ETH_TYPE_IP6,
    ETH_TYPE_MPLS_UC,
    IP_PROTO_AH,
    IP_PROTO_DSTOPTS,
    IP_PROTO_FRAGMENT,
    IP_PROTO_HOPOPTS,
    IP_PROTO_ROUTING,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_BOM,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_SHB,
)

ZERO_MAC = b"\0" * 6


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --- link layers ----------------------------------------------------------------------------


def ether(
    payload: bytes, etype: int, tags: Sequence[tuple[int, int]] = (), trailer: bytes = b""
) -> bytes:
    """Ethernet II; tags are (tag EtherType, VLAN id) pairs, outermost first."""
    # each tag's inner type is written by the next tag (or the real EtherType)
    out = ZERO_MAC + bytes.fromhex("020000000001")
    types = [t for t, _ in tags] + [etype]
    out += struct.pack("!H", types[0])
    for i, (_, vid) in enumerate(tags):
        out += struct.pack("!HH", vid & 0x0FFF, types[i + 1])
    return out + payload + trailer


def mpls(
    payload: bytes,
    labels: Sequence[int],
    tags: Sequence[tuple[int, int]] = (),
    etype: int = ETH_TYPE_MPLS_UC,
) -> bytes:
    """Ethernet carrying an MPLS label stack (unicast, or multicast with ETH_TYPE_MPLS_MC); the
    last label is bottom of stack."""
    return ether(mpls_stack(labels) + payload, etype, tags)


def mpls_stack(labels: Sequence[int]) -> bytes:
    stack = b""
    for i, label in enumerate(labels):
        bottom = 1 if i == len(labels) - 1 else 0
        stack += struct.pack("!I", (label << 12) | (bottom << 8) | 64)
    return stack


def sll(payload: bytes, proto: int) -> bytes:
    """Linux cooked capture header (16 bytes)."""
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", proto) + payload


def sll2(payload: bytes, proto: int) -> bytes:
    """Linux cooked capture v2 header (20 bytes)."""
    return struct.pack("!HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + payload


def null(payload: bytes, family: int, little_endian: bool = True) -> bytes:
    """BSD loopback header: 4-byte address family."""
    return struct.pack("<I" if little_endian else ">I", family) + payload


# --- network layer --------------------------------------------------------------------------


def ipv4(
    payload: bytes,
    proto: int,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    options: bytes = b"",
    flags_frag: int = 0x4000,
    total_len: int | None = None,
    ttl: int = 64,
    ident: int = 1,
) -> bytes:
    """IPv4 header (options padded to 4 bytes) + payload, header checksum filled in."""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    total = 20 + len(options) + len(payload) if total_len is None else total_len
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            total,
            ident,
            flags_frag,
            ttl,
            proto,
            0,
            addr(src),
            addr(dst),
        )
        + options
    )
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


@dataclass
class Ext:
    """An IPv6 extension header: `kind` is its protocol number, `body` follows the 2 bytes of
    next-header and length (and for a fragment header, the 6 bytes after next-header)."""

    kind: int
    body: bytes = field(default=b"\0" * 6)


def hop_by_hop(size: int = 8) -> Ext:
    return Ext(IP_PROTO_HOPOPTS, b"\x01" + bytes([size - 4]) + b"\0" * (size - 4))


def dest_opts(size: int = 8) -> Ext:
    return Ext(IP_PROTO_DSTOPTS, b"\x01" + bytes([size - 4]) + b"\0" * (size - 4))


def routing(rtype: int, segments_left: int, addresses: Sequence[str]) -> Ext:
    body = bytes([rtype, segments_left]) + b"\0" * 4 + b"".join(addr(a) for a in addresses)
    return Ext(IP_PROTO_ROUTING, body)


def fragment(offset: int = 0, more: bool = False, ident: int = 7) -> Ext:
    return Ext(IP_PROTO_FRAGMENT, struct.pack("!HI", (offset << 3) | int(more), ident))


def auth_header(icv_words: int = 3) -> Ext:
    return Ext(IP_PROTO_AH, b"\0" * 2 + struct.pack("!II", 0x100, 1) + b"\0" * (4 * icv_words))


def _ext_bytes(ext: Ext, nxt: int) -> bytes:
    if ext.kind == IP_PROTO_FRAGMENT:
        return bytes([nxt, 0]) + ext.body
    size = 2 + len(ext.body)
    if ext.kind == IP_PROTO_AH:
        return bytes([nxt, size // 4 - 2]) + ext.body
    return bytes([nxt, size // 8 - 1]) + ext.body


def ipv6(
    payload: bytes,
    proto: int,
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    *,
    ext: Sequence[Ext] = (),
    payload_len: int | None = None,
) -> bytes:
    """IPv6 header, extension headers in order, then payload."""
    chain = b""
    kinds = [e.kind for e in ext] + [proto]
    for i, e in enumerate(ext):
        chain += _ext_bytes(e, kinds[i + 1])
    plen = len(chain) + len(payload) if payload_len is None else payload_len
    hdr = struct.pack("!IHBB16s16s", 0x60000000, plen, kinds[0], 64, addr(src), addr(dst))
    return hdr + chain + payload


# --- transport layer ------------------------------------------------------------------------


def tcp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    options: bytes = b"",
    seq: int = 1,
    flags: int = 0x18,
) -> bytes:
    """TCP header (checksum 0: fill it with `with_l4_checksum`) + payload."""
    options += b"\0" * (-len(options) % 4)
    doff = 5 + len(options) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, 1, doff << 4, flags, 65535, 0, 0)
        + options
        + payload
    )


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def with_l4_checksum(packet: bytes, src: str, dst: str) -> bytes:
    """Fill in the TCP or UDP checksum of an IPv4/IPv6 packet built without extension headers
    or options. `src`/`dst` give the pseudo-header addresses."""
    ver = packet[0] >> 4
    if ver == 4:
        ihl = (packet[0] & 15) * 4
        proto = packet[9]
        l4 = ihl
        seg = packet[l4:]
        pseudo = addr(src) + addr(dst) + bytes([0, proto]) + struct.pack("!H", len(seg))
    else:
        proto = packet[6]
        l4 = 40
        seg = packet[l4:]
        pseudo = addr(src) + addr(dst) + struct.pack("!I", len(seg)) + bytes([0, 0, 0, proto])
    off = 16 if proto == IP_PROTO_TCP else 6
    c = checksum(pseudo + seg[:off] + b"\0\0" + seg[off + 2 :])
    if proto == IP_PROTO_UDP and c == 0:
        c = 0xFFFF
    return packet[: l4 + off] + struct.pack("!H", c) + packet[l4 + off + 2 :]


def eth_ip(packet: bytes) -> bytes:
    """An IP packet in an untagged Ethernet frame, EtherType by version."""
    return ether(packet, ETH_TYPE_IP if packet[0] >> 4 == 4 else ETH_TYPE_IP6)


# --- files ----------------------------------------------------------------------------------


@dataclass
class Record:
    frame: bytes
    ts: int = 0  # seconds
    frac: int = 0  # micro- or nanoseconds
    orig_len: int | None = None
    iface: int = 0  # pcapng only
    options: bytes = b""  # pcapng only: raw option bytes (without end-of-options)


def pcap_bytes(
    records: Iterable[Record],
    linktype: int = 1,
    *,
    little_endian: bool = True,
    nanosecond: bool = False,
    snaplen: int = 262144,
) -> bytes:
    o = "<" if little_endian else ">"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for r in records:
        orig = len(r.frame) if r.orig_len is None else r.orig_len
        out.append(struct.pack(o + "IIII", r.ts, r.frac, len(r.frame), orig) + r.frame)
    return b"".join(out)


def pcapng_block(btype: int, body: bytes, little_endian: bool = True) -> bytes:
    o = "<" if little_endian else ">"
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(o + "II", btype, n) + body + struct.pack(o + "I", n)


def pcapng_option(code: int, value: bytes, little_endian: bool = True) -> bytes:
    o = "<" if little_endian else ">"
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_shb(little_endian: bool = True, section_len: int = -1, options: bytes = b"") -> bytes:
    o = "<" if little_endian else ">"
    return pcapng_block(
        PCAPNG_SHB, struct.pack(o + "IHHq", PCAPNG_BOM, 1, 0, section_len) + options, little_endian
    )


def pcapng_idb(
    linktype: int, snaplen: int = 262144, little_endian: bool = True, options: bytes = b""
) -> bytes:
    o = "<" if little_endian else ">"
    return pcapng_block(
        PCAPNG_IDB, struct.pack(o + "HHI", linktype, 0, snaplen) + options, little_endian
    )


def pcapng_epb(r: Record, little_endian: bool = True) -> bytes:
    o = "<" if little_endian else ">"
    orig = len(r.frame) if r.orig_len is None else r.orig_len
    ts = r.ts * 1_000_000 + r.frac
    body = struct.pack(o + "IIIII", r.iface, ts >> 32, ts & 0xFFFFFFFF, len(r.frame), orig)
    body += r.frame + b"\0" * (-len(r.frame) % 4) + r.options
    return pcapng_block(PCAPNG_EPB, body, little_endian)


def pcapng_bytes(
    records: Iterable[Record],
    linktypes: Sequence[int] = (1,),
    *,
    little_endian: bool = True,
    snaplen: int = 262144,
    section_len: int = -1,
) -> bytes:
    """One section: header, one interface per link type, then the records as EPBs."""
    out = [pcapng_shb(little_endian, section_len)]
    out += [pcapng_idb(lt, snaplen, little_endian) for lt in linktypes]
    out += [pcapng_epb(r, little_endian) for r in records]
    return b"".join(out)
