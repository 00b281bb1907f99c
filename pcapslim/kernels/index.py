"""Index kernels: find the records of a window, decide every packet, size its output.

Each kernel fills rows of the record table (fields F_* of pcapslim.constants) for the complete
records in buf[start:end] and returns (records, next_pos, status, need): `need` is how many
bytes from next_pos the record there needs when status is ST_NEED_MORE, and the record's
captured length when it is ST_CORRUPT_CAPLEN (what the error message names). With `decide`
false they only find and check the records (the verification pass).

Every packet row (enhanced, simple and obsolete packet blocks, pcap records) says where its
frame starts (F_DATA) and how many of its bytes were captured (F_CAPLEN); later stages read the
frame there and never parse the block again.

`ftable` and `fstate` are the forensic flow table and its clock and probe count (SPEC §8), or
None for the stateless rules.
numba compiles one specialisation for each: with None the forensic branch is pruned before
typing, so the default rules neither compile nor run any of it.
"""

from __future__ import annotations

from ..constants import (
    CAT_KEEP,
    F_CAPLEN,
    F_CAT,
    F_DATA,
    F_DST,
    F_END,
    F_IP,
    F_KIND,
    F_L4,
    F_LE,
    F_LINK,
    F_OUTLEN,
    F_PAY,
    F_START,
    F_TUNNEL,
    KEEP_BYTES,
    KIND_BLOCK,
    KIND_OTHER_PACKET,
    KIND_PACKET,
    KIND_SHB,
    MAX_CAPLEN,
    PCAP_REC_HDR_LEN,
    PCAPNG_BOM,
    PCAPNG_EPB,
    PCAPNG_EPB_DATA,
    PCAPNG_IDB,
    PCAPNG_MIN_BLOCK,
    PCAPNG_MIN_EPB,
    PCAPNG_MIN_IDB,
    PCAPNG_MIN_OPB,
    PCAPNG_MIN_SHB,
    PCAPNG_MIN_SPB,
    PCAPNG_OPB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    PCAPNG_SPB_DATA,
    S_IFACES,
    S_LE,
    ST_BAD_BLOCK_LEN,
    ST_BAD_EPB,
    ST_BAD_IDB,
    ST_BAD_OPB,
    ST_BAD_SHB,
    ST_CORRUPT_CAPLEN,
    ST_IFACE_FULL,
    ST_LEN_MISMATCH,
    ST_NEED_MORE,
    ST_OK,
)
from .decide import decide_frame, is_sliced_linktype
from .forensic import forensic_packet
from .policy import hot, jit
from .wire import PREFETCH_AHEAD, pad4, prefetch_upto, u16, u32


@jit
def caplen_is_corrupt(caplen, snaplen):
    return caplen > MAX_CAPLEN and caplen > snaplen


@hot
def decide_into(buf, rec, i, data, caplen, linktype, decide):
    """Fill the decision fields of row i; return the number of frame bytes kept. With decide
    false (counting records only) every packet is kept."""
    if decide and is_sliced_linktype(linktype):
        cat, ip, l4, pay, dst, tunnels = decide_frame(buf, data, caplen, linktype)
    else:
        cat, ip, l4, pay, dst, tunnels = CAT_KEEP, 0, 0, 0, 0, 0
    rec[i, F_CAT] = cat
    rec[i, F_TUNNEL] = tunnels
    if cat == CAT_KEEP:
        return caplen
    rec[i, F_IP] = ip
    rec[i, F_L4] = l4
    rec[i, F_PAY] = pay
    rec[i, F_DST] = dst
    return pay + KEEP_BYTES


@jit
def index_pcap(buf, start, end, le, snaplen, linktype, rec, decide, ftable, fstate):
    """Index classic pcap records in buf[start:end] (the 24-byte file header excluded)."""
    n = 0
    pos = start
    max_rec = rec.shape[0]
    ahead = start
    while n < max_rec:
        ahead = prefetch_upto(buf, ahead, min(pos + PREFETCH_AHEAD, end))
        avail = end - pos
        if avail == 0:
            return n, pos, ST_OK, 0
        if avail < PCAP_REC_HDR_LEN:
            return n, pos, ST_NEED_MORE, PCAP_REC_HDR_LEN
        caplen = u32(buf, pos + 8, le)
        if caplen_is_corrupt(caplen, snaplen):
            return n, pos, ST_CORRUPT_CAPLEN, caplen
        rlen = PCAP_REC_HDR_LEN + caplen
        if rlen > avail:
            return n, pos, ST_NEED_MORE, rlen
        data = pos + PCAP_REC_HDR_LEN
        rec[n, F_START] = pos
        rec[n, F_END] = pos + rlen
        rec[n, F_DATA] = data
        rec[n, F_CAPLEN] = caplen
        rec[n, F_KIND] = KIND_PACKET
        rec[n, F_LINK] = linktype
        if ftable is None:
            kept = decide_into(buf, rec, n, data, caplen, linktype, decide)
            rec[n, F_OUTLEN] = PCAP_REC_HDR_LEN + kept
        else:
            forensic_packet(buf, rec, n, False, ftable, fstate)
        rec[n, F_LE] = le
        n += 1
        pos += rlen
    return n, pos, ST_OK, 0


@jit
def _plain_row(rec, n, pos, blen, kind, link):
    rec[n, F_START] = pos
    rec[n, F_END] = pos + blen
    rec[n, F_DATA] = pos
    rec[n, F_CAPLEN] = 0
    rec[n, F_KIND] = kind
    rec[n, F_LINK] = link
    rec[n, F_CAT] = CAT_KEEP
    rec[n, F_TUNNEL] = 0
    rec[n, F_OUTLEN] = blen


