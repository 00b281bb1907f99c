"""Forensic rules (SPEC §8): decisions that follow TCP directions by sequence number.

State lives in a bounded open-addressing table of directions (64-byte rows, fields T_* and the
H_* fields packed in T_HEAD), carried across windows; when the probed slots are all taken, the
least recently used one is taken over. The decisions are deterministic: same input, same table
size, same output.
"""

from __future__ import annotations

import numpy as np

from ..constants import (
    CAT_DTLS,
    CAT_IPSEC,
    CAT_KEEP,
    CAT_OPENVPN,
    CAT_QUIC,
    CAT_SMB3,
    CAT_SRTP,
    CAT_SSH,
    CAT_TLS,
    CAT_TLS_OTHER_PORT,
    CAT_WIREGUARD,
    DTLS_CID,
    DTLS_HDR_LEN,
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
    F_TUNNEL,
    FS_CLOCK,
    FS_PROBES,
    H_HAVE,
    H_KEY_MASK,
    H_KIND,
    H_MODE,
    H_PHASE,
    H_RTYPE,
    IKE_FLAG_ENCRYPTION,
    IKE_HDR_LEN,
    IKE_SA_INIT,
    IP_PROTO_ESP,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    KEEP_BYTES,
    N_TFIELDS,
    OVPN_DATA_V1,
    OVPN_DATA_V2,
    OVPN_HARD_RESET_CLIENT_V2,
    OVPN_HARD_RESET_CLIENT_V3,
    OVPN_HARD_RESET_SERVER_V2,
    OVPN_MAX_OPCODE,
    OVPN_TCP_MIN_START,
    PORT_IKE,
    PORT_IKE_NAT_T,
    PORT_OPENVPN,
    PORT_QUIC,
    PORT_SSH,
    PORT_WIREGUARD,
    QUIC_V1,
    QUIC_V2,
    SMB2_COMPRESSED,
    SMB2_PLAIN,
    SMB2_TRANSFORM,
    SSH_MAX_PACKET,
    SSH_MSG_NEWKEYS,
    T_ADDR,
    T_HEAD,
    T_LAST,
    T_NEXT,
    T_REM_HDR,
    TCP_MIN_HDR,
    TLS_APPLICATION_DATA,
    TLS_HANDSHAKE,
    TLS_MAX_RECORD,
    UDP_HDR_LEN,
    WG_COOKIE,
    WG_COOKIE_LEN,
    WG_DATA,
    WG_DATA_MIN,
    WG_INITIATION,
    WG_INITIATION_LEN,
    WG_RESPONSE,
    WG_RESPONSE_LEN,
)
from .decide import (
    ip4_pseudo_dst,
    is_handshake_class,
    is_sliced_linktype,
    is_tls_port,
    parse_inner,
    starts_with_ssh,
)
from .policy import hot, jit
from .wire import be16, be32, pad4

MODE_NEW = 0
MODE_NONE = 1
MODE_LOST = 2
MODE_TLS = 3
MODE_SSH = 4
MODE_SMB = 5  # SMB2/3 messages followed (SPEC §9.5)
MODE_OVPN = 6  # OpenVPN packets over TCP followed (SPEC §9.2)
MODE_LOST_KEEP = 7  # an SMB or OpenVPN direction whose position was lost: kept until it resumes
PH_BANNER = 0
PH_PACKETS = 1
PH_NEWKEYS = 2
PH_DONE = 3

# what a UDP flow carries (H_KIND), set by the packet that marks it (SPEC §9)
FK_NONE = 0
FK_WIREGUARD = 1
FK_OPENVPN = 2
FK_DTLS = 3
FK_QUIC = 4
FK_OVPN_CLIENT = 5  # an OpenVPN client hard reset seen; its session id kept in T_REM_HDR
OVPN_SID_LEN = 8
OVPN_ECHO_WITHIN = 128  # where a server hard reset may acknowledge the client's session id
UDP_FLOW = 8  # added to the version in a UDP flow's key: its rows never meet a TCP direction's

