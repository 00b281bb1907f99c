"""Forensic rules (SPEC §8): decisions that follow TCP directions by sequence number.

State lives in a bounded open-addressing table of directions (64-byte rows, fields T_* and the
H_* fields packed in T_HEAD), carried across windows; when the probed slots are all taken, the
least recently used one is taken over. The decisions are deterministic: same input, same table
size, same output.
"""

from __future__ import annotations

import numpy as np

from ..constants import (
    CAT_IPSEC,
    CAT_KEEP,
    CAT_QUIC,
    CAT_SSH,
    CAT_TLS,
    CAT_TLS_OTHER_PORT,
    F_CAPLEN,
    F_CAT,
    F_DATA,
    F_DST,
    F_END,
    F_IP,
    F_L4,
    F_LINK,
    F_OUTLEN,
    F_PAY,
    F_START,
    FS_CLOCK,
    FS_PROBES,
    H_HAVE,
    H_KEY_MASK,
    H_MODE,
    H_PHASE,
    H_RTYPE,
    IKE_FLAG_ENCRYPTION,
    IKE_HDR_LEN,
    IKE_SA_INIT,
    IP_PROTO_TCP,
    KEEP_BYTES,
    N_TFIELDS,
    PORT_IKE,
    PORT_IKE_NAT_T,
    PORT_QUIC,
    PORT_SSH,
    QUIC_V1,
    QUIC_V2,
    SSH_MAX_PACKET,
    SSH_MSG_NEWKEYS,
    T_ADDR,
    T_HEAD,
    T_LAST,
    T_NEXT,
    T_REM_HDR,
    TCP_MIN_HDR,
    TLS_APPLICATION_DATA,
    TLS_MAX_RECORD,
    UDP_HDR_LEN,
)
from .decide import (
    ip4_pseudo_dst,
    is_handshake_class,
    is_sliced_linktype,
    is_tls_port,
    parse_ip,
    starts_with_ssh,
)
from .policy import hot, jit
from .wire import be16, be32, pad4

MODE_NEW = 0
MODE_NONE = 1
MODE_LOST = 2
MODE_TLS = 3
MODE_SSH = 4
PH_BANNER = 0
PH_PACKETS = 1
PH_NEWKEYS = 2
PH_DONE = 3

HASH_MASK = 0x7FFFFFFF


@hot
def _key(buf, ver, ip, sport, dport):
    """A direction as a tuple of ten ints: version, source words, destination words, ports."""
    if ver == 4:
        return (ver, 0, 0, 0, be32(buf, ip + 12), 0, 0, 0, be32(buf, ip + 16),
                (sport << 16) | dport)  # fmt: skip
    return (ver, be32(buf, ip + 8), be32(buf, ip + 12), be32(buf, ip + 16), be32(buf, ip + 20),
            be32(buf, ip + 24), be32(buf, ip + 28), be32(buf, ip + 32), be32(buf, ip + 36),
            (sport << 16) | dport)  # fmt: skip


@hot
def _hash(key):
    """Mix the ten key words: ten independent products (a 32-bit word times a 31-bit odd
    constant, so every value stays below 2**63 and is the same with or without the JIT)."""
    h = (key[0] * 0x2545F491 ^ key[1] * 0x4F6CDD1D ^ key[2] * 0x7FEB352D ^ key[3] * 0x3C6EF35F
         ^ key[4] * 0x6A09E667 ^ key[5] * 0x3243F6A9 ^ key[6] * 0x510E527F
         ^ key[7] * 0x1F83D9AB ^ key[8] * 0x5BE0CD19 ^ key[9] * 0x2B7E1517)  # fmt: skip
    h ^= h >> 31
    h = (h & HASH_MASK) * 0x1B873593
    return h ^ (h >> 29)


@hot
def _pack(hi, lo):
    """Two 32-bit words as one int64 (hi taken as signed): equal exactly when both are."""
    return ((hi ^ 0x80000000) - 0x80000000) * 4294967296 + lo


@hot
def _field(table, s, field):
    return (table[s, T_HEAD] >> field[0]) & field[1]


@hot
def _set_field(table, s, field, value):
    table[s, T_HEAD] = (table[s, T_HEAD] & ~(field[1] << field[0])) | (np.int64(value) << field[0])


@hot
def _rem(table, s):
    """Bytes left of the current TLS record or SSH packet (none while a header is gathered)."""
    return table[s, T_REM_HDR] if _field(table, s, H_HAVE) == 0 else 0


