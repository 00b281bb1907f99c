"""The per-packet decision of SPEC §1 and §3: find the IP header, walk to TCP/UDP, decide."""

from __future__ import annotations

import numpy as np

from ..constants import (
    AF_INET6_BSD_A,
    AF_INET6_BSD_B,
    AF_INET6_BSD_C,
    AF_INET6_BSD_D,
    AF_INET_BSD,
    CAT_IPSEC,
    CAT_KEEP,
    CAT_QUIC,
    CAT_SSH,
    CAT_TLS,
    CAT_TLS_OTHER_PORT,
    DLT_EN10MB,
    DLT_IPV4,
    DLT_IPV6,
    DLT_LINUX_SLL,
    DLT_LINUX_SLL2,
    DLT_LOOP,
    DLT_NULL,
    DLT_RAW,
    DLT_RAW_12,
    DLT_RAW_14,
    ERSPAN_II_HDR_LEN,
    ERSPAN_III_HDR_LEN,
    ERSPAN_III_SUBHDR_LEN,
    ETH_HDR_LEN,
    ETH_TYPE_8021AD,
    ETH_TYPE_8021Q,
    ETH_TYPE_ERSPAN_II,
    ETH_TYPE_ERSPAN_III,
    ETH_TYPE_IP,
    ETH_TYPE_IP6,
    ETH_TYPE_MPLS_MC,
    ETH_TYPE_MPLS_UC,
    ETH_TYPE_QINQ_OLD,
    ETH_TYPE_TEB,
    GENEVE_HDR_LEN,
    GRE_FLAG_C,
    GRE_FLAG_K,
    GRE_FLAG_R,
    GRE_FLAG_S,
    GRE_HDR_LEN,
    GTPU_G_PDU,
    GTPU_HDR_LEN,
    GTPU_OPT_LEN,
    IP4_FRAG_MASK,
    IP4_MIN_HDR,
    IP4_OPT_EOL,
    IP4_OPT_LSRR,
    IP4_OPT_NOP,
    IP4_OPT_SSRR,
    IP4_SRR_MIN_LEN,
    IP6_HDR_LEN,
    IP6_RT_SRH,
    IP6_RT_TYPE0,
    IP6_RT_TYPE2,
    IP_PROTO_AH,
    IP_PROTO_DSTOPTS,
    IP_PROTO_ESP,
    IP_PROTO_GRE,
    IP_PROTO_HOPOPTS,
    IP_PROTO_IPIP,
    IP_PROTO_IPV6,
    IP_PROTO_ROUTING,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    KEEP_BYTES,
    MAX_TUNNEL_DEPTH,
    MPLS_LABEL_LEN,
    NULL_HDR_LEN,
    PORT_GENEVE,
    PORT_GTPU,
    PORT_IKE,
    PORT_IKE_NAT_T,
    PORT_QUIC,
    PORT_SSH,
    PORT_VXLAN,
    PORT_VXLAN_LINUX,
    SLL2_HDR_LEN,
    SLL2_PROTO_OFF,
    SLL_HDR_LEN,
    SLL_PROTO_OFF,
    TCP_MIN_HDR,
    TLS_ALERT,
    TLS_APPLICATION_DATA,
    TLS_CHANGE_CIPHER_SPEC,
    TLS_HANDSHAKE,
    TLS_HEARTBEAT,
    TUN_DEPTH_SHIFT,
    TUN_ERSPAN,
    TUN_GENEVE,
    TUN_GRE,
    TUN_GTPU,
    TUN_IPIP,
    TUN_VXLAN,
    UDP_HDR_LEN,
    VLAN_TAG_LEN,
    VXLAN_FLAG_I,
    VXLAN_HDR_LEN,
)
from .policy import hot, jit
from .wire import be16, u32


@jit
def is_sliced_linktype(linktype):
    return (
        linktype == DLT_EN10MB
        or linktype == DLT_LINUX_SLL
        or linktype == DLT_LINUX_SLL2
        or linktype == DLT_RAW
        or linktype == DLT_RAW_12
        or linktype == DLT_RAW_14
        or linktype == DLT_IPV4
        or linktype == DLT_IPV6
        or linktype == DLT_NULL
        or linktype == DLT_LOOP
    )


@jit
def is_tls_port(p):
    return p == 443 or p == 853 or p == 465 or p == 993 or p == 995 or p == 8443 or p == 5061


@jit
def is_handshake_class(b):
    return b == TLS_CHANGE_CIPHER_SPEC or b == TLS_ALERT or b == TLS_HANDSHAKE or b == TLS_HEARTBEAT