SMB_HDR = 8  # header gathered per SMB message: the 4-byte length and the protocol id
SMB_TYPE_AT = 4  # where the protocol id's first byte (fe, fd, fc) sits in it
OVPN_HDR = 3  # header gathered per OpenVPN packet over TCP: the 2-byte length and the opcode
OVPN_TYPE_AT = 2

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
def _flow_key(buf, ver, ip, sport, dport):
    """A UDP flow as a tuple like `_key`'s, with the smaller endpoint (address words, then
    port) first and UDP_FLOW added to the version: both directions find the same row."""
    k = _key(buf, ver, ip, sport, dport)
    first = sport <= dport
    for j in range(1, 5):
        if k[j] != k[j + 4]:
            first = k[j] < k[j + 4]
            break
    if first:
        return (ver | UDP_FLOW, k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8], k[9])
    return (ver | UDP_FLOW, k[5], k[6], k[7], k[8], k[1], k[2], k[3], k[4],
            (dport << 16) | sport)  # fmt: skip


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
def _ciphertext_type(smb, t):
    """An SMB3 transform message (fd) or an OpenVPN data packet (opcodes 6 and 9)."""
    if smb:
        return t == SMB2_TRANSFORM
    op = t >> 3
    return op == OVPN_DATA_V1 or op == OVPN_DATA_V2


@jit
def _plausible_framed(table, s, smb):
    """The gathered header starts a plausible SMB2/3 message or OpenVPN packet."""
    if smb:
        t = _header_byte(table, s, 4)
        return (_header_byte(table, s, 0) == 0
                and (t == SMB2_PLAIN or t == SMB2_TRANSFORM or t == SMB2_COMPRESSED)
                and _header_byte(table, s, 5) == 0x53 and _header_byte(table, s, 6) == 0x4D
                and _header_byte(table, s, 7) == 0x42
                and ((_header_byte(table, s, 1) << 16) | (_header_byte(table, s, 2) << 8)
                     | _header_byte(table, s, 3)) >= 4)  # fmt: skip
    op = _header_byte(table, s, 2) >> 3
    return 1 <= op <= OVPN_MAX_OPCODE and ((_header_byte(table, s, 0) << 8)
                                          | _header_byte(table, s, 1)) >= 1  # fmt: skip


@hot
def walk_framed(buf, table, s, pay, cap_end, seg_len, smb):
    """Follow SMB2/3 messages (a 4-byte length, then the protocol id) or OpenVPN packets over
    TCP (a 2-byte length, then the opcode) over a segment. Returns 0 lost, 1 every byte belongs
    to encrypted messages (SMB3 transform, OpenVPN data), 2 some byte to another message, or to
    a header not wholly in this segment."""
    hdr = SMB_HDR if smb else OVPN_HDR
    type_at = SMB_TYPE_AT if smb else OVPN_TYPE_AT
    clear = False
    i = 0
    while i < seg_len:
        rem = _rem(table, s)
        if rem > 0:
            take = min(rem, seg_len - i)
            if not _ciphertext_type(smb, _field(table, s, H_RTYPE)):
                clear = True
            table[s, T_REM_HDR] = rem - take
            i += take
            continue
        take = min(hdr - _field(table, s, H_HAVE), seg_len - i)
        if pay + i + take > cap_end:
            return 0
        _gather(buf, table, s, pay + i, take)
        i += take
        have = _field(table, s, H_HAVE)
        if have < hdr or not _ciphertext_type(smb, _header_byte(table, s, type_at)):
            clear = True  # a plain message's header, or one not known to be ciphertext yet
        if have == hdr:
            if not _plausible_framed(table, s, smb):
                return 0
            t = _header_byte(table, s, type_at)
            if smb:
                length = ((_header_byte(table, s, 1) << 16) | (_header_byte(table, s, 2) << 8)
                          | _header_byte(table, s, 3)) - 4  # fmt: skip
            else:
                length = ((_header_byte(table, s, 0) << 8) | _header_byte(table, s, 1)) - 1
            _set_field(table, s, H_RTYPE, t)
            _set_field(table, s, H_HAVE, 0)
            table[s, T_REM_HDR] = length  # the header is over: the message's bytes left
    return 2 if clear else 1


@jit
def smb_start(buf, p, end):
    """A segment starting an SMB2 message or SMB3 transform: 00, a 24-bit length, fe/fd 'SMB'."""
    return (p + 8 <= end and buf[p] == 0
            and (buf[p + 4] == SMB2_PLAIN or buf[p + 4] == SMB2_TRANSFORM)
            and buf[p + 5] == 0x53 and buf[p + 6] == 0x4D and buf[p + 7] == 0x42
            and ((np.int64(buf[p + 1]) << 16) | be16(buf, p + 2)) >= 4)  # fmt: skip


@jit
def ovpn_hard_reset(b):
    """An OpenVPN first byte of a hard reset: opcode 7, 8 or 10 with key id 0."""
    op = np.int64(b) >> 3
    return (np.int64(b) & 7) == 0 and (
        op == OVPN_HARD_RESET_CLIENT_V2 or op == OVPN_HARD_RESET_SERVER_V2
        or op == OVPN_HARD_RESET_CLIENT_V3
    )  # fmt: skip