@hot
def _slot(table, key, clock, probes):
    """The slot of a direction: found, free, or the least recently used one taken over."""
    h = _hash(key)
    mask = table.shape[0] - 1  # a power of two
    head = key[0] | (key[9] << 24)  # version and ports
    a0 = _pack(key[1], key[2])
    a1 = _pack(key[3], key[4])
    a2 = _pack(key[5], key[6])
    a3 = _pack(key[7], key[8])
    oldest = -1
    for p in range(probes):
        s = (h + p) & mask
        if table[s, T_HEAD] == 0:
            oldest = s
            break
        if ((table[s, T_HEAD] & H_KEY_MASK) == head and table[s, T_ADDR] == a0
                and table[s, T_ADDR + 1] == a1 and table[s, T_ADDR + 2] == a2
                and table[s, T_ADDR + 3] == a3):  # fmt: skip
            table[s, T_LAST] = clock
            return s
        if oldest < 0 or table[s, T_LAST] < table[oldest, T_LAST]:
            oldest = s
    for f in range(N_TFIELDS):
        table[oldest, f] = 0
    table[oldest, T_HEAD] = head
    table[oldest, T_ADDR] = a0
    table[oldest, T_ADDR + 1] = a1
    table[oldest, T_ADDR + 2] = a2
    table[oldest, T_ADDR + 3] = a3
    table[oldest, T_LAST] = clock
    return oldest


@jit
def plausible_tls(buf, p, end):
    if p + 5 > end:
        return False
    t = np.int64(buf[p])
    return (0x14 <= t <= 0x18 and buf[p + 1] == 3 and buf[p + 2] <= 4
            and be16(buf, p + 3) <= TLS_MAX_RECORD)  # fmt: skip


@jit
def _header_byte(table, s, j):
    """Byte j of the gathered header."""
    return (table[s, T_REM_HDR] >> (8 * (_field(table, s, H_HAVE) - 1 - j))) & 0xFF


@hot
def _gather(buf, table, s, at, take):
    """Add `take` header bytes from buf[at:] to those gathered."""
    for k in range(take):
        table[s, T_REM_HDR] = (table[s, T_REM_HDR] << 8) | np.int64(buf[at + k])
    _set_field(table, s, H_HAVE, _field(table, s, H_HAVE) + take)


@hot
def walk_tls(buf, table, s, pay, cap_end, seg_len):
    """Follow TLS records over a segment. Returns 0 lost, 1 all application data, 2 some byte
    of a handshake-class record."""
    handshake = False
    i = 0
    while i < seg_len:
        rem = _rem(table, s)
        if rem > 0:
            take = min(rem, seg_len - i)
            if is_handshake_class(_field(table, s, H_RTYPE)):
                handshake = True
            table[s, T_REM_HDR] = rem - take
            i += take
            continue
        take = min(5 - _field(table, s, H_HAVE), seg_len - i)
        if pay + i + take > cap_end:
            return 0
        _gather(buf, table, s, pay + i, take)
        i += take
        if is_handshake_class(_header_byte(table, s, 0)):
            handshake = True
        if _field(table, s, H_HAVE) == 5:
            t = _header_byte(table, s, 0)
            length = (_header_byte(table, s, 3) << 8) | _header_byte(table, s, 4)
            if not (0x14 <= t <= 0x18 and _header_byte(table, s, 1) == 3
                    and _header_byte(table, s, 2) <= 4 and length <= TLS_MAX_RECORD):  # fmt: skip
                return 0
            _set_field(table, s, H_RTYPE, t)
            _set_field(table, s, H_HAVE, 0)
            table[s, T_REM_HDR] = length  # the header is over: the record's bytes left
    return 2 if handshake else 1


