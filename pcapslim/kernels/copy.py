"""Copy kernel: kept records byte for byte, cut records shortened with lengths and checksums
patched (SPEC §2)."""

from __future__ import annotations

import numpy as np

from ..constants import (
    CAT_KEEP,
    F_CAPLEN,
    F_CAT,
    F_DATA,
    F_DST,
    F_END,
    F_IP,
    F_L4,
    F_LE,
    F_LINK,
    F_PAY,
    F_START,
    F_TUNNEL,
    GRE_FLAG_C,
    GTPU_HDR_LEN,
    IP6_HDR_LEN,
    IP_PROTO_GRE,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    KEEP_BYTES,
    PCAP_REC_HDR_LEN,
    PCAPNG_EPB_DATA,
    TUN_DEPTH_SHIFT,
    TUN_GTPU,
    UDP_HDR_LEN,
)
from .decide import ip4_pseudo_dst, parse_ip, parse_ip_at, tunnel_inner
from .policy import jit
from .wire import be16, copy_checked, fold, pad4, put16be, put32, sum16


@jit
def patch_cut_frame(out, f0, ip, l4, pay, dst):
    """Fix IP lengths and checksums of a frame already cut to pay + KEEP_BYTES at out[f0:].

    The transport is told by where its payload starts: at the header itself for ESP (which has
    no checksum of its own: only the IP header is fixed), 8 bytes on for UDP, further for TCP."""
    ip += f0
    l4 += f0
    dst += f0
    end = f0 + pay + KEEP_BYTES
    esp = pay + f0 == l4
    udp = pay + f0 == l4 + UDP_HDR_LEN
    proto = IP_PROTO_UDP if udp else IP_PROTO_TCP
    seg_len = end - l4
    if (np.int64(out[ip]) >> 4) == 4:
        ihl = (np.int64(out[ip]) & 0x0F) * 4
        put16be(out, ip + 2, end - ip)
        put16be(out, ip + 10, 0)
        put16be(out, ip + 10, fold(sum16(out, ip, ihl)))
        pseudo = sum16(out, ip + 12, 4) + sum16(out, dst, 4) + proto + seg_len
    else:
        put16be(out, ip + 4, end - (ip + IP6_HDR_LEN))
        pseudo = sum16(out, ip + 8, 16) + sum16(out, dst, 16) + proto + seg_len
    if esp:
        return
    if udp:
        put16be(out, l4 + 4, UDP_HDR_LEN + KEEP_BYTES)
        put16be(out, l4 + 6, 0)
        c = fold(pseudo + sum16(out, l4, seg_len))
        if c == 0:
            c = 0xFFFF
        put16be(out, l4 + 6, c)
    else:
        put16be(out, l4 + 16, 0)
        put16be(out, l4 + 16, fold(pseudo + sum16(out, l4, seg_len)))


@jit
def fix_enclosing(out, f0, end, linktype, depth):
    """After a cut of a packet found `depth` tunnels deep (SPEC §10), fix every enclosing
    header of the frame at out[f0:end], innermost first (an outer checksum covers the inner
    bytes): IPv4 total length and header checksum, IPv6 payload length, UDP length and checksum
    (a zero checksum over IPv4 stays zero), GTP-U length, GRE checksum when present. Each level
    is found again by the walk that found it, on the headers before the cut payload."""
    for level in range(depth - 1, -1, -1):
        ver, ip, proto, l4, ip_end, dst = parse_ip(out, f0, end - f0, linktype)
        kind = 0
        for k in range(level + 1):  # down to the level, and what its tunnel header is
            lim = ip_end if ip_end < end else end
            kind, iip, iver = tunnel_inner(out, proto, l4, lim)
            if k < level:
                ver, ip, proto, l4, ip_end, dst = parse_ip_at(out, iip, iver, lim)
        if ver == 4:
            ihl = (np.int64(out[ip]) & 0x0F) * 4
            put16be(out, ip + 2, end - ip)
            put16be(out, ip + 10, 0)
            put16be(out, ip + 10, fold(sum16(out, ip, ihl)))
        else:
            put16be(out, ip + 4, end - (ip + IP6_HDR_LEN))
        if proto == IP_PROTO_UDP:
            put16be(out, l4 + 4, end - l4)
            if kind == TUN_GTPU:
                put16be(out, l4 + UDP_HDR_LEN + 2, end - (l4 + UDP_HDR_LEN + GTPU_HDR_LEN))
            if ver == 4 and be16(out, l4 + 6) == 0:
                continue  # no checksum over IPv4: none after
            put16be(out, l4 + 6, 0)
            if ver == 4:
                pdst = ip4_pseudo_dst(out, ip, (np.int64(out[ip]) & 0x0F) * 4)
                pseudo = sum16(out, ip + 12, 4) + sum16(out, pdst, 4)
            else:
                pseudo = sum16(out, ip + 8, 16) + sum16(out, dst, 16)
            c = fold(pseudo + IP_PROTO_UDP + (end - l4) + sum16(out, l4, end - l4))
            put16be(out, l4 + 6, c if c != 0 else 0xFFFF)
        elif proto == IP_PROTO_GRE and np.int64(out[l4]) & GRE_FLAG_C:
            put16be(out, l4 + 4, 0)
            put16be(out, l4 + 4, fold(sum16(out, l4, end - l4)))


@jit
def copy_records(buf, rec, n, out, out_off, pcapng):
    """Write records 0..n-1 into out at out_off[i]; runs of kept records copy in one go.
    Returns 0, or -1 when a record would fall outside buf or out (nothing past it is written)."""
    i = 0
    while i < n:
        s = rec[i, F_START]
        e = rec[i, F_END]
        o = out_off[i]
        if rec[i, F_CAT] == CAT_KEEP:
            j = i + 1
            while j < n and rec[j, F_CAT] == CAT_KEEP and rec[j, F_START] == e:
                e = rec[j, F_END]
                j += 1
            if copy_checked(out, o, buf, s, e - s) < 0:
                return -1
            i = j
            continue
        data = rec[i, F_DATA]
        pay = rec[i, F_PAY]
        kept = pay + KEEP_BYTES
        le = rec[i, F_LE]
        if pcapng:
            caplen = rec[i, F_CAPLEN]
            pad = pad4(kept) - kept
            opts = e - 4 - (data + pad4(caplen))
            if o + (data - s) + kept + pad + opts + 4 > out.shape[0]:
                return -1
            o = copy_checked(out, o, buf, s, data - s)
            f0 = o
            o = copy_checked(out, o, buf, data, kept)
            for k in range(pad):
                out[o + k] = 0
            o = copy_checked(out, o + pad, buf, data + pad4(caplen), opts)
            if o < 0:
                return -1
            blen = o + 4 - out_off[i]
            put32(out, o, blen, le)
            put32(out, out_off[i] + 4, blen, le)
            put32(out, out_off[i] + PCAPNG_EPB_DATA - 8, kept, le)
        else:
            o = copy_checked(out, o, buf, s, data - s)
            if o < 0 or copy_checked(out, o, buf, data, kept) < 0:
                return -1
            put32(out, o - PCAP_REC_HDR_LEN + 8, kept, le)
            f0 = o
        patch_cut_frame(out, f0, rec[i, F_IP], rec[i, F_L4], pay, rec[i, F_DST])
        depth = rec[i, F_TUNNEL] >> TUN_DEPTH_SHIFT
        if depth > 0:
            fix_enclosing(out, f0, f0 + pay + KEEP_BYTES, rec[i, F_LINK], depth)
        i += 1
    return 0