@jit
def starts_with_ssh(buf, p, end):
    """The bytes at p start with "SSH-" (an SSH version banner)."""
    return (p + 4 <= end and buf[p] == 0x53 and buf[p + 1] == 0x53 and buf[p + 2] == 0x48
            and buf[p + 3] == 0x2D)  # fmt: skip


@jit
def ip_by_nibble(buf, p, fend):
    """(IP header offset, version) by the version nibble at p; (-1, 0) when neither 4 nor 6."""
    if p >= fend:
        return -1, 0
    v = np.int64(buf[p]) >> 4
    if v == 4 or v == 6:
        return p, v
    return -1, 0


@jit
def ip_after_ethertype(buf, type_off, hdr_end, fend):
    """Follow an EtherType through VLAN tags and MPLS labels to the IP header."""
    if hdr_end > fend:
        return -1, 0
    et = be16(buf, type_off)
    p = hdr_end
    while et == ETH_TYPE_8021Q or et == ETH_TYPE_8021AD or et == ETH_TYPE_QINQ_OLD:
        if p + VLAN_TAG_LEN > fend:
            return -1, 0
        et = be16(buf, p + 2)
        p += VLAN_TAG_LEN
    if et == ETH_TYPE_MPLS_UC or et == ETH_TYPE_MPLS_MC:
        while True:
            if p + MPLS_LABEL_LEN > fend:
                return -1, 0
            bottom = np.int64(buf[p + 2]) & 1
            p += MPLS_LABEL_LEN
            if bottom:
                break
        return ip_by_nibble(buf, p, fend)
    return ip_of_ethertype(et, p)


@jit
def ip_of_ethertype(et, p):
    """(p, 4) or (p, 6) when the EtherType says an IP header starts at p, else (-1, 0)."""
    if et == ETH_TYPE_IP:
        return p, 4
    if et == ETH_TYPE_IP6:
        return p, 6
    return -1, 0


@hot
def find_ip(buf, f0, fend, linktype):
    """(IP header offset, 4 or 6) for a frame at [f0, fend), or (-1, 0)."""
    if linktype == DLT_EN10MB:
        return ip_after_ethertype(buf, f0 + 12, f0 + ETH_HDR_LEN, fend)
    if linktype == DLT_LINUX_SLL:
        return ip_after_ethertype(buf, f0 + SLL_PROTO_OFF, f0 + SLL_HDR_LEN, fend)
    if linktype == DLT_LINUX_SLL2:
        return ip_after_ethertype(buf, f0 + SLL2_PROTO_OFF, f0 + SLL2_HDR_LEN, fend)
    if (
        linktype == DLT_RAW
        or linktype == DLT_RAW_12
        or linktype == DLT_RAW_14
        or linktype == DLT_IPV4
        or linktype == DLT_IPV6
    ):
        return ip_by_nibble(buf, f0, fend)
    if linktype == DLT_NULL or linktype == DLT_LOOP:
        if f0 + NULL_HDR_LEN > fend:
            return -1, 0
        for le in (1, 0):
            fam = u32(buf, f0, le)
            if fam == AF_INET_BSD:
                return f0 + NULL_HDR_LEN, 4
            if (
                fam == AF_INET6_BSD_A
                or fam == AF_INET6_BSD_B
                or fam == AF_INET6_BSD_C
                or fam == AF_INET6_BSD_D
            ):
                return f0 + NULL_HDR_LEN, 6
    return -1, 0


@jit
def ip4_pseudo_dst(buf, ip, ihl):
    """Offset of the pseudo-header destination: last hop of the first source route, or dst."""
    o = ip + IP4_MIN_HDR
    hend = ip + ihl
    while o < hend:
        t = np.int64(buf[o])
        if t == IP4_OPT_EOL:
            break
        if t == IP4_OPT_NOP:
            o += 1
            continue
        if o + 1 >= hend:
            break
        ln = np.int64(buf[o + 1])
        if ln < 2 or o + ln > hend:
            break
        kind = t & 0x1F
        if (kind == IP4_OPT_LSRR or kind == IP4_OPT_SSRR) and ln >= IP4_SRR_MIN_LEN:
            return o + ln - 4
        o += ln
    return ip + 16


@jit
def _walked_to(proto):
    """The protocols the IP walk stops at: a transport the rules read (TCP, UDP, ESP) or a
    tunnel's header (GRE, IP in IP)."""
    return (proto == IP_PROTO_TCP or proto == IP_PROTO_UDP or proto == IP_PROTO_ESP
            or proto == IP_PROTO_GRE or proto == IP_PROTO_IPIP
            or proto == IP_PROTO_IPV6)  # fmt: skip