@jit
def ovpn_data(b):
    op = np.int64(b) >> 3
    return op == OVPN_DATA_V1 or op == OVPN_DATA_V2


@jit
def ovpn_tcp_whole(buf, p, end, seg_len, data_only):
    """A segment that is exactly a sequence of whole OpenVPN packets over TCP (each a 2-byte
    length and that many bytes, the lengths filling the segment, every header captured, every
    opcode known), all data packets when `data_only`."""
    q = 0
    while q < seg_len:
        if p + q + 3 > end:
            return False
        length = be16(buf, p + q)
        b = buf[p + q + 2]
        op = np.int64(b) >> 3
        if length < 1 or op < 1 or op > OVPN_MAX_OPCODE or (data_only and not ovpn_data(b)):
            return False
        q += 2 + length
    return q == seg_len


@jit
def ovpn_tcp_start(buf, p, end, seg_len):
    """A direction's first segment that opens an OpenVPN stream over TCP: a hard reset of at
    least 14 bytes, the segment made of whole packets (a hard reset is sent alone, then
    answered)."""
    return (p + 3 <= end and be16(buf, p) >= OVPN_TCP_MIN_START and ovpn_hard_reset(buf[p + 2])
            and ovpn_tcp_whole(buf, p, end, seg_len, False))  # fmt: skip


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
def fallback_tcp(buf, pay, cap_end, seg_len, sport, dport):
    """§1 rule 6 with the changes of §8 rules 2 and 3, and §9.2's OpenVPN data on port 1194."""
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
    if (sport == PORT_OPENVPN or dport == PORT_OPENVPN) and ovpn_tcp_whole(
        buf, pay, cap_end, seg_len, True
    ):
        return CAT_OPENVPN
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
    framed = mode == MODE_SMB or mode == MODE_OVPN
    if mode == MODE_SSH or mode == MODE_TLS or framed:
        if not at_next:  # a retransmission falls back; an overlap or a gap loses the position
            if not old:
                _set_field(table, s, H_MODE, MODE_LOST_KEEP if framed else MODE_LOST)
            if framed:
                return CAT_KEEP
            return fallback_tcp(buf, pay, cap_end, seg_len, sport, dport)
        table[s, T_NEXT] = (seq + seg_len) & 0xFFFFFFFF
    else:
        table[s, T_NEXT] = (seq + seg_len) & 0xFFFFFFFF
        if mode == MODE_NEW and starts_with_ssh(buf, pay, cap_end):
            mode = MODE_SSH
        elif plausible_tls(buf, pay, cap_end):
            mode = MODE_TLS
        elif smb_start(buf, pay, cap_end):
            mode = MODE_SMB
        elif mode == MODE_NEW and ovpn_tcp_start(buf, pay, cap_end, seg_len):
            mode = MODE_OVPN  # a hard reset opens the direction: only its first segment
        else:
            if mode == MODE_NEW:
                _set_field(table, s, H_MODE, MODE_NONE)
            if mode == MODE_LOST_KEEP:
                return CAT_KEEP
            return fallback_tcp(buf, pay, cap_end, seg_len, sport, dport)
        _start(table, s, mode)
    if mode == MODE_SSH:
        if walk_ssh(buf, table, s, pay, cap_end, seg_len):
            return CAT_KEEP
    elif mode == MODE_SMB or mode == MODE_OVPN:
        w = walk_framed(buf, table, s, pay, cap_end, seg_len, mode == MODE_SMB)
        if w == 2:
            return CAT_KEEP
        if w == 1:
            return CAT_SMB3 if mode == MODE_SMB else CAT_OPENVPN
        _set_field(table, s, H_MODE, MODE_LOST_KEEP)
        return CAT_KEEP
    else:
        w = walk_tls(buf, table, s, pay, cap_end, seg_len)
        if w == 2:
            return CAT_KEEP
        if w == 1:
            return tls_cat
    _set_field(table, s, H_MODE, MODE_LOST)
    return fallback_tcp(buf, pay, cap_end, seg_len, sport, dport)


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


@jit
def wg_message(buf, p, end, plen):
    """The WireGuard message a UDP payload of plen bytes is: 1-3 a handshake message of its
    exact length, 4 transport data (at least 32 bytes, plen - 16 a multiple of 16), else 0."""
    if p + 4 > end or buf[p + 1] != 0 or buf[p + 2] != 0 or buf[p + 3] != 0:
        return 0
    t = np.int64(buf[p])
    if ((t == WG_INITIATION and plen == WG_INITIATION_LEN)
            or (t == WG_RESPONSE and plen == WG_RESPONSE_LEN)
            or (t == WG_COOKIE and plen == WG_COOKIE_LEN)):  # fmt: skip
        return t
    if t == WG_DATA and plen >= WG_DATA_MIN and (plen - 16) % 16 == 0:
        return t
    return 0


