"""Slow, obvious twin of the forensic rules (SPEC §8 and §9), written from the spec in plain
Python.

`Forensic(slots, probes).decide` decides a capture's frames in order (pass it to
`naive.slim_bytes` for a whole file), keeping per-direction state in a bounded table with the
kernel's policy, written here from its description: a direction's key is hashed to a slot,
`probes` slots from there are looked at, and when none is free and none is the direction's own,
the least recently used of them (by a clock that counts the packets of sliced link types) is
taken over, its state starting afresh. A UDP flow of §9 lives in the same table under the key of
its smaller endpoint (address words, then port) first, with 8 added to the version; every UDP
datagram with a payload byte captured, off ports 443, 500 and 4500, looks its flow up. Cuts are
made by `naive._cut`, exactly as SPEC §2 says (and §9.6 for ESP).

Where §9 leaves the order open, the README's reading is followed: a UDP datagram is first cut by
what its flow is known to carry, then kept (marking the flow) when it is a WireGuard handshake
message, a QUIC Initial, a datagram of DTLS records (marking only with a handshake record) or an
OpenVPN hard reset, then cut by the rules that need no state (DTLS application data anywhere,
WireGuard data on 51820, OpenVPN data on 1194). Over TCP, SMB and OpenVPN directions are
followed like TLS; a lost one keeps every segment until a segment starts a plausible header.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import naive

TLS_PORTS = naive.TLS_PORTS
HANDSHAKE_CLASS = naive.HANDSHAKE_CLASS
MAX_TLS_RECORD = 18432
MAX_SSH_PACKET = 256 * 1024
QUIC_V1, QUIC_V2 = 0x00000001, 0x6B3343CF
SSH_KEX_MESSAGES = {20, 21, 30, 31, 32, 33, 34}
TABLE_SLOTS, TABLE_PROBES = 1 << 18, 16  # the size the command uses
EVENTS: Counter[str] = Counter()  # what the walks met, for the tests' coverage checks
# the direction hash: each of the ten key words times its own odd 31-bit constant, xor-ed,
# then folded: (h ^ h >> 31), low 31 bits times 0x1B873593, (h ^ h >> 29)
KEY_MULTIPLIERS = (0x2545F491, 0x4F6CDD1D, 0x7FEB352D, 0x3C6EF35F, 0x6A09E667, 0x3243F6A9,
                   0x510E527F, 0x1F83D9AB, 0x5BE0CD19, 0x2B7E1517)  # fmt: skip


@dataclass
class Direction:
    mode: str = "new"  # new, none, lost, tls, ssh, smb, ovpn, lost_keep
    next_seq: int = 0
    rem: int = 0  # bytes left of the current TLS record / SSH packet
    hdr: bytes = b""  # header bytes gathered so far
    rtype: int = 0  # TLS record type, SMB protocol id byte, OpenVPN opcode byte
    ssh_phase: str = "banner"  # banner, packets, done
    carries: str = ""  # a UDP flow: wireguard, openvpn(_client), dtls, quic, "" before any mark
    client_session: bytes = b""  # an OpenVPN client hard reset's session id


def direction_key(version: int, src: bytes, dst: bytes, sport: int, dport: int) -> tuple[int, ...]:
    """Version, the source and destination as four 32-bit words each (IPv4: three zeros, then
    the address), and the ports as one word."""

    def words(a: bytes) -> list[int]:
        if len(a) == 4:
            return [0, 0, 0, int.from_bytes(a, "big")]
        return [int.from_bytes(a[i : i + 4], "big") for i in range(0, 16, 4)]

    return (version, *words(src), *words(dst), (sport << 16) | dport)


def udp_flow_key(version: int, src: bytes, dst: bytes, sport: int, dport: int) -> tuple[int, ...]:
    """Both directions of a UDP conversation: the smaller endpoint first, version + 8."""
    k = direction_key(version, src, dst, sport, dport)
    a, b = (k[1:5], sport), (k[5:9], dport)
    (wa, pa), (wb, pb) = sorted([a, b])
    return (version + 8, *wa, *wb, (pa << 16) | pb)


def key_hash(key: tuple[int, ...]) -> int:
    h = 0
    for word, m in zip(key, KEY_MULTIPLIERS):
        h ^= word * m
    h ^= h >> 31
    h = (h & 0x7FFFFFFF) * 0x1B873593
    return h ^ (h >> 29)


@dataclass
class Slot:
    key: tuple[int, ...]
    last: int  # clock of the last packet that looked it up
    direction: Direction


class DirectionTable:
    def __init__(self, slots: int, probes: int) -> None:
        self.slots: list[Slot | None] = [None] * slots
        self.probes = probes
        self.taken_over = 0  # directions whose state was dropped for another's

    def lookup(self, key: tuple[int, ...], clock: int) -> Direction:
        h = key_hash(key)
        oldest = None
        for p in range(self.probes):
            s = (h + p) % len(self.slots)
            slot = self.slots[s]
            if slot is None:
                oldest = s
                break
            if slot.key == key:
                slot.last = clock
                return slot.direction
            if oldest is None or slot.last < self.slots[oldest].last:  # type: ignore[union-attr]
                oldest = s
        assert oldest is not None
        if self.slots[oldest] is not None:
            self.taken_over += 1
        self.slots[oldest] = Slot(key, clock, Direction())
        return self.slots[oldest].direction  # type: ignore[union-attr]


@dataclass
class Walk:
    ok: bool
    handshake: bool = False  # some byte belongs to a handshake-class record


def plausible_tls(h: bytes) -> bool:
    return (
        len(h) >= 5
        and 0x14 <= h[0] <= 0x18
        and h[1] == 3
        and h[2] <= 4
        and int.from_bytes(h[3:5], "big") <= MAX_TLS_RECORD
    )


def walk_tls(st: Direction, data: bytes, seg_len: int) -> Walk:
    """Follow record boundaries over one segment: data is what was captured of seg_len bytes."""
    w = Walk(True)
    i = 0
    while i < seg_len:
        if st.rem > 0:
            take = min(st.rem, seg_len - i)
            w.handshake |= st.rtype in HANDSHAKE_CLASS
            st.rem -= take
            i += take
            continue
        need = 5 - len(st.hdr)
        take = min(need, seg_len - i)
        if i + take > len(data):
            EVENTS["tls_header_not_captured"] += 1
            return Walk(False)  # a record header in bytes that were not captured
        st.hdr += data[i : i + take]
        w.handshake |= st.hdr[0] in HANDSHAKE_CLASS
        i += take
        if len(st.hdr) == 5:
            if not plausible_tls(st.hdr):
                return Walk(False)
            st.rtype, st.rem, st.hdr = st.hdr[0], int.from_bytes(st.hdr[3:5], "big"), b""
    return w


def walk_ssh(st: Direction, data: bytes, seg_len: int) -> bool:
    """Follow the banner and binary packet lengths; NEWKEYS moves the phase to done."""
    i = 0
    while i < seg_len and st.ssh_phase in ("banner", "packets"):
        if st.ssh_phase == "banner":
            if i >= len(data):
                return False
            nl = data.find(b"\n", i)
            if nl < 0:
                if len(data) < seg_len:
                    return False
                return True  # the banner goes on in the next segment
            i = nl + 1
            st.ssh_phase = "packets"
            continue
        if st.rem > 0:
            take = min(st.rem, seg_len - i)
            st.rem -= take
            i += take
            continue
        take = min(6 - len(st.hdr), seg_len - i)
        if i + take > len(data):
            EVENTS["ssh_header_not_captured"] += 1
            return False
        st.hdr += data[i : i + take]
        i += take
        if len(st.hdr) == 6:
            length, msg = int.from_bytes(st.hdr[:4], "big"), st.hdr[5]
            if length < 2 or length > MAX_SSH_PACKET:
                return False
            st.rem, st.hdr = 4 + length - 6, b""
            if msg == 21:
                st.ssh_phase = "newkeys"  # what follows is encrypted: stop parsing
    if st.ssh_phase == "newkeys":
        st.ssh_phase = "done"  # this segment carried NEWKEYS: it is kept, later ones cut
    return True


# --- §9.2 and §9.5: SMB2/3 messages and OpenVPN packets over TCP ---------------------------

SMB_IDS = {0xFE, 0xFD, 0xFC}  # plain, transform (encrypted), compressed
OVPN_DATA = {6, 9}
OVPN_HARD_RESETS = {7, 8, 10}


def framed_ciphertext(smb: bool, t: int) -> bool:
    return t == 0xFD if smb else (t >> 3) in OVPN_DATA


def framed_plausible(smb: bool, h: bytes) -> bool:
    if smb:
        return h[0] == 0 and h[4] in SMB_IDS and h[5:8] == b"SMB" and int.from_bytes(h[1:4]) >= 4
    return 1 <= h[2] >> 3 <= 11 and int.from_bytes(h[0:2]) >= 1


def walk_framed(st: Direction, data: bytes, seg_len: int, smb: bool) -> Walk:
    """Follow SMB messages (00, 24-bit length, protocol id) or OpenVPN packets over TCP (16-bit
    length, opcode) over a segment; `handshake` here means some byte is not known ciphertext:
    it belongs to a plain message, or to a header not wholly in this segment."""
    hdr_len, type_at = (8, 4) if smb else (3, 2)
    w = Walk(True)
    i = 0
    while i < seg_len:
        if st.rem > 0:
            take = min(st.rem, seg_len - i)
            w.handshake |= not framed_ciphertext(smb, st.rtype)
            st.rem -= take
            i += take
            continue
        take = min(hdr_len - len(st.hdr), seg_len - i)
        if i + take > len(data):
            EVENTS["framed_header_not_captured"] += 1
            return Walk(False)
        st.hdr += data[i : i + take]
        i += take
        if len(st.hdr) < hdr_len:
            w.handshake = True
            EVENTS["framed_header_split"] += 1
            continue
        if not framed_plausible(smb, st.hdr):
            return Walk(False)
        st.rtype = st.hdr[type_at]
        w.handshake |= not framed_ciphertext(smb, st.rtype)
        # the length counts what follows it: the protocol id or the opcode is already read
        if smb:
            st.rem = int.from_bytes(st.hdr[1:4]) - 4
        else:
            st.rem = int.from_bytes(st.hdr[0:2]) - 1
        st.hdr = b""
    return w


def smb_starts(p: bytes, seg_len: int) -> bool:
    return (
        len(p) >= 8
        and p[0] == 0
        and p[4] in (0xFE, 0xFD)
        and p[5:8] == b"SMB"
        and int.from_bytes(p[1:4]) >= 4
    )


def ovpn_hard_reset(b: int) -> bool:
    return b & 7 == 0 and b >> 3 in OVPN_HARD_RESETS


def ovpn_tcp_packets(p: bytes, seg_len: int) -> list[int] | None:
    """The opcodes of a segment that is exactly whole OpenVPN packets (16-bit length, then
    that many bytes starting with the opcode byte; every opcode 1-11), else None."""
    opcodes = []
    at = 0
    while at < seg_len:
        if at + 3 > len(p):
            return None
        n = int.from_bytes(p[at : at + 2])
        if n < 1 or not 1 <= p[at + 2] >> 3 <= 11:
            return None
        opcodes.append(p[at + 2] >> 3)
        at += 2 + n
    return opcodes if at == seg_len else None


def ovpn_tcp_starts(p: bytes, seg_len: int) -> bool:
    """The first segment of a direction opens an OpenVPN stream: whole packets, the first a hard
    reset (key id 0) of at least 14 bytes."""
    return (
        len(p) >= 3
        and int.from_bytes(p[0:2]) >= 14
        and ovpn_hard_reset(p[2])
        and ovpn_tcp_packets(p, seg_len) is not None
    )


def ovpn_tcp_only_data(p: bytes, seg_len: int) -> bool:
    """The segment is exactly OpenVPN data packets."""
    opcodes = ovpn_tcp_packets(p, seg_len)
    return opcodes is not None and set(opcodes) <= OVPN_DATA


# --- §9.1, §9.3, §9.4, §9.7: UDP --------------------------------------------------------------


def wireguard_type(p: bytes, plen: int) -> int:
    """1-3 a handshake message of its exact length, 4 transport data, 0 neither."""
    if len(p) < 4 or p[1:4] != b"\0\0\0":
        return 0
    if (p[0], plen) in ((1, 148), (2, 92), (3, 64)):
        return p[0]
    if p[0] == 4 and plen >= 32 and (plen - 16) % 16 == 0:
        return 4
    return 0


def dtls_record_types(p: bytes, plen: int) -> list[int] | None:
    """The record types of a datagram made only of DTLS 1.0/1.2 records, else None."""
    types = []
    at = 0
    while at < plen:
        if at + 13 > len(p) or p[at + 1] != 0xFE or p[at + 2] not in (0xFF, 0xFD):
            return None
        types.append(p[at])
        at += 13 + int.from_bytes(p[at + 11 : at + 13])
    return types if types and at == plen else None


def quic_long(p: bytes) -> tuple[int, int] | None:
    """(version, packet type bits) of a long-header packet, or None."""
    if len(p) < 5 or p[0] & 0xC0 != 0xC0:
        return None
    return int.from_bytes(p[1:5]), (p[0] >> 4) & 3


def quic_initial(p: bytes) -> bool:
    return quic_long(p) in ((QUIC_V1, 0), (QUIC_V2, 1))


def quic_protected(p: bytes) -> bool:
    """Short header, or a v1/v2 long-header Handshake or 0-RTT packet."""
    if 0x40 <= p[0] <= 0x7F:
        return True
    return quic_long(p) in ((QUIC_V1, 1), (QUIC_V1, 2), (QUIC_V2, 2), (QUIC_V2, 3))


def udp_flow_rules(st: Direction, p: bytes, plen: int, ports: set[int]) -> str | None:
    """§9 for a UDP datagram whose flow state is st: p the captured payload, plen its length."""
    first = p[0]
    wg = wireguard_type(p, plen)
    opcode = first >> 3
    if st.carries == "wireguard" and wg == 4:
        return "wireguard"
    if st.carries == "openvpn" and opcode in OVPN_DATA:
        return "openvpn"
    if st.carries == "quic" and quic_protected(p):
        return "quic"
    if st.carries == "dtls" and 128 <= first <= 191:
        return "srtp"
    if st.carries == "dtls" and 0x20 <= first <= 0x3F:
        return "dtls"
    if wg in (1, 2, 3):
        st.carries = "wireguard"
        return None
    if quic_initial(p):
        st.carries = "quic"
        return None
    types = dtls_record_types(p, plen)
    if types is not None:
        if 22 in types:
            st.carries = "dtls"
        return "dtls" if set(types) <= {23, 25} else None
    if ovpn_hard_reset(first):
        # a client's hard reset leaves its session id; a server's that acknowledges it (the
        # id among its first 128 bytes, after its own) makes the flow OpenVPN
        if st.carries == "openvpn" or len(p) < 9:
            return None
        if opcode != 8:
            st.carries, st.client_session = "openvpn_client", p[1:9]
        elif st.carries == "openvpn_client" and st.client_session in p[9:128]:
            st.carries = "openvpn"
        return None
    if wg == 4 and 51820 in ports:
        return "wireguard"
    if opcode in OVPN_DATA and 1194 in ports:
        return "openvpn"
    return None


def ssh_kex_packet(p: bytes) -> bool:
    if len(p) < 6:
        return False
    length, pad, msg = int.from_bytes(p[:4], "big"), p[4], p[5]
    return 12 <= length <= MAX_SSH_PACKET and 4 <= pad < length and msg in SSH_KEX_MESSAGES


def fallback_tcp(sport: int, dport: int, p: bytes, seg_len: int) -> str | None:
    """§1 rule 6 with the forensic changes of §8 rules 2 and 3, and OpenVPN data on port 1194
    without state (§9.2)."""
    if len(p) < 4:
        return None  # too short to be cut anyway
    tls_port = bool({sport, dport} & TLS_PORTS)
    if tls_port and p[0] not in HANDSHAKE_CLASS:
        return "tls"
    if not tls_port and p[0] == 0x17 and p[1] == 0x03 and p[2] <= 4:
        return "tls_other_port"
    if 22 in (sport, dport) and p[:4] != b"SSH-" and not ssh_kex_packet(p):
        return "ssh"
    if 1194 in (sport, dport) and ovpn_tcp_only_data(p, seg_len):
        return "openvpn"
    return None


def quic_kept(p: bytes) -> bool:
    if len(p) < 5 or p[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(p[1:5], "big")
    ptype = (p[0] >> 4) & 3
    if version == 0:
        return True
    if version == QUIC_V1:
        return ptype in (0, 3)  # Initial, Retry
    if version == QUIC_V2:
        return ptype in (1, 0)  # Initial, Retry
    return False


def ike_kept(p: bytes, dport: int, sport: int) -> bool:
    if 4500 in (sport, dport) and 500 not in (sport, dport):
        if p[:4] != b"\0\0\0\0":
            return False  # ESP in UDP
        p = p[4:]
    if len(p) < 28:
        return False
    major, exchange, flags = p[17] >> 4, p[18], p[19]
    if major == 2:
        return exchange == 34
    if major == 1:
        return not flags & 0x01
    return False


class Forensic:
    def __init__(self, slots: int = TABLE_SLOTS, probes: int = TABLE_PROBES) -> None:
        self.table = DirectionTable(slots, probes)
        self.clock = 0

    def decide(self, frame: bytes, link: int) -> naive.Verdict:
        keep = naive.Verdict(None, frame)
        if link not in naive.SLICED:
            return keep
        self.clock += 1
        net = naive.network(frame, link)
        if net is not None and net.esp is not None:  # §9.6
            if min(net.dgram_end, len(frame)) - net.esp <= 24:
                return keep
            cut = naive._cut(frame, net.ip, net.version, 50, net.esp, net.esp, net.route_dst,
                             net.enclosing)  # fmt: skip
            return naive.Verdict("ipsec", cut)
        pay = None if net is None else naive.payload_start(frame, net)
        if net is None or net.l4 is None or pay is None:
            return keep
        l4, proto = net.l4, net.proto
        pend = min(net.dgram_end, len(frame))
        data = frame[pay:pend]
        sport, dport = struct.unpack("!HH", frame[l4 : l4 + 4])
        category = None
        if proto == 6:
            seg_len = max(net.dgram_end - pay, 0)
            category = self._tcp(net, frame, l4, sport, dport, data, seg_len)
        elif 443 in (sport, dport):
            if len(data) > 24:
                category = None if quic_kept(data) else "quic"
        elif {500, 4500} & {sport, dport}:
            if len(data) > 24:
                category = None if ike_kept(data, dport, sport) else "ipsec"
        elif data:
            src, dst = self._addresses(net, frame)
            st = self.table.lookup(udp_flow_key(net.version, src, dst, sport, dport), self.clock)
            category = udp_flow_rules(st, data, net.dgram_end - pay, {sport, dport})
        if category is None or len(data) <= 24:
            return keep
        ver = net.version
        return naive.Verdict(
            category, naive._cut(frame, net.ip, ver, proto, l4, pay, net.route_dst, net.enclosing)
        )

    @staticmethod
    def _addresses(net: naive.Network, frame: bytes) -> tuple[bytes, bytes]:
        if net.version == 4:
            return frame[net.ip + 12 : net.ip + 16], frame[net.ip + 16 : net.ip + 20]
        return frame[net.ip + 8 : net.ip + 24], frame[net.ip + 24 : net.ip + 40]

    def _tcp(self, net, frame, l4, sport, dport, data, seg_len):  # type: ignore[no-untyped-def]
        if seg_len == 0 or not data:
            return None
        src, dst = self._addresses(net, frame)
        st = self.table.lookup(direction_key(net.version, src, dst, sport, dport), self.clock)
        seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
        tls_cat = "tls" if {sport, dport} & TLS_PORTS else "tls_other_port"
        delta = (seq - st.next_seq) & 0xFFFFFFFF
        at_next = delta == 0
        behind = delta >= 0x80000000
        ends_by_next = ((st.next_seq - (seq + seg_len)) & 0xFFFFFFFF) < 0x80000000
        old = behind and ends_by_next  # a retransmission of bytes already seen
        if st.mode == "ssh":
            if st.ssh_phase == "done":
                return "ssh"
            if at_next:
                st.next_seq = (seq + seg_len) & 0xFFFFFFFF
                if walk_ssh(st, data, seg_len):
                    return None
                st.mode = "lost"
            elif not old:
                st.mode = "lost"
            return fallback_tcp(sport, dport, data, seg_len)
        if st.mode == "tls":
            if at_next:
                st.next_seq = (seq + seg_len) & 0xFFFFFFFF
                w = walk_tls(st, data, seg_len)
                if w.ok:
                    return None if w.handshake else tls_cat
                st.mode = "lost"
            elif not old:
                st.mode = "lost"
            return fallback_tcp(sport, dport, data, seg_len)
        if st.mode in ("smb", "ovpn"):
            if at_next:
                st.next_seq = (seq + seg_len) & 0xFFFFFFFF
                w = walk_framed(st, data, seg_len, st.mode == "smb")
                if w.ok:
                    if w.handshake:
                        return None
                    return "smb3" if st.mode == "smb" else "openvpn"
                st.mode = "lost_keep"
            elif not old:
                st.mode = "lost_keep"
            return None  # a lost SMB or OpenVPN position falls back to keep
        first = st.mode == "new"
        st.next_seq = (seq + seg_len) & 0xFFFFFFFF
        if first and data[:4] == b"SSH-":
            st.mode, st.ssh_phase, st.rem, st.hdr = "ssh", "banner", 0, b""
            if walk_ssh(st, data, seg_len):
                return None
            st.mode = "lost"
            return fallback_tcp(sport, dport, data, seg_len)
        if plausible_tls(data[:5]):
            st.mode, st.rem, st.hdr = "tls", 0, b""
            w = walk_tls(st, data, seg_len)
            if w.ok:
                return None if w.handshake else tls_cat
            st.mode = "lost"
            return fallback_tcp(sport, dport, data, seg_len)
        # an SMB message header may start following anywhere; an OpenVPN stream only from the
        # direction's first segment (its hard reset opens it: "the stream starts with")
        for mode, starts in (("smb", smb_starts), ("ovpn", ovpn_tcp_starts)):
            if starts(data, seg_len) and (mode == "smb" or first):
                st.mode, st.rem, st.hdr = mode, 0, b""
                w = walk_framed(st, data, seg_len, mode == "smb")
                if not w.ok:
                    st.mode = "lost_keep"
                    return None
                if w.handshake:
                    return None
                return "smb3" if mode == "smb" else "openvpn"
        if st.mode == "new":
            st.mode = "none"
        if st.mode == "lost_keep":
            return None
        return fallback_tcp(sport, dport, data, seg_len)