@hot
def parse_ip_at(buf, ip, ver, fend):
    """The network layer from the IP header at ip (version ver, as the link layer or a tunnel
    says), captured up to fend: (version, ip, proto, l4, ip_end, dst).

    version is 0 when there is no usable IPv4/IPv6 header. l4 is -1 when no TCP, UDP, ESP, GRE
    or IP-in-IP header can be walked to (a fragment, another protocol, an extension header not
    captured); proto is then the last protocol number reached. ip_end is where the IP length
    fields end the datagram (ip itself for an IPv4 total length of 0). dst is the pseudo-header
    destination of an IPv6 packet (IPv4 source routes are looked up only when a packet is cut).
    """
    if ver == 4:
        if ip + IP4_MIN_HDR > fend:
            return 0, 0, 0, -1, 0, 0
        b0 = np.int64(buf[ip])
        ihl = (b0 & 0x0F) * 4
        if (b0 >> 4) != 4 or ihl < IP4_MIN_HDR or ip + ihl > fend:
            return 0, 0, 0, -1, 0, 0
        proto = np.int64(buf[ip + 9])
        total = be16(buf, ip + 2)
        ip_end = ip + total if total else ip
        if be16(buf, ip + 6) & IP4_FRAG_MASK or not _walked_to(proto):
            return 4, ip, proto, -1, ip_end, ip + 16
        return 4, ip, proto, ip + ihl, ip_end, ip + 16
    if ip + IP6_HDR_LEN > fend or (np.int64(buf[ip]) >> 4) != 6:
        return 0, 0, 0, -1, 0, 0
    ip_end = ip + IP6_HDR_LEN + be16(buf, ip + 4)
    proto = np.int64(buf[ip + 6])
    p = ip + IP6_HDR_LEN
    dst = ip + 24
    routed = False
    while not _walked_to(proto):
        if proto == IP_PROTO_HOPOPTS or proto == IP_PROTO_ROUTING or proto == IP_PROTO_DSTOPTS:
            if p + 2 > fend:
                return 6, ip, proto, -1, ip_end, dst
            hl = (np.int64(buf[p + 1]) + 1) * 8
        elif proto == IP_PROTO_AH:
            if p + 2 > fend:
                return 6, ip, proto, -1, ip_end, dst
            hl = (np.int64(buf[p + 1]) + 2) * 4
        else:  # fragment, no-next, unknown
            return 6, ip, proto, -1, ip_end, dst
        if p + hl > fend:
            return 6, ip, proto, -1, ip_end, dst
        if proto == IP_PROTO_ROUTING and not routed and np.int64(buf[p + 3]) > 0:
            routed = True
            rtype = np.int64(buf[p + 2])
            if rtype == IP6_RT_TYPE0:
                n_addr = np.int64(buf[p + 1]) // 2
                if n_addr > 0:
                    dst = p + 8 + (n_addr - 1) * 16
            elif (rtype == IP6_RT_TYPE2 or rtype == IP6_RT_SRH) and hl >= 24:
                dst = p + 8
        proto = np.int64(buf[p])
        p += hl
    return 6, ip, proto, p, ip_end, dst


@hot
def parse_ip(buf, f0, caplen, linktype):
    """The outermost network layer of a frame: parse_ip_at from the link layer's IP header."""
    fend = f0 + caplen
    ip, ver = find_ip(buf, f0, fend, linktype)
    if ip < 0:
        return 0, 0, 0, -1, 0, 0
    return parse_ip_at(buf, ip, ver, fend)


@jit
def _ip_by_type(buf, ptype, p, lim):
    """The IP header after a tunnel header whose protocol type is an EtherType: Ethernet
    (0x6558: through its own tags to its IP header), IPv4 or IPv6; (-1, 0) for anything else."""
    if ptype == ETH_TYPE_TEB:
        return ip_after_ethertype(buf, p + 12, p + ETH_HDR_LEN, lim)
    return ip_of_ethertype(ptype, p)


@jit
def _gtpu_inner(buf, g, lim):
    """The IP header a GTP-U G-PDU at g carries (version 1, protocol type GTP, message 255,
    through its optional fields and extension headers), or -1."""
    if g + GTPU_HDR_LEN > lim:
        return -1
    fl = np.int64(buf[g])
    if (fl >> 5) != 1 or (fl & 0x10) == 0 or buf[g + 1] != GTPU_G_PDU:
        return -1
    p = g + GTPU_HDR_LEN
    if fl & 0x07:
        p += GTPU_OPT_LEN
        if p > lim:
            return -1
        nxt = np.int64(buf[g + 11]) if fl & 0x04 else 0
        while nxt != 0:  # each extension is 4 x its length byte long, its last byte the next type
            if p + 1 > lim:
                return -1
            ln = np.int64(buf[p]) * 4
            if ln == 0 or p + ln > lim:
                return -1
            nxt = np.int64(buf[p + ln - 1])
            p += ln
    return p