@jit
def dtls_scan(buf, p, end, plen):
    """A datagram of plen bytes wholly made of DTLS 1.0/1.2 records (13-byte headers with
    version fe ff or fe fd, every header captured, the lengths filling the datagram exactly):
    0 not such a datagram, 1 every record application data (23) or connection-id ciphertext
    (25), 2 kept with a handshake record (22), 3 kept otherwise."""
    if plen < DTLS_HDR_LEN:
        return 0
    q = 0
    cipher = True
    handshake = False
    while q < plen:
        h = p + q
        if h + DTLS_HDR_LEN > end or buf[h + 1] != 0xFE:
            return 0
        if buf[h + 2] != 0xFF and buf[h + 2] != 0xFD:
            return 0
        t = np.int64(buf[h])
        if t != TLS_APPLICATION_DATA and t != DTLS_CID:
            cipher = False
        if t == TLS_HANDSHAKE:
            handshake = True
        q += DTLS_HDR_LEN + be16(buf, h + 11)
    if q != plen:
        return 0
    if cipher:
        return 1
    return 2 if handshake else 3


@jit
def quic_initial(buf, p, end):
    """A long-header QUIC v1 or v2 Initial packet starts at p."""
    if p + 5 > end or (np.int64(buf[p]) & 0xC0) != 0xC0:
        return False
    version = be32(buf, p + 1)
    ptype = (np.int64(buf[p]) >> 4) & 3
    return (version == QUIC_V1 and ptype == 0) or (version == QUIC_V2 and ptype == 1)


@jit
def quic_protected(buf, p, end):
    """A short-header packet (first byte 0x40-0x7f), or a long-header Handshake or 0-RTT packet
    of QUIC v1 or v2, starts at p."""
    b = np.int64(buf[p])
    if 0x40 <= b <= 0x7F:
        return True
    if p + 5 > end or (b & 0xC0) != 0xC0:
        return False
    version = be32(buf, p + 1)
    ptype = (b >> 4) & 3
    if version == QUIC_V1:
        return ptype == 1 or ptype == 2
    if version == QUIC_V2:
        return ptype == 2 or ptype == 3
    return False


@jit
def _be64(buf, p):
    return (be32(buf, p) << 32) | be32(buf, p + 4)


@jit
def ovpn_reset(buf, table, s, pay, pend, kind):
    """An OpenVPN hard reset in a UDP flow. A client's (opcode 7 or 10) keeps its session id;
    a server's (opcode 8) that acknowledges that session id (the client's id in its first
    128 bytes) marks the flow as OpenVPN. A cleartext datagram whose first byte happens to be a
    hard reset's (a DNS transaction id of 0x38..) cannot answer an 8-byte id it never saw."""
    if kind == FK_OPENVPN or pay + 1 + OVPN_SID_LEN > pend:
        return
    if np.int64(buf[pay]) >> 3 != OVPN_HARD_RESET_SERVER_V2:
        _set_field(table, s, H_KIND, FK_OVPN_CLIENT)
        table[s, T_REM_HDR] = _be64(buf, pay + 1)
        return
    if kind != FK_OVPN_CLIENT:
        return
    sid = table[s, T_REM_HDR]
    last = min(pend, pay + OVPN_ECHO_WITHIN) - OVPN_SID_LEN
    for q in range(pay + 1 + OVPN_SID_LEN, last + 1):
        if _be64(buf, q) == sid:
            _set_field(table, s, H_KIND, FK_OPENVPN)
            return


