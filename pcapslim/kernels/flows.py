"""Flow kernel: one row per packet with its bidirectional flow key, timestamp, sizes before and
after slimming and the decision (fields P_* of pcapslim.constants)."""

from __future__ import annotations

import numpy as np

from ..constants import (
    CAT_KEEP,
    DEFAULT_TSRESOL,
    F_CAPLEN,
    F_CAT,
    F_DATA,
    F_KIND,
    F_LINK,
    F_PAY,
    F_START,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    KEEP_BYTES,
    KIND_BLOCK,
    KIND_OTHER_PACKET,
    KIND_PACKET,
    KIND_SHB,
    P_A0,
    P_APORT,
    P_B0,
    P_BPORT,
    P_CAPLEN,
    P_CAT,
    P_KEPT,
    P_LINK,
    P_PROTO,
    P_TS_NS,
    P_TUNNEL,
    P_VER,
    PCAPNG_BOM,
    PCAPNG_IDB,
    PCAPNG_OPB,
    PCAPNG_OPT_TSRESOL,
    PCAPNG_SPB,
    S_IFACES,  # the index kernels' pcapng section state, followed again
    S_LE,
)
from .decide import parse_inner
from .policy import jit
from .wire import be16, be32, u16, u32


@jit
def _endpoint_words(buf, at, ver, words):
    """Four 32-bit words of an address at `at` (IPv4: three zeros, then the address)."""
    if ver == 4:
        words[0] = 0
        words[1] = 0
        words[2] = 0
        words[3] = be32(buf, at)
    else:
        for k in range(4):
            words[k] = be32(buf, at + 4 * k)


@jit
def _first_is_smaller(a, ap, b, bp):
    for k in range(4):
        if a[k] != b[k]:
            return a[k] < b[k]
    return ap <= bp


@jit
def flow_fields(buf, f0, caplen, linktype, row, out, a, b):
    """Fill the link, IP and endpoint fields of out[row]."""
    out[row, P_LINK] = linktype
    ver, ip, proto, l4, ip_end, dst, tunnels = parse_inner(buf, f0, caplen, linktype)
    out[row, P_TUNNEL] = tunnels
    out[row, P_VER] = ver
    out[row, P_PROTO] = proto
    for k in range(10):
        out[row, P_A0 + k] = 0
    if ver == 0:
        return
    src_at = ip + 12 if ver == 4 else ip + 8
    dst_at = ip + 16 if ver == 4 else ip + 24
    _endpoint_words(buf, src_at, ver, a)
    _endpoint_words(buf, dst_at, ver, b)
    sport = 0
    dport = 0
    if l4 >= 0 and (proto == IP_PROTO_TCP or proto == IP_PROTO_UDP) and l4 + 4 <= f0 + caplen:
        sport = be16(buf, l4)
        dport = be16(buf, l4 + 2)
    if not _first_is_smaller(a, sport, b, dport):
        a, b = b, a
        sport, dport = dport, sport
    for k in range(4):
        out[row, P_A0 + k] = a[k]
        out[row, P_B0 + k] = b[k]
    out[row, P_APORT] = sport
    out[row, P_BPORT] = dport


@jit
def _ts_ns(ticks, resol):
    """Ticks of an interface's resolution (if_tsresol byte) in nanoseconds."""
    if resol & 0x80:
        return np.int64(ticks * (1e9 / 2.0 ** (resol & 0x7F)))
    if resol <= 9:
        return ticks * 10 ** (9 - resol)
    return ticks // 10 ** (resol - 9)


@jit
def _idb_tsresol(buf, start, blen, le):
    """The if_tsresol option of an interface description block, or the default."""
    o = start + 16
    end = start + blen - 4
    while o + 4 <= end:
        code = u16(buf, o, le)
        ln = u16(buf, o + 2, le)
        if code == 0:
            break
        if code == PCAPNG_OPT_TSRESOL and ln >= 1 and o + 5 <= end:
            return np.int64(buf[o + 4])
        o += 4 + ((ln + 3) & ~3)
    return DEFAULT_TSRESOL


@jit
def packet_rows(buf, rec, n, pcapng, le, nanosecond, state, tsres, out, a, b):
    """One row of `out` per packet among records 0..n-1; returns the number of rows. `a` and
    `b` are scratch space for the endpoint words (four int64 each)."""
    m = 0
    for i in range(n):
        kind = rec[i, F_KIND]
        start = rec[i, F_START]
        if pcapng and kind == KIND_SHB:
            state[S_LE] = 1 if u32(buf, start + 8, 1) == PCAPNG_BOM else 0
            state[S_IFACES] = 0
            continue
        if pcapng and kind == KIND_BLOCK:
            lle = state[S_LE]
            if u32(buf, start, lle) == PCAPNG_IDB:
                k = state[S_IFACES]
                if k < tsres.shape[0]:
                    tsres[k] = _idb_tsresol(buf, start, u32(buf, start + 4, lle), lle)
                state[S_IFACES] = k + 1
            continue
        if kind != KIND_PACKET and kind != KIND_OTHER_PACKET:
            continue
        data = rec[i, F_DATA]
        caplen = rec[i, F_CAPLEN]
        link = rec[i, F_LINK]
        ts = -1
        if not pcapng:
            frac = u32(buf, start + 4, le)
            ts = u32(buf, start, le) * 1_000_000_000 + (frac if nanosecond else frac * 1000)
        else:
            lle = state[S_LE]
            btype = u32(buf, start, lle)
            if btype != PCAPNG_SPB:  # enhanced and obsolete blocks carry a timestamp
                if btype == PCAPNG_OPB:
                    iface = u16(buf, start + 8, lle)
                else:
                    iface = u32(buf, start + 8, lle)
                resol = DEFAULT_TSRESOL
                if iface < state[S_IFACES] and iface < tsres.shape[0]:
                    resol = tsres[iface]
                ticks = (u32(buf, start + 12, lle) << 32) | u32(buf, start + 16, lle)
                ts = _ts_ns(ticks, resol)
        cat = rec[i, F_CAT]
        if link >= 0:
            flow_fields(buf, data, caplen, link, m, out, a, b)
        else:
            out[m, P_LINK] = -1
            out[m, P_VER] = 0
            out[m, P_PROTO] = 0
            out[m, P_TUNNEL] = 0
            for k in range(10):
                out[m, P_A0 + k] = 0
        out[m, P_TS_NS] = ts
        out[m, P_CAPLEN] = caplen
        out[m, P_KEPT] = caplen if cat == CAT_KEEP else rec[i, F_PAY] + KEEP_BYTES
        out[m, P_CAT] = cat
        m += 1
    return m