@jit
def walk_ssh(buf, table, s, pay, cap_end, seg_len):
    """Follow the banner and binary packet lengths; False when the position is lost."""
    i = 0
    while i < seg_len and (
        _field(table, s, H_PHASE) == PH_BANNER or _field(table, s, H_PHASE) == PH_PACKETS
    ):
        if _field(table, s, H_PHASE) == PH_BANNER:
            if pay + i >= cap_end:
                return False
            j = pay + i
            while j < cap_end and buf[j] != 0x0A:
                j += 1
            if j == cap_end:
                return cap_end - pay >= seg_len  # the banner goes on in the next segment
            i = j + 1 - pay
            _set_field(table, s, H_PHASE, PH_PACKETS)
            continue
        rem = _rem(table, s)
        if rem > 0:
            take = min(rem, seg_len - i)
            table[s, T_REM_HDR] = rem - take
            i += take
            continue
        take = min(6 - _field(table, s, H_HAVE), seg_len - i)
        if pay + i + take > cap_end:
            return False
        _gather(buf, table, s, pay + i, take)
        i += take
        if _field(table, s, H_HAVE) == 6:
            length = table[s, T_REM_HDR] >> 16
            msg = table[s, T_REM_HDR] & 0xFF
            if length < 2 or length > SSH_MAX_PACKET:
                return False
            _set_field(table, s, H_HAVE, 0)
            table[s, T_REM_HDR] = 4 + length - 6  # the header is over: the packet's bytes left
            if msg == SSH_MSG_NEWKEYS:
                _set_field(table, s, H_PHASE, PH_NEWKEYS)  # what follows is encrypted
    if _field(table, s, H_PHASE) == PH_NEWKEYS:
        _set_field(table, s, H_PHASE, PH_DONE)  # this segment carried NEWKEYS: kept; later cut
    return True


@jit
def ssh_kex_packet(buf, p, end):
    if p + 6 > end:
        return False
    length = be32(buf, p)
    pad = np.int64(buf[p + 4])
    msg = np.int64(buf[p + 5])
    return (12 <= length <= SSH_MAX_PACKET and 4 <= pad < length
            and (msg == 20 or msg == 21 or 30 <= msg <= 34))  # fmt: skip


@jit
def fallback_tcp(buf, pay, cap_end, sport, dport):
    """§1 rule 6 with the changes of §8 rules 2 and 3."""
    if cap_end - pay < 4:
        return CAT_KEEP  # too short to be cut anyway
    tls_port = is_tls_port(sport) or is_tls_port(dport)
    first = np.int64(buf[pay])
    if tls_port and not is_handshake_class(first):
        return CAT_TLS
    if (not tls_port and first == TLS_APPLICATION_DATA and buf[pay + 1] == 3
            and buf[pay + 2] <= 4):  # fmt: skip
        return CAT_TLS_OTHER_PORT
    if (
        (sport == PORT_SSH or dport == PORT_SSH)
        and not starts_with_ssh(buf, pay, cap_end)
        and not ssh_kex_packet(buf, pay, cap_end)
    ):
        return CAT_SSH
    return CAT_KEEP


@jit
def _start(table, s, mode):
    """Begin following a direction from a record (or banner) boundary."""
    _set_field(table, s, H_MODE, mode)
    _set_field(table, s, H_PHASE, PH_BANNER)
    _set_field(table, s, H_HAVE, 0)
    table[s, T_REM_HDR] = 0


@hot
def tcp_decide(buf, table, s, seq, pay, cap_end, seg_len, sport, dport):
    tls_cat = CAT_TLS if (is_tls_port(sport) or is_tls_port(dport)) else CAT_TLS_OTHER_PORT
    nxt = table[s, T_NEXT]
    delta = (seq - nxt) & 0xFFFFFFFF
    at_next = delta == 0
    old = delta >= 0x80000000 and ((nxt - (seq + seg_len)) & 0xFFFFFFFF) < 0x80000000
    mode = _field(table, s, H_MODE)
    if mode == MODE_SSH and _field(table, s, H_PHASE) == PH_DONE:
        return CAT_SSH
    if mode == MODE_SSH or mode == MODE_TLS:
        if not at_next:  # a retransmission falls back; an overlap or a gap loses the position
            if not old:
                _set_field(table, s, H_MODE, MODE_LOST)
            return fallback_tcp(buf, pay, cap_end, sport, dport)
        table[s, T_NEXT] = (seq + seg_len) & 0xFFFFFFFF
    else:
        table[s, T_NEXT] = (seq + seg_len) & 0xFFFFFFFF
        if mode == MODE_NEW and starts_with_ssh(buf, pay, cap_end):
            mode = MODE_SSH
        elif plausible_tls(buf, pay, cap_end):
            mode = MODE_TLS
        else:
            if mode == MODE_NEW:
                _set_field(table, s, H_MODE, MODE_NONE)
            return fallback_tcp(buf, pay, cap_end, sport, dport)
        _start(table, s, mode)
    if mode == MODE_SSH:
        if walk_ssh(buf, table, s, pay, cap_end, seg_len):
            return CAT_KEEP
    else:
        w = walk_tls(buf, table, s, pay, cap_end, seg_len)
        if w == 2:
            return CAT_KEEP
        if w == 1:
            return tls_cat
    _set_field(table, s, H_MODE, MODE_LOST)
    return fallback_tcp(buf, pay, cap_end, sport, dport)