@jit
def index_pcapng(buf, start, end, state, if_link, if_snap, rec, decide, ftable, fstate):
    """Index pcapng blocks in buf[start:end]; state and interface tables carry across calls."""
    n = 0
    pos = start
    max_rec = rec.shape[0]
    ahead = start
    while n < max_rec:
        ahead = prefetch_upto(buf, ahead, min(pos + PREFETCH_AHEAD, end))
        avail = end - pos
        if avail == 0:
            return n, pos, ST_OK, 0
        if avail < 8:
            return n, pos, ST_NEED_MORE, PCAPNG_MIN_BLOCK
        iface = 0
        caplen = 0
        btype = u32(buf, pos, 1)  # the section header type reads the same in both orders
        if btype == PCAPNG_SHB:
            if avail < 12:
                return n, pos, ST_NEED_MORE, PCAPNG_MIN_BLOCK
            if u32(buf, pos + 8, 1) == PCAPNG_BOM:
                le = 1
            elif u32(buf, pos + 8, 0) == PCAPNG_BOM:
                le = 0
            else:
                return n, pos, ST_BAD_SHB, 0
        else:
            le = state[S_LE]
            btype = u32(buf, pos, le)
        blen = u32(buf, pos + 4, le)
        if blen < PCAPNG_MIN_BLOCK or blen & 3:
            return n, pos, ST_BAD_BLOCK_LEN, 0
        if btype == PCAPNG_SHB:
            if blen < PCAPNG_MIN_SHB:
                return n, pos, ST_BAD_SHB, 0
        elif btype == PCAPNG_IDB:
            if blen < PCAPNG_MIN_IDB:
                return n, pos, ST_BAD_IDB, 0
        elif btype == PCAPNG_EPB or btype == PCAPNG_OPB:
            if btype == PCAPNG_EPB and blen < PCAPNG_MIN_EPB:
                return n, pos, ST_BAD_EPB, 0
            if btype == PCAPNG_OPB and blen < PCAPNG_MIN_OPB:
                return n, pos, ST_BAD_OPB, 0
            if avail < PCAPNG_EPB_DATA:
                return n, pos, ST_NEED_MORE, blen
            if btype == PCAPNG_EPB:
                iface = u32(buf, pos + 8, le)
            else:
                iface = u16(buf, pos + 8, le)
            caplen = u32(buf, pos + 20, le)
            snap = 0
            if iface < state[S_IFACES]:
                snap = if_snap[iface]
            if snap != 0 and caplen_is_corrupt(caplen, snap):
                return n, pos, ST_CORRUPT_CAPLEN, caplen
            if PCAPNG_EPB_DATA + caplen + 4 > blen:
                return n, pos, (ST_BAD_EPB if btype == PCAPNG_EPB else ST_BAD_OPB), 0
        if blen > avail:
            return n, pos, ST_NEED_MORE, blen
        if u32(buf, pos + blen - 4, le) != blen:
            return n, pos, ST_LEN_MISMATCH, 0
        if btype == PCAPNG_SHB:
            state[S_LE] = le
            state[S_IFACES] = 0
            _plain_row(rec, n, pos, blen, KIND_SHB, -1)
        elif btype == PCAPNG_IDB:
            k = state[S_IFACES]
            if k >= if_link.shape[0]:
                return n, pos, ST_IFACE_FULL, 0
            if_link[k] = u16(buf, pos + 8, le)
            if_snap[k] = u32(buf, pos + 12, le)
            state[S_IFACES] = k + 1
            _plain_row(rec, n, pos, blen, KIND_BLOCK, -1)
        elif btype == PCAPNG_EPB and iface < state[S_IFACES]:
            link = if_link[iface]
            data = pos + PCAPNG_EPB_DATA
            rec[n, F_START] = pos
            rec[n, F_END] = pos + blen
            rec[n, F_DATA] = data
            rec[n, F_CAPLEN] = caplen
            rec[n, F_KIND] = KIND_PACKET
            rec[n, F_LINK] = link
            if ftable is None:
                kept = decide_into(buf, rec, n, data, caplen, link, decide)
                rec[n, F_OUTLEN] = blen - pad4(caplen) + pad4(kept)
            else:
                forensic_packet(buf, rec, n, True, ftable, fstate)
            rec[n, F_LE] = le
        elif btype == PCAPNG_EPB or btype == PCAPNG_OPB:
            link = if_link[iface] if iface < state[S_IFACES] else -1
            _plain_row(rec, n, pos, blen, KIND_OTHER_PACKET, link)
            rec[n, F_DATA] = pos + PCAPNG_EPB_DATA
            rec[n, F_CAPLEN] = caplen
        elif btype == PCAPNG_SPB:
            link = if_link[0] if state[S_IFACES] > 0 else -1
            _plain_row(rec, n, pos, blen, KIND_OTHER_PACKET, link)
            rec[n, F_DATA] = pos + PCAPNG_SPB_DATA
            # the frame: the original length, or as much of it as the block holds
            rec[n, F_CAPLEN] = max(0, min(u32(buf, pos + 8, le), blen - PCAPNG_MIN_SPB))
        else:
            _plain_row(rec, n, pos, blen, KIND_BLOCK, -1)
        n += 1
        pos += blen
    return n, pos, ST_OK, 0
