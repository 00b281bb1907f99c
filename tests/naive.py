"""Slow, obvious twins of the kernels, written straight from SPEC.md §1-4 in plain Python.

Nothing here imports pcapslim: these functions are the second implementation that the kernels
are checked against.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

KEEP = 24
TLS_PORTS = {443, 853, 465, 993, 995, 8443, 5061}
HANDSHAKE_CLASS = {0x14, 0x15, 0x16, 0x18}
VLAN_TYPES = {0x8100, 0x88A8, 0x9100}
MPLS_TYPES = {0x8847, 0x8848}
RAW_LINKS = {101, 12, 14, 228, 229}
NULL_LINKS = {0, 108}
SLICED = {1, 113, 276} | RAW_LINKS | NULL_LINKS


@dataclass
class Verdict:
    category: str | None  # None: keep
    frame: bytes  # the frame as it is written out


def _ip_start(f: bytes, link: int) -> tuple[int, int] | None:
    """(offset, version) of the IP header, or None."""

    def after_type(etype_at: int, hdr: int) -> tuple[int, int] | None:
        if len(f) < hdr:
            return None
        etype = int.from_bytes(f[etype_at : etype_at + 2], "big")
        at = hdr
        while etype in VLAN_TYPES:
            if len(f) < at + 4:
                return None
            etype = int.from_bytes(f[at + 2 : at + 4], "big")
            at += 4
        if etype in MPLS_TYPES:
            while True:
                if len(f) < at + 4:
                    return None
                label = f[at : at + 4]
                at += 4
                if label[2] & 1:
                    break
            return by_version(at)
        return {0x0800: (at, 4), 0x86DD: (at, 6)}.get(etype)

    def by_version(at: int) -> tuple[int, int] | None:
        if at >= len(f):
            return None
        v = f[at] >> 4
        return (at, v) if v in (4, 6) else None

    if link == 1:
        return after_type(12, 14)
    if link == 113:
        return after_type(14, 16)
    if link == 276:
        return after_type(0, 20)
    if link in RAW_LINKS:
        return by_version(0)
    if link in NULL_LINKS:
        if len(f) < 4:
            return None
        for order in ("little", "big"):
            fam = int.from_bytes(f[:4], order)
            if fam == 2:
                return (4, 4)
            if fam in (10, 24, 28, 30):
                return (4, 6)
    return None


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip4_route_dst(hdr: bytes) -> bytes:
    opts = hdr[20:]
    i = 0
    while i < len(opts):
        t = opts[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            break
        ln = opts[i + 1]
        if ln < 2 or i + ln > len(opts):
            break
        if (t & 0x1F) in (3, 9) and ln >= 7:
            return opts[i + ln - 4 : i + ln]
        i += ln
    return hdr[16:20]


@dataclass
class Network:
    """What the IP layer of a frame says: l4 is None when no TCP/UDP header is reachable; esp
    is where an ESP header starts (IPv4 protocol 50 not fragmented, or an IPv6 walk ending on
    next header 50), for the forensic rules of SPEC §9.6."""

    version: int
    ip: int
    proto: int
    l4: int | None
    dgram_end: int
    route_dst: bytes | None
    esp: int | None = None
    tunnels: tuple[str, ...] = ()  # §10: the kinds of tunnel crossed to reach this packet
    enclosing: tuple[tuple[Network, str], ...] = ()  # the packets around it, outermost first


def _net_at(frame: bytes, ip: int, ver: int, lim: int) -> Network | None:
    """§3 from an IP header at ip of version ver (as the link layer or a tunnel says), the
    packet captured up to lim: the walk to TCP/UDP (and to a tunnel's GRE or IP-in-IP header,
    for §10); None when the header is not a usable one of that version."""
    if ver == 4:
        if lim < ip + 20:
            return None
        ihl = (frame[ip] & 15) * 4
        if frame[ip] >> 4 != 4 or ihl < 20 or lim < ip + ihl:
            return None
        proto = frame[ip + 9]
        total = int.from_bytes(frame[ip + 2 : ip + 4], "big")
        fragment = int.from_bytes(frame[ip + 6 : ip + 8], "big") & 0x3FFF
        reachable = proto in WALK_STOPS and proto != 50 and not fragment
        esp = ip + ihl if proto == 50 and not fragment else None
        # a total length of 0 (offload) gives no payload: the datagram ends at its start
        return Network(4, ip, proto, ip + ihl if reachable else None, ip + total, None, esp)
    if lim < ip + 40 or frame[ip] >> 4 != 6:
        return None
    dgram_end = ip + 40 + int.from_bytes(frame[ip + 4 : ip + 6], "big")
    nxt = frame[ip + 6]
    at = ip + 40
    route_dst = None
    routing_seen = False
    while nxt not in WALK_STOPS:
        if nxt in (0, 43, 60):
            if lim < at + 2:
                return Network(6, ip, nxt, None, dgram_end, route_dst)
            size = 8 + 8 * frame[at + 1]
        elif nxt == 51:
            if lim < at + 2:
                return Network(6, ip, nxt, None, dgram_end, route_dst)
            size = 4 * (frame[at + 1] + 2)
        else:
            return Network(6, ip, nxt, None, dgram_end, route_dst)
        if lim < at + size:
            return Network(6, ip, nxt, None, dgram_end, route_dst)
        ext = frame[at : at + size]
        if nxt == 43 and ext[3] > 0 and not routing_seen:
            routing_seen = True
            if ext[2] == 0 and ext[1] // 2 >= 1:
                last = ext[1] // 2 - 1
                route_dst = ext[8 + 16 * last : 24 + 16 * last]
            elif ext[2] in (2, 4) and size >= 24:
                route_dst = ext[8:24]
        nxt = ext[0]
        at += size
    if nxt == 50:
        return Network(6, ip, nxt, None, dgram_end, route_dst, at)
    return Network(6, ip, nxt, at, dgram_end, route_dst)


# --- §10: tunnels ----------------------------------------------------------------------------

WALK_STOPS = (6, 17, 50, 47, 4, 41)  # TCP, UDP, ESP, GRE, IPv4 in IP, IPv6 in IP
BAD = "bad"  # a tunnel whose headers or inner packet do not parse: the packet is kept


def _inner_ethernet(f: bytes, at: int, lim: int) -> tuple[int, int] | None:
    """The IP header of an Ethernet frame at `at` (§3 with its tags and labels)."""
    found = _ip_start(f[at:lim], 1)
    return None if found is None else (at + found[0], found[1])


def _by_type(f: bytes, ptype: int, at: int, lim: int) -> tuple[int, int] | None:
    if ptype == 0x6558:
        return _inner_ethernet(f, at, lim)
    return {0x0800: (at, 4), 0x86DD: (at, 6)}.get(ptype)


def _gtpu(f: bytes, g: int, lim: int) -> tuple[int, int] | None:
    """A G-PDU's inner IP header: version 1, PT 1, type 255, 8 bytes, 4 more when E, S or PN is
    set, then each extension header (its first byte its length in 4-byte units, its last the
    next type) while the next type is not 0."""
    if lim < g + 8 or f[g] >> 5 != 1 or not f[g] & 0x10 or f[g + 1] != 255:
        return None
    at = g + 8
    if f[g] & 0x07:
        at += 4
        if lim < at:
            return None
        nxt = f[g + 11] if f[g] & 0x04 else 0
        while nxt:
            if lim < at + 1 or f[at] == 0 or lim < at + 4 * f[at]:
                return None
            size = 4 * f[at]
            nxt = f[at + size - 1]
            at += size
    if at >= lim or f[at] >> 4 not in (4, 6):
        return None
    return at, f[at] >> 4


def _tunnel(
    f: bytes, net: Network, lim: int
) -> tuple[tuple[str, ...], int | None, int] | str | None:
    """What the header at net.l4 carries (the datagram captured up to lim): (kinds, inner IP,
    its version), BAD, or None when it is no tunnel of §10's table. The inner IP is None for
    an Ethernet frame that holds no IP packet (ARP): the packet is inside, and kept."""
    at = net.l4
    assert at is not None
    if net.proto == 17:
        if lim < at + 8:
            return None
        sport, dport = struct.unpack("!HH", f[at : at + 4])
        g = at + 8
        if dport in (4789, 8472):
            if lim < g + 8 or not f[g] & 0x08:
                return BAD
            return ("vxlan",), *(_inner_ethernet(f, g + 8, lim) or (None, 0))
        if dport == 6081:
            if lim < g + 8 or f[g] >> 6 != 0:
                return BAD
            ptype = int.from_bytes(f[g + 2 : g + 4])
            found = _by_type(f, ptype, g + 8 + 4 * (f[g] & 0x3F), lim)
            if found is None and ptype != 0x6558:
                return BAD
            return ("geneve",), *(found or (None, 0))
        if 2152 in (sport, dport):
            found = _gtpu(f, g, lim)
            return BAD if found is None else (("gtpu",), *found)
        return None
    if net.proto == 47:
        if lim < at + 4 or f[at + 1] & 0x07 or f[at] & 0x40:
            return BAD
        flags = f[at]
        body = at + 4 + 4 * sum(1 for bit in (0x80, 0x20, 0x10) if flags & bit)
        ptype = int.from_bytes(f[at + 2 : at + 4])
        if ptype == 0x88BE:
            return ("gre", "erspan"), *(_inner_ethernet(f, body + 8, lim) or (None, 0))
        if ptype == 0x22EB:
            if lim < body + 12:
                return BAD
            eth = body + 12 + (8 if f[body + 11] & 1 else 0)
            return ("gre", "erspan"), *(_inner_ethernet(f, eth, lim) or (None, 0))
        found = _by_type(f, ptype, body, lim)
        if found is None and ptype != 0x6558:
            return BAD
        return ("gre",), *(found or (None, 0))
    if net.proto in (4, 41):
        want = 4 if net.proto == 4 else 6
        if at >= lim or f[at] >> 4 != want:
            return BAD
        return ("ipip",), at, want
    return None


def network(frame: bytes, link: int) -> Network | None:
    """SPEC §1 steps 1-3, §3 and §10: the IP header and the walk to TCP/UDP, through the tunnels
    of §10 to the innermost packet (at most 4 deep); None without IP. A tunnel that does not
    parse, or is deeper, gives version 0 and no transport: the packet is kept. `tunnels` lists
    the kinds crossed; `enclosing` the packets around the innermost, outermost first, with the
    kind of tunnel each carries."""
    if link not in SLICED:
        return None
    found = _ip_start(frame, link)
    if found is None:
        return None
    net = _net_at(frame, found[0], found[1], len(frame))
    if net is None:
        return None
    enclosing: list[tuple[Network, str]] = []
    kinds: list[str] = []
    while net.l4 is not None and net.proto in (17, 47, 4, 41):
        lim = min(net.dgram_end, len(frame))
        t = _tunnel(frame, net, lim)
        if t is None:
            break
        if t == BAD or len(enclosing) == 4:
            return Network(0, 0, 0, None, 0, None, None, tuple(kinds))
        assert not isinstance(t, str)
        names, ip, ver = t
        if ip is None:
            return Network(0, 0, 0, None, 0, None, None, tuple(kinds + list(names)))
        inner = _net_at(frame, ip, ver, lim)
        if inner is None:
            return Network(0, 0, 0, None, 0, None, None, tuple(kinds + list(names)))
        enclosing.append((net, names[0]))
        kinds += names
        net = replace(inner, dgram_end=min(inner.dgram_end, net.dgram_end))
    if net.proto not in (6, 17):
        net = replace(net, l4=None)
    return replace(net, tunnels=tuple(kinds), enclosing=tuple(enclosing))


def flow_key(frame: bytes, link: int) -> tuple[int, int, tuple[bytes, int], tuple[bytes, int]]:
    """(IP version, protocol, endpoint A, endpoint B) with A the smaller (16-byte address,
    port); version 0 and empty endpoints without IP. Ports only when TCP/UDP is reachable."""
    net = network(frame, link)
    if net is None or net.version == 0:
        return (0, 0, (b"", 0), (b"", 0))
    if net.version == 4:
        src = bytes(12) + frame[net.ip + 12 : net.ip + 16]
        dst = bytes(12) + frame[net.ip + 16 : net.ip + 20]
    else:
        src, dst = frame[net.ip + 8 : net.ip + 24], frame[net.ip + 24 : net.ip + 40]
    sport = dport = 0
    if net.l4 is not None and len(frame) >= net.l4 + 4:
        sport, dport = struct.unpack("!HH", frame[net.l4 : net.l4 + 4])
    a, b = sorted([(src, sport), (dst, dport)])
    return (net.version, net.proto, a, b)


def payload_start(frame: bytes, net: Network) -> int | None:
    """Where the TCP/UDP payload starts, or None when the transport header is not captured."""
    l4 = net.l4
    if l4 is None:
        return None
    if net.proto == 6:
        if len(frame) < l4 + 20:
            return None
        hl = 4 * (frame[l4 + 12] >> 4)
        return l4 + hl if hl >= 20 and len(frame) >= l4 + hl else None
    return l4 + 8 if len(frame) >= l4 + 8 else None


def decide(frame: bytes, link: int) -> Verdict:
    """SPEC §1 decision and §2 cut for one frame."""
    keep = Verdict(None, frame)
    net = network(frame, link)
    payload_at = None if net is None else payload_start(frame, net)
    if net is None or net.l4 is None or payload_at is None:
        return keep
    ver, ip, proto, l4 = net.version, net.ip, net.proto, net.l4
    dgram_end, route_dst = net.dgram_end, net.route_dst
    payload = frame[payload_at : min(dgram_end, len(frame))]
    if len(payload) <= KEEP:
        return keep
    sport, dport = struct.unpack("!HH", frame[l4 : l4 + 4])
    ports = {sport, dport}
    category = None
    if proto == 6:
        if ports & TLS_PORTS and payload[0] not in HANDSHAKE_CLASS:
            category = "tls"
        elif not ports & TLS_PORTS and payload[0] == 0x17:
            category = "tls_other_port"
        elif 22 in ports and payload[:4] != b"SSH-":
            category = "ssh"
    elif 443 in ports:
        category = "quic"
    elif ports & {500, 4500}:
        category = "ipsec"
    if category is None:
        return keep
    return Verdict(category, _cut(frame, ip, ver, proto, l4, payload_at, route_dst, net.enclosing))


def _cut(
    frame: bytes,
    ip: int,
    ver: int,
    proto: int,
    l4: int,
    payload_at: int,
    route_dst: bytes | None,
    enclosing: tuple[tuple[Network, str], ...] = (),
) -> bytes:
    end = payload_at + KEEP
    f = bytearray(frame[:end])
    _fix_ip(f, ip, ver, end)
    if ver == 4:
        ihl = (f[ip] & 15) * 4
        src = bytes(f[ip + 12 : ip + 16])
        dst = _ip4_route_dst(bytes(f[ip : ip + ihl]))
        pseudo = src + dst + bytes([0, proto]) + (end - l4).to_bytes(2, "big")
    else:
        src = bytes(f[ip + 8 : ip + 24])
        dst = route_dst if route_dst is not None else bytes(f[ip + 24 : ip + 40])
        pseudo = src + dst + (end - l4).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    if proto == 50:
        pass  # ESP: no checksum of its own (SPEC §9.6)
    elif proto == 6:
        f[l4 + 16 : l4 + 18] = b"\0\0"
        f[l4 + 16 : l4 + 18] = _csum(pseudo + bytes(f[l4:end])).to_bytes(2, "big")
    else:
        f[l4 + 4 : l4 + 6] = (8 + KEEP).to_bytes(2, "big")
        f[l4 + 6 : l4 + 8] = b"\0\0"
        c = _csum(pseudo + bytes(f[l4:end]))
        f[l4 + 6 : l4 + 8] = (c or 0xFFFF).to_bytes(2, "big")
    # §10: every enclosing header, innermost first (an outer checksum covers the inner bytes)
    for outer, kind in reversed(enclosing):
        _fix_ip(f, outer.ip, outer.version, end)
        at = outer.l4
        assert at is not None
        if outer.proto == 17:
            f[at + 4 : at + 6] = (end - at).to_bytes(2, "big")
            if kind == "gtpu":  # the length after GTP-U's 8-byte mandatory header
                f[at + 10 : at + 12] = (end - at - 16).to_bytes(2, "big")
            if outer.version == 4 and f[at + 6 : at + 8] == b"\0\0":
                continue  # no checksum over IPv4 stays none
            if outer.version == 4:
                ihl = (f[outer.ip] & 15) * 4
                src = bytes(f[outer.ip + 12 : outer.ip + 16])
                dst = _ip4_route_dst(bytes(f[outer.ip : outer.ip + ihl]))
                pseudo = src + dst + bytes([0, 17]) + (end - at).to_bytes(2, "big")
            else:
                src = bytes(f[outer.ip + 8 : outer.ip + 24])
                dst = outer.route_dst or bytes(f[outer.ip + 24 : outer.ip + 40])
                pseudo = src + dst + (end - at).to_bytes(4, "big") + bytes([0, 0, 0, 17])
            f[at + 6 : at + 8] = b"\0\0"
            c = _csum(pseudo + bytes(f[at:end]))
            f[at + 6 : at + 8] = (c or 0xFFFF).to_bytes(2, "big")
        elif outer.proto == 47 and f[at] & 0x80:  # a GRE checksum covers header and payload
            f[at + 4 : at + 6] = b"\0\0"
            f[at + 4 : at + 6] = _csum(bytes(f[at:end])).to_bytes(2, "big")
    return bytes(f)


def _fix_ip(f: bytearray, ip: int, ver: int, end: int) -> None:
    """The IP length fields of a datagram that now ends at `end`, and an IPv4 header checksum."""
    if ver == 4:
        ihl = (f[ip] & 15) * 4
        f[ip + 2 : ip + 4] = (end - ip).to_bytes(2, "big")
        f[ip + 10 : ip + 12] = b"\0\0"
        f[ip + 10 : ip + 12] = _csum(bytes(f[ip : ip + ihl])).to_bytes(2, "big")
    else:
        f[ip + 4 : ip + 6] = (end - ip - 40).to_bytes(2, "big")


# --- whole files ----------------------------------------------------------------------------


class NaiveError(Exception):
    pass


@dataclass
class NaiveResult:
    data: bytes
    packets: int
    categories: dict[str, int]
    tail: int
    tunnels: dict[str, int] = field(default_factory=dict)  # §10: kind -> packets inside it


def _count_tunnels(tunnels: dict[str, int], frame: bytes, link: int) -> None:
    net = network(frame, link)
    for kind in set(net.tunnels) if net is not None else ():
        tunnels[kind] = tunnels.get(kind, 0) + 1


Decide = Callable[[bytes, int], Verdict]  # (frame, link type) -> verdict


def slim_bytes(data: bytes, decide_frame: Decide | None = None) -> NaiveResult:
    """SPEC §4 for a whole file held in memory; every packet is decided by `decide_frame`, in
    file order (default: the rules of §1, `decide`)."""
    decide_frame = decide_frame or decide
    if len(data) < 24:
        raise NaiveError("short")
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D):
            return _slim_pcap(data, order, decide_frame)
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        return _slim_pcapng(data, decide_frame)
    raise NaiveError("magic")


def _slim_pcap(data: bytes, order: str, decide: Decide) -> NaiveResult:
    snaplen, link = struct.unpack(order + "II", data[16:24])
    link &= 0xFFFF
    out = [data[:24]]
    cats: dict[str, int] = {}
    tunnels: dict[str, int] = {}
    pos, packets = 24, 0
    while pos < len(data):
        if len(data) - pos < 16:
            break
        ts_s, ts_f, incl, orig = struct.unpack(order + "IIII", data[pos : pos + 16])
        if incl > 262144 and incl > snaplen:
            raise NaiveError(f"corrupt record {packets + 1} at {pos}")
        if pos + 16 + incl > len(data):
            break
        v = decide(data[pos + 16 : pos + 16 + incl], link)
        _count_tunnels(tunnels, data[pos + 16 : pos + 16 + incl], link)
        if v.category:
            cats[v.category] = cats.get(v.category, 0) + 1
        out.append(struct.pack(order + "IIII", ts_s, ts_f, len(v.frame), orig) + v.frame)
        packets += 1
        pos += 16 + incl
    out.append(data[pos:])
    return NaiveResult(b"".join(out), packets, cats, len(data) - pos, tunnels)


def _pad(n: int) -> int:
    return -n % 4


def _slim_pcapng(data: bytes, decide: Decide) -> NaiveResult:
    pos, packets = 0, 0
    cats: dict[str, int] = {}
    tunnels: dict[str, int] = {}
    sections: list[list[bytes]] = []  # each: [shb, blocks...]
    changed: list[bool] = []
    order = "<"
    ifaces: list[tuple[int, int]] = []
    tail = b""
    while pos < len(data):
        rest = len(data) - pos
        if rest < 8:
            tail = data[pos:]
            break
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            if rest < 12:
                tail = data[pos:]
                break
            bom = data[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                blk_order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                blk_order = ">"
            else:
                raise NaiveError("bom")
            btype = 0x0A0D0D0A
        else:
            blk_order = order
            btype = struct.unpack(order + "I", data[pos : pos + 4])[0]
        blen = struct.unpack(blk_order + "I", data[pos + 4 : pos + 8])[0]
        if blen < 12 or blen % 4:
            raise NaiveError("block length")
        minimum = {0x0A0D0D0A: 28, 1: 20, 6: 32, 2: 32}.get(btype, 12)
        if blen < minimum:
            raise NaiveError("block too short")
        if btype in (6, 2):
            if rest < 28:
                tail = data[pos:]
                break
            if btype == 6:
                iface = struct.unpack(order + "I", data[pos + 8 : pos + 12])[0]
            else:
                iface = struct.unpack(order + "H", data[pos + 8 : pos + 10])[0]
            caplen = struct.unpack(order + "I", data[pos + 20 : pos + 24])[0]
            snap = ifaces[iface][1] if iface < len(ifaces) else 0
            if snap and caplen > 262144 and caplen > snap:
                raise NaiveError("corrupt caplen")
            if 28 + caplen + 4 > blen:
                raise NaiveError("caplen does not fit")
        if pos + blen > len(data):
            tail = data[pos:]
            break
        block = data[pos : pos + blen]
        if struct.unpack(blk_order + "I", block[-4:])[0] != blen:
            raise NaiveError("trailing length")
        pos += blen
        if btype == 0x0A0D0D0A:
            order = blk_order
            ifaces = []
            sections.append([block])
            changed.append(False)
            continue
        if btype == 1:
            link, snap = struct.unpack(order + "H2xI", block[8:16])
            ifaces.append((link, snap))
        elif btype in (2, 3):
            packets += 1
        elif btype == 6:
            packets += 1
            if iface < len(ifaces):
                frame = block[28 : 28 + caplen]
                v = decide(frame, ifaces[iface][0])
                _count_tunnels(tunnels, frame, ifaces[iface][0])
                if v.category:
                    cats[v.category] = cats.get(v.category, 0) + 1
                    opts = block[28 + caplen + _pad(caplen) : -4]
                    body = (
                        block[8:20]
                        + struct.pack(order + "II", len(v.frame), block_orig(block, order))
                        + v.frame
                        + b"\0" * _pad(len(v.frame))
                        + opts
                    )
                    new_len = len(body) + 12
                    new = (
                        block[:4]
                        + struct.pack(order + "I", new_len)
                        + body
                        + struct.pack(order + "I", new_len)
                    )
                    changed[-1] = changed[-1] or len(new) != len(block)
                    block = new
        sections[-1].append(block)
    out = []
    for blocks, did_change in zip(sections, changed):
        shb = blocks[0]
        if did_change:
            shb = shb[:16] + b"\xff" * 8 + shb[24:]
        out.append(shb)
        out.extend(blocks[1:])
    out.append(tail)
    return NaiveResult(b"".join(out), packets, cats, len(tail), tunnels)


def block_orig(block: bytes, order: str) -> int:
    return int(struct.unpack(order + "I", block[24:28])[0])