@hot
def tunnel_inner(buf, proto, l4, lim):
    """What a header at l4 (IP protocol proto, the datagram captured up to lim) carries, as
    SPEC §10 decodes it: (kind, ip, version) of the inner IP header. kind is a TUN_* bit (GRE
    and ERSPAN together for ERSPAN), 0 when l4 starts no tunnel, -1 for a tunnel whose headers
    do not parse (the packet is then kept). ip is -1 with a kind when the tunnel carries an
    Ethernet frame that holds no IP packet: the packet is inside the tunnel, and kept."""
    if proto == IP_PROTO_UDP:
        if l4 + UDP_HDR_LEN > lim:
            return 0, -1, 0
        dport = be16(buf, l4 + 2)
        g = l4 + UDP_HDR_LEN
        if dport == PORT_VXLAN or dport == PORT_VXLAN_LINUX:
            if g + VXLAN_HDR_LEN > lim or (np.int64(buf[g]) & VXLAN_FLAG_I) == 0:
                return -1, -1, 0
            ip, v = ip_after_ethertype(buf, g + VXLAN_HDR_LEN + 12,
                                       g + VXLAN_HDR_LEN + ETH_HDR_LEN, lim)  # fmt: skip
            return TUN_VXLAN, ip, v  # inside, even when the frame holds no IP (ARP)
        if dport == PORT_GENEVE:
            if g + GENEVE_HDR_LEN > lim or (np.int64(buf[g]) >> 6) != 0:
                return -1, -1, 0
            opts = 4 * (np.int64(buf[g]) & 0x3F)
            ptype = be16(buf, g + 2)
            ip, v = _ip_by_type(buf, ptype, g + GENEVE_HDR_LEN + opts, lim)
            return (TUN_GENEVE if ip >= 0 or ptype == ETH_TYPE_TEB else -1), ip, v
        if dport == PORT_GTPU or be16(buf, l4) == PORT_GTPU:
            ip = _gtpu_inner(buf, g, lim)
            ip, v = ip_by_nibble(buf, ip, lim) if ip >= 0 else (-1, 0)
            return (TUN_GTPU if ip >= 0 else -1), ip, v
        return 0, -1, 0
    if proto == IP_PROTO_GRE:
        if l4 + GRE_HDR_LEN > lim:
            return -1, -1, 0
        fl = np.int64(buf[l4])
        if (np.int64(buf[l4 + 1]) & 0x07) != 0 or fl & GRE_FLAG_R:
            return -1, -1, 0
        h = l4 + GRE_HDR_LEN
        h += 4 if fl & GRE_FLAG_C else 0
        h += 4 if fl & GRE_FLAG_K else 0
        h += 4 if fl & GRE_FLAG_S else 0
        ptype = be16(buf, l4 + 2)
        if ptype == ETH_TYPE_ERSPAN_II or ptype == ETH_TYPE_ERSPAN_III:
            if ptype == ETH_TYPE_ERSPAN_II:
                eth = h + ERSPAN_II_HDR_LEN
            else:
                if h + ERSPAN_III_HDR_LEN > lim:
                    return -1, -1, 0
                eth = h + ERSPAN_III_HDR_LEN
                eth += ERSPAN_III_SUBHDR_LEN if np.int64(buf[h + 11]) & 1 else 0
            ip, v = ip_after_ethertype(buf, eth + 12, eth + ETH_HDR_LEN, lim)
            return TUN_GRE | TUN_ERSPAN, ip, v
        ip, v = _ip_by_type(buf, ptype, h, lim)
        return (TUN_GRE if ip >= 0 or ptype == ETH_TYPE_TEB else -1), ip, v
    if proto == IP_PROTO_IPIP or proto == IP_PROTO_IPV6:
        ip, v = ip_by_nibble(buf, l4, lim)
        if ip < 0 or v != (4 if proto == IP_PROTO_IPIP else 6):
            return -1, -1, 0
        return TUN_IPIP, ip, v
    return 0, -1, 0