@jit
def quic_kept(buf, p, end):
    if p + 5 > end or (np.int64(buf[p]) & 0xC0) != 0xC0:
        return False
    version = be32(buf, p + 1)
    ptype = (np.int64(buf[p]) >> 4) & 3
    if version == 0:
        return True
    if version == QUIC_V1:
        return ptype == 0 or ptype == 3
    if version == QUIC_V2:
        return ptype == 1 or ptype == 0
    return False


@jit
def ike_kept(buf, p, end, sport, dport):
    nat_t = (sport == PORT_IKE_NAT_T or dport == PORT_IKE_NAT_T) and not (
        sport == PORT_IKE or dport == PORT_IKE
    )
    if nat_t:
        if p + 4 > end or be32(buf, p) != 0:
            return False  # ESP in UDP
        p += 4
    if p + IKE_HDR_LEN > end:
        return False
    major = np.int64(buf[p + 17]) >> 4
    if major == 2:
        return buf[p + 18] == IKE_SA_INIT
    if major == 1:
        return (np.int64(buf[p + 19]) & IKE_FLAG_ENCRYPTION) == 0
    return False


@hot
def forensic_packet(buf, rec, i, pcapng, table, fstate):
    """Decide record i (a packet whose location fields are filled) by the forensic rules, in
    capture order: its decision, cut offsets and output size (called by the index kernels).
    `fstate` holds the clock ([FS_CLOCK]: packets decided so far, across windows, for the LRU)
    and the number of slots probed per lookup ([FS_PROBES])."""
    caplen = rec[i, F_CAPLEN]
    data = rec[i, F_DATA]
    rec[i, F_CAT] = CAT_KEEP
    rec[i, F_OUTLEN] = rec[i, F_END] - rec[i, F_START]
    if not is_sliced_linktype(rec[i, F_LINK]):
        return
    fstate[FS_CLOCK] += 1
    fend = data + caplen
    ver, ip, proto, l4, ip_end, dst = parse_ip(buf, data, caplen, rec[i, F_LINK])
    if l4 < 0:
        return
    pay = 0
    if proto == IP_PROTO_TCP:
        doff = (np.int64(buf[l4 + 12]) >> 4) * 4 if l4 + TCP_MIN_HDR <= fend else 0
        if doff >= TCP_MIN_HDR and l4 + doff <= fend:
            pay = l4 + doff
    elif l4 + UDP_HDR_LEN <= fend:
        pay = l4 + UDP_HDR_LEN
    if pay == 0:
        return
    pend = ip_end if ip_end < fend else fend
    plen = pend - pay
    sport = be16(buf, l4)
    dport = be16(buf, l4 + 2)
    cat = CAT_KEEP
    if proto == IP_PROTO_TCP:
        seg_len = ip_end - pay
        if seg_len > 0 and plen > 0:
            key = _key(buf, ver, ip, sport, dport)
            s = _slot(table, key, fstate[FS_CLOCK], fstate[FS_PROBES])
            cat = tcp_decide(buf, table, s, be32(buf, l4 + 4), pay, pend, seg_len, sport, dport)
    elif plen > KEEP_BYTES:
        if sport == PORT_QUIC or dport == PORT_QUIC:
            cat = CAT_KEEP if quic_kept(buf, pay, pend) else CAT_QUIC
        elif (sport == PORT_IKE or dport == PORT_IKE or sport == PORT_IKE_NAT_T
              or dport == PORT_IKE_NAT_T):  # fmt: skip
            cat = CAT_KEEP if ike_kept(buf, pay, pend, sport, dport) else CAT_IPSEC
    if plen <= KEEP_BYTES or cat == CAT_KEEP:
        return
    if ver == 4:
        dst = ip4_pseudo_dst(buf, ip, (np.int64(buf[ip]) & 0x0F) * 4)
    rec[i, F_CAT] = cat
    rec[i, F_IP] = ip - data
    rec[i, F_L4] = l4 - data
    rec[i, F_PAY] = pay - data
    rec[i, F_DST] = dst - data
    kept = pay - data + KEEP_BYTES
    if pcapng:
        rec[i, F_OUTLEN] = rec[i, F_END] - rec[i, F_START] - pad4(caplen) + pad4(kept)
    else:
        rec[i, F_OUTLEN] = data - rec[i, F_START] + kept