@hot
def udp_decide(buf, table, s, pay, pend, plen, sport, dport):
    """SPEC §9.1-9.4 and §9.7 for a UDP datagram off ports 443, 500 and 4500 whose flow is in
    row s: first what the flow is known to carry cuts, then a packet that marks the flow is
    kept (and marks it), then the rules that need no state."""
    b = np.int64(buf[pay])
    kind = _field(table, s, H_KIND)
    wg = wg_message(buf, pay, pend, plen)
    if kind == FK_WIREGUARD and wg == WG_DATA:
        return CAT_WIREGUARD
    if kind == FK_OPENVPN and ovpn_data(b):
        return CAT_OPENVPN
    if kind == FK_QUIC and quic_protected(buf, pay, pend):
        return CAT_QUIC
    if kind == FK_DTLS:
        if 128 <= b <= 191:
            return CAT_SRTP
        if 0x20 <= b <= 0x3F:
            return CAT_DTLS  # a DTLS 1.3 unified header: ciphertext
    if wg != 0 and wg != WG_DATA:
        _set_field(table, s, H_KIND, FK_WIREGUARD)
        return CAT_KEEP
    if quic_initial(buf, pay, pend):
        _set_field(table, s, H_KIND, FK_QUIC)
        return CAT_KEEP
    d = dtls_scan(buf, pay, pend, plen)
    if d == 2:
        _set_field(table, s, H_KIND, FK_DTLS)
    if d == 1:
        return CAT_DTLS
    if d != 0:
        return CAT_KEEP
    if ovpn_hard_reset(b):
        ovpn_reset(buf, table, s, pay, pend, kind)
        return CAT_KEEP
    if wg == WG_DATA and (sport == PORT_WIREGUARD or dport == PORT_WIREGUARD):
        return CAT_WIREGUARD
    if ovpn_data(b) and (sport == PORT_OPENVPN or dport == PORT_OPENVPN):
        return CAT_OPENVPN
    return CAT_KEEP


@hot
def forensic_packet(buf, rec, i, pcapng, table, fstate):
    """Decide record i (a packet whose location fields are filled) by the forensic rules, in
    capture order: its decision, cut offsets and output size (called by the index kernels).
    `fstate` holds the clock ([FS_CLOCK]: packets decided so far, across windows, for the LRU)
    and the number of slots probed per lookup ([FS_PROBES])."""
    caplen = rec[i, F_CAPLEN]
    data = rec[i, F_DATA]
    rec[i, F_CAT] = CAT_KEEP
    rec[i, F_TUNNEL] = 0
    rec[i, F_OUTLEN] = rec[i, F_END] - rec[i, F_START]
    if not is_sliced_linktype(rec[i, F_LINK]):
        return
    fstate[FS_CLOCK] += 1
    fend = data + caplen
    ver, ip, proto, l4, ip_end, dst, tunnels = parse_inner(buf, data, caplen, rec[i, F_LINK])
    rec[i, F_TUNNEL] = tunnels
    if l4 < 0 or (proto != IP_PROTO_TCP and proto != IP_PROTO_UDP and proto != IP_PROTO_ESP):
        return
    pay = 0
    if proto == IP_PROTO_TCP:
        doff = (np.int64(buf[l4 + 12]) >> 4) * 4 if l4 + TCP_MIN_HDR <= fend else 0
        if doff >= TCP_MIN_HDR and l4 + doff <= fend:
            pay = l4 + doff
    elif proto == IP_PROTO_ESP:
        pay = l4  # §9.6: 24 bytes of ESP stay (SPI, sequence number, IV and ciphertext)
    elif l4 + UDP_HDR_LEN <= fend:
        pay = l4 + UDP_HDR_LEN
    if pay == 0:
        return
    pend = ip_end if ip_end < fend else fend
    plen = pend - pay
    cat = CAT_KEEP
    if proto == IP_PROTO_ESP:
        sport = dport = 0
        cat = CAT_IPSEC
    else:
        sport = be16(buf, l4)
        dport = be16(buf, l4 + 2)
    if proto == IP_PROTO_TCP:
        seg_len = ip_end - pay
        if seg_len > 0 and plen > 0:
            key = _key(buf, ver, ip, sport, dport)
            s = _slot(table, key, fstate[FS_CLOCK], fstate[FS_PROBES])
            cat = tcp_decide(buf, table, s, be32(buf, l4 + 4), pay, pend, seg_len, sport, dport)
    elif proto == IP_PROTO_ESP:
        pass
    elif sport == PORT_QUIC or dport == PORT_QUIC:
        if plen > KEEP_BYTES:
            cat = CAT_KEEP if quic_kept(buf, pay, pend) else CAT_QUIC
    elif (sport == PORT_IKE or dport == PORT_IKE or sport == PORT_IKE_NAT_T
          or dport == PORT_IKE_NAT_T):  # fmt: skip
        if plen > KEEP_BYTES:
            cat = CAT_KEEP if ike_kept(buf, pay, pend, sport, dport) else CAT_IPSEC
    elif plen > 0:
        s = _slot(table, _flow_key(buf, ver, ip, sport, dport), fstate[FS_CLOCK],
                  fstate[FS_PROBES])  # fmt: skip
        cat = udp_decide(buf, table, s, pay, pend, ip_end - pay, sport, dport)
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