@hot
def parse_inner(buf, f0, caplen, linktype):
    """parse_ip through the tunnels of SPEC §10, on the innermost packet: (version, ip, proto,
    l4, ip_end, dst, tunnels). tunnels holds the TUN_* bits of the tunnels crossed and their
    depth << TUN_DEPTH_SHIFT. A tunnel deeper than MAX_TUNNEL_DEPTH, or one whose headers or
    inner packet do not parse, gives version 0 and l4 -1: the packet is kept. An inner datagram
    ends no later than the one that carries it."""
    fend = f0 + caplen
    ver, ip, proto, l4, ip_end, dst = parse_ip(buf, f0, caplen, linktype)
    tunnels = 0
    depth = 0
    while l4 >= 0 and (proto == IP_PROTO_UDP or proto == IP_PROTO_GRE
                       or proto == IP_PROTO_IPIP or proto == IP_PROTO_IPV6):  # fmt: skip
        lim = ip_end if ip_end < fend else fend
        kind, iip, iver = tunnel_inner(buf, proto, l4, lim)
        if kind == 0:
            break
        depth += 1
        if kind < 0 or depth > MAX_TUNNEL_DEPTH:
            return 0, 0, 0, -1, 0, 0, tunnels | (depth << TUN_DEPTH_SHIFT)
        tunnels |= kind
        if iip < 0:  # an Ethernet frame inside that holds no IP packet (ARP, LLDP): kept
            return 0, 0, 0, -1, 0, 0, tunnels | (depth << TUN_DEPTH_SHIFT)
        outer_end = ip_end
        ver, ip, proto, l4, ip_end, dst = parse_ip_at(buf, iip, iver, lim)
        if ver == 0:
            return 0, 0, 0, -1, 0, 0, tunnels | (depth << TUN_DEPTH_SHIFT)
        if ip_end > outer_end:
            ip_end = outer_end
    return ver, ip, proto, l4, ip_end, dst, tunnels | (depth << TUN_DEPTH_SHIFT)


@hot
def decide_frame(buf, f0, caplen, linktype):
    """Decide one frame (its innermost packet, SPEC §10): (category, ip, l4, payload,
    pseudo_dst, tunnels), offsets relative to f0.

    Offsets are meaningful only when the category is not CAT_KEEP.
    """
    fend = f0 + caplen
    ver, ip, proto, l4, ip_end, dst, tunnels = parse_inner(buf, f0, caplen, linktype)
    if l4 < 0 or (proto != IP_PROTO_TCP and proto != IP_PROTO_UDP):  # ESP: forensic rules only
        return CAT_KEEP, 0, 0, 0, 0, tunnels
    if proto == IP_PROTO_TCP:
        if l4 + TCP_MIN_HDR > fend:
            return CAT_KEEP, 0, 0, 0, 0, tunnels
        doff = (np.int64(buf[l4 + 12]) >> 4) * 4
        if doff < TCP_MIN_HDR or l4 + doff > fend:
            return CAT_KEEP, 0, 0, 0, 0, tunnels
        pay = l4 + doff
    else:
        if l4 + UDP_HDR_LEN > fend:
            return CAT_KEEP, 0, 0, 0, 0, tunnels
        pay = l4 + UDP_HDR_LEN
    pend = ip_end if ip_end < fend else fend
    if pend - pay <= KEEP_BYTES:
        return CAT_KEEP, 0, 0, 0, 0, tunnels
    sport = be16(buf, l4)
    dport = be16(buf, l4 + 2)
    cat = CAT_KEEP
    if proto == IP_PROTO_TCP:
        first = np.int64(buf[pay])
        tls_port = is_tls_port(sport) or is_tls_port(dport)
        if tls_port and not is_handshake_class(first):
            cat = CAT_TLS
        elif not tls_port and first == TLS_APPLICATION_DATA:
            cat = CAT_TLS_OTHER_PORT
        elif (sport == PORT_SSH or dport == PORT_SSH) and not starts_with_ssh(buf, pay, pend):
            cat = CAT_SSH
    else:
        if sport == PORT_QUIC or dport == PORT_QUIC:
            cat = CAT_QUIC
        elif (
            sport == PORT_IKE
            or dport == PORT_IKE
            or sport == PORT_IKE_NAT_T
            or dport == PORT_IKE_NAT_T
        ):
            cat = CAT_IPSEC
    if cat == CAT_KEEP:
        return CAT_KEEP, 0, 0, 0, 0, tunnels
    if ver == 4:
        dst = ip4_pseudo_dst(buf, ip, (np.int64(buf[ip]) & 0x0F) * 4)
    return cat, ip - f0, l4 - f0, pay - f0, dst - f0, tunnels
