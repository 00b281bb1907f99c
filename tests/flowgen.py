"""Seeded random TCP conversations and UDP datagrams for the forensic rules: TLS record
streams, SSH key exchanges, cleartext, QUIC and IKE, with retransmissions, reordering, gaps and
captures that start mid-connection."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import randframes

from pcapslim import synth


def tls_stream(r: random.Random, bad: bool = False) -> bytes:
    out = b""
    types = (
        [0x16, 0x16]
        + [0x14]
        + [0x16]
        + [r.choice((0x17, 0x17, 0x17, 0x15, 0x18, 0x16)) for _ in range(r.randrange(3, 14))]
    )
    for t in types:
        n = r.choice((0, 5, 40, 300, 1400, 1448, 4000, r.randrange(0, 18433)))
        ver = b"\x03\x03"
        if bad and r.random() < 0.1:
            ver, n = b"\x03\x09", min(n, 100)  # an implausible header
        out += bytes([t]) + ver + struct.pack("!H", n) + r.randbytes(n)
    return out


def ssh_stream(r: random.Random) -> bytes:
    def packet(msg: int, n: int) -> bytes:
        pad = 4 + r.randrange(0, 8)
        body = bytes([msg]) + r.randbytes(n)
        return struct.pack("!IB", len(body) + pad + 1, pad) + body + bytes(pad)

    out = b"SSH-2.0-OpenSSH_9.6p1\r\n"
    out += packet(20, r.randrange(300, 1500)) + packet(r.choice((30, 31)), r.randrange(40, 600))
    out += packet(21, 0) + r.randbytes(r.randrange(100, 5000))  # NEWKEYS, then encrypted
    return out


def cleartext_stream(r: random.Random) -> bytes:
    parts = [b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"]
    for _ in range(r.randrange(1, 6)):
        chunk = bytearray(r.randbytes(r.randrange(30, 2000)))
        if r.random() < 0.5:
            chunk[0:3] = b"\x17\x03" + bytes([r.choice((1, 3, 4, 9))])
        parts.append(bytes(chunk))
    return b"".join(parts)


def segments(r: random.Random, stream: bytes, isn: int) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(stream):
        n = r.choice((1, 3, 60, 536, 1448, 1448, r.randrange(1, 1449)))
        out.append(((isn + at) & 0xFFFFFFFF, stream[at : at + n]))
        at += n
    return out


def perturb(r: random.Random, segs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    segs = list(segs)
    pick = r.random()
    if pick < 0.15 and len(segs) > 2:
        i = r.randrange(len(segs) - 1)
        segs.insert(r.randrange(i + 1, len(segs) + 1), segs[i])  # retransmission
    elif pick < 0.3 and len(segs) > 2:
        i = r.randrange(len(segs) - 1)
        segs[i], segs[i + 1] = segs[i + 1], segs[i]  # reordering
    elif pick < 0.4 and len(segs) > 2:
        del segs[r.randrange(len(segs))]  # a gap
    elif pick < 0.5 and len(segs) > 3:
        segs = segs[r.randrange(1, len(segs) - 1) :]  # capture starts mid-connection
    return segs


@dataclass
class IpShape:
    """The IP header a conversation's packets carry besides the addresses: IPv4 options, or an
    IPv6 extension chain (both may change the pseudo-header of a cut packet)."""

    v4_options: bytes = b""
    v6_chain: tuple[synth.Ext, ...] = ()


def ip_shape(r: random.Random, v6: bool) -> IpShape:
    if v6:
        chain = randframes.ip6_chain(r, walkable=True)
        return IpShape(v6_chain=tuple(chain))
    opts = b""
    if r.random() < 0.3:
        opts = r.choice(
            (
                b"\x01\x01\x01\x00",  # NOPs, end of list
                bytes([0x83, 7, 4]) + bytes([198, 51, 100, 9]) + b"\x00",  # loose source route
                bytes([0x89, 11, 4]) + bytes(8) + b"\x01",  # strict source route, two hops
                bytes([0x44, 8, 5, 0]) + bytes(4),  # timestamp
            )
        )
    return IpShape(v4_options=opts)


def _ip(v6: bool, shape: IpShape, src: str, dst: str, seg: bytes, proto: int) -> bytes:
    if v6:
        return synth.ipv6(seg, proto, src, dst, ext=list(shape.v6_chain))
    return synth.ipv4(seg, proto, src, dst, options=shape.v4_options)


def conversation(r: random.Random, n: int, shaped: bool = False) -> list[bytes]:
    """The IP packets of one TCP conversation, in the order the capture sees them; with
    `shaped`, IPv4 options and IPv6 extension headers on its packets."""
    kind = r.choice(("tls", "tls", "tls_bad", "ssh", "ssh", "clear", "random"))
    v6 = r.random() < 0.3
    c = f"2001:db8::{n + 1:x}" if v6 else f"10.1.{n // 250}.{n % 250 + 1}"
    s = "2001:db8:ff::1" if v6 else "192.0.2.1"
    port = {"tls": r.choice((443, 8443, 9443, 4433)), "tls_bad": r.choice((443, 9443)),
            "ssh": r.choice((22, 2222)), "clear": r.choice((80, 8080, 443, 22)),
            "random": r.choice((22, 443, 5000))}[kind]  # fmt: skip
    cport = 30000 + n
    if kind.startswith("tls"):
        up, down = tls_stream(r, kind == "tls_bad"), tls_stream(r, kind == "tls_bad")
    elif kind == "ssh":
        up, down = ssh_stream(r), ssh_stream(r)
    elif kind == "clear":
        up, down = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", cleartext_stream(r)
    else:
        up, down = r.randbytes(r.randrange(0, 3000)), r.randbytes(r.randrange(0, 6000))
    ups = perturb(r, segments(r, up, r.randrange(1 << 32)))
    downs = perturb(r, segments(r, down, r.randrange(1 << 32)))
    shape = ip_shape(r, v6) if shaped else IpShape()
    packets = []
    while ups or downs:
        side = ups if (ups and (not downs or r.random() < 0.5)) else downs
        seq, data = side.pop(0)
        if side is ups:
            seg = synth.tcp(cport, port, data, seq=seq)
            packets.append(_ip(v6, shape, c, s, seg, 6))
        else:
            seg = synth.tcp(port, cport, data, seq=seq)
            packets.append(_ip(v6, shape, s, c, seg, 6))
    return packets


def udp_datagram(r: random.Random, n: int) -> bytes:
    """One QUIC or IKE datagram as an IP packet."""
    if r.random() < 0.5:
        ptype = r.randrange(4)
        first = r.choice((0xC0 | (ptype << 4), 0x40, 0x80 | (ptype << 4)))
        version = r.choice((1, 1, 0x6B3343CF, 0, 0xFF00001D))
        payload = bytes([first]) + struct.pack("!I", version) + r.randbytes(r.randrange(20, 1250))
        ports = (40000 + n, 443)
    else:
        major = r.choice((1, 2, 3))
        hdr = (
            r.randbytes(16)
            + bytes([33, major << 4, r.choice((34, 35, 37, 2, 5)), r.choice((0, 1, 8, 9))])
            + r.randbytes(8)
        )
        payload = hdr + r.randbytes(r.randrange(0, 400))
        ports = (500, 500)
        if r.random() < 0.5:
            ports = (4500, 4500)
            payload = (b"\0\0\0\0" if r.random() < 0.6 else r.randbytes(4)) + payload
    if r.random() < 0.5:
        ports = ports[::-1]
    return synth.ipv4(synth.udp(ports[0], ports[1], payload), 17, "10.9.0.1", "10.9.0.2")


def capture_packets(
    seed: int, conversations: int, datagrams: int, shaped: bool = False, more_flows: int = 0
) -> list[bytes]:
    """IP packets of conversations interleaved (each keeps its own order) and UDP datagrams
    among them; with `more_flows`, that many flows of the protocols of SPEC §9 too (drawn
    from their own generator, so the earlier ones stay the same for a seed)."""
    r = random.Random(seed)
    queues = [conversation(r, i, shaped) for i in range(conversations)]
    queues += [[udp_datagram(r, i)] for i in range(datagrams)]
    r9 = random.Random(seed + 0x9999)
    queues += [more_encrypted_flow(r9, i, shaped) for i in range(more_flows)]
    packets = []
    while queues:
        q = r.choice(queues)
        packets.append(q.pop(0))
        if not q:
            queues.remove(q)
    return packets


def capture_frames(seed: int, conversations: int, datagrams: int) -> list[bytes]:
    """The same as Ethernet frames."""
    return [synth.eth_ip(p) for p in capture_packets(seed, conversations, datagrams)]


# --- SPEC §9: more encrypted protocols ------------------------------------------------------


def _udp_flow(r: random.Random, n: int, v6: bool, shape: IpShape, port: int,
              datagrams: list[tuple[bool, bytes]]) -> list[bytes]:  # fmt: skip
    """(from the client?, payload) datagrams as IP packets of one UDP flow."""
    c = f"2001:db8:9::{n + 1:x}" if v6 else f"10.9.{n // 250}.{n % 250 + 1}"
    s = "2001:db8:9:ff::1" if v6 else "198.51.100.9"
    cport = r.choice((port, 20000 + n, 51820, 1194))
    out = []
    for up, payload in datagrams:
        if up:
            out.append(_ip(v6, shape, c, s, synth.udp(cport, port, payload), 17))
        else:
            out.append(_ip(v6, shape, s, c, synth.udp(port, cport, payload), 17))
    return out


def _mid_session(r: random.Random, items: list) -> list:  # type: ignore[type-arg]
    """Now and then the capture starts after the handshake, or a datagram is lost."""
    if len(items) > 3 and r.random() < 0.25:
        items = items[r.randrange(1, len(items) - 1) :]
    if len(items) > 3 and r.random() < 0.2:
        del items[r.randrange(len(items))]
    return items


def wireguard_datagrams(r: random.Random) -> list[tuple[bool, bytes]]:
    def msg(t: int, n: int) -> bytes:
        return bytes([t, 0, 0, 0]) + r.randbytes(n - 4)

    out = [(True, msg(1, 148)), (False, msg(2, 92))]
    if r.random() < 0.2:
        out.insert(1, (False, msg(3, 64)))
    for _ in range(r.randrange(2, 12)):
        n = r.choice((32, 48, 16 + 16 * r.randrange(1, 90), 33, 40, 20))  # some not data-shaped
        out.append((r.random() < 0.5, msg(4, n)))
    if r.random() < 0.2:
        out.append((True, msg(1, 149)))  # the wrong length: not a handshake
    if r.random() < 0.2:
        out.append((False, r.randbytes(r.randrange(1, 300))))  # something else in the flow
    return _mid_session(r, out)


def openvpn_packet(r: random.Random, opcode: int, n: int | None = None) -> bytes:
    key = 0 if opcode in (7, 8, 10) else r.choice((0, 0, 1, 2))
    if r.random() < 0.05:
        key = 1  # a hard reset with a key id: not one
    size = n if n is not None else r.randrange(13, 400)
    return bytes([(opcode << 3) | key]) + r.randbytes(size)


def openvpn_datagrams(r: random.Random) -> list[tuple[bool, bytes]]:
    """A client hard reset; the server's, acknowledging the client's session id (mostly:
    without it, no flow is OpenVPN), at offsets as without and with tls-auth; then traffic."""
    client = openvpn_packet(r, r.choice((7, 10)))
    server = bytearray(openvpn_packet(r, 8, r.randrange(40, 120)))
    if r.random() < 0.8:
        at = r.choice((14, 42, 54, 100, 120))
        server[at : at + 8] = client[1:9]
    out = [(True, client), (False, bytes(server))]
    for _ in range(r.randrange(2, 14)):
        out.append((r.random() < 0.5, openvpn_packet(r, r.choice((4, 5, 6, 9, 9, 9, 3, 11)))))
    return _mid_session(r, out)


def openvpn_tcp_stream(r: random.Random, client: bool) -> bytes:
    first = r.choice((7, 10)) if client else 8
    packets = [openvpn_packet(r, first, r.randrange(13, 80))]
    if r.random() < 0.1:
        packets[0] = openvpn_packet(r, first, r.randrange(0, 12))  # too short to start
    for _ in range(r.randrange(2, 12)):
        packets.append(openvpn_packet(r, r.choice((4, 5, 6, 9, 9, 9)), r.randrange(0, 1600)))
    if r.random() < 0.1:
        packets.append(bytes([0xF8]) + r.randbytes(20))  # opcode 31: the position is lost
    return b"".join(struct.pack("!H", len(p)) + p for p in packets)


def smb_stream(r: random.Random) -> bytes:
    def message(kind: int, n: int) -> bytes:
        body = bytes([kind]) + b"SMB" + r.randbytes(n)
        if r.random() < 0.3:
            body = body[:4] + b"\x17\x03\x03" + body[7:]  # cleartext that looks like TLS
        return b"\x00" + len(body).to_bytes(3, "big") + body

    msgs = [message(0xFE, r.randrange(60, 200)), message(0xFE, r.randrange(60, 400))]
    encrypted = r.random() < 0.6
    for _ in range(r.randrange(2, 10)):
        kind = 0xFD if encrypted and r.random() < 0.85 else r.choice((0xFE, 0xFC))
        msgs.append(message(kind, r.choice((48, 100, 1400, r.randrange(0, 9000)))))
    if r.random() < 0.1:
        msgs.append(b"\x85\x00\x00\x00")  # a NetBIOS keepalive: no SMB message
    return b"".join(msgs)


def dtls_record(r: random.Random, rtype: int, n: int, version: bytes = b"\xfe\xfd") -> bytes:
    return bytes([rtype]) + version + r.randbytes(8) + struct.pack("!H", n) + r.randbytes(n)


def dtls_datagrams(r: random.Random, media: bool) -> list[tuple[bool, bytes]]:
    """A DTLS session (1.0 or 1.2), with STUN and SRTP on the same flow when `media`."""
    ver = r.choice((b"\xfe\xfd", b"\xfe\xff"))

    def dgram(*types: int) -> bytes:
        return b"".join(dtls_record(r, t, r.randrange(0, 300), ver) for t in types)

    def stun() -> bytes:
        return bytes([0, 1]) + struct.pack("!H", 40) + b"\x21\x12\xa4\x42" + r.randbytes(52)

    out: list[tuple[bool, bytes]] = []
    if media:
        out += [(True, stun()), (False, stun())]
    out += [(True, dgram(22)), (False, dgram(22, 22)), (True, dgram(22, 20, 22)),
            (False, dgram(20, 22))]  # fmt: skip
    for _ in range(r.randrange(2, 12)):
        pick = r.random()
        if pick < 0.3:
            payload = dgram(*[r.choice((23, 23, 25)) for _ in range(r.randrange(1, 3))])
        elif pick < 0.4:
            payload = dgram(23, r.choice((21, 26, 24)))
        elif pick < 0.5:
            bad = bytearray(dgram(23))
            bad[-1 if len(bad) > 13 else 0] ^= 0xFF
            payload = bytes(bad) + b"x"  # the lengths do not fill the datagram
        elif pick < 0.6:
            payload = bytes([r.randrange(0x20, 0x40)]) + r.randbytes(r.randrange(10, 200))
        elif pick < 0.85 and media:
            payload = bytes([r.randrange(128, 192)]) + r.randbytes(r.randrange(11, 300))
        else:
            payload = stun() if media else dgram(23)
        out.append((r.random() < 0.5, payload))
    return _mid_session(r, out)


def rtp_datagrams(r: random.Random) -> list[tuple[bool, bytes]]:
    """Plain RTP with no DTLS handshake: never cut."""
    return [(True, bytes([0x80, 0]) + r.randbytes(r.randrange(12, 300)))
            for _ in range(r.randrange(2, 10))]  # fmt: skip


def quic_datagrams(r: random.Random) -> list[tuple[bool, bytes]]:
    def long(ptype: int, version: int) -> bytes:
        return (
            bytes([0xC0 | (ptype << 4)])
            + struct.pack("!I", version)
            + r.randbytes(r.randrange(20, 1200))
        )

    v = r.choice((1, 0x6B3343CF))
    initial = 0 if v == 1 else 1
    out = [(True, long(initial, v)), (False, long(initial, v))]
    for _ in range(r.randrange(2, 12)):
        pick = r.random()
        if pick < 0.5:
            payload = bytes([r.randrange(0x40, 0x80)]) + r.randbytes(r.randrange(20, 1200))
        elif pick < 0.9:
            payload = long(r.randrange(4), r.choice((v, v, 0xFF00001D)))
        else:
            payload = bytes([r.randrange(0x80, 0xC0)]) + r.randbytes(r.randrange(20, 300))
        out.append((r.random() < 0.5, payload))
    return _mid_session(r, out)


def esp_packet(r: random.Random, n: int, shape: IpShape) -> bytes:
    v6 = r.random() < 0.3
    esp = r.randbytes(r.choice((8, 24, 25, 40, r.randrange(0, 1400))))
    c = f"2001:db8:50::{n + 1:x}" if v6 else f"10.50.{n // 250}.{n % 250 + 1}"
    s = "2001:db8:50:ff::1" if v6 else "203.0.113.50"
    if v6:
        ext = list(shape.v6_chain) if shape.v6_chain else []
        if r.random() < 0.1:
            ext.append(synth.fragment(offset=r.choice((0, 8)), more=True))
        return synth.ipv6(esp, 50, c, s, ext=ext)
    frag = 0x4000 if r.random() < 0.9 else r.choice((0x2000, 0x0010))
    return synth.ipv4(esp, 50, c, s, options=shape.v4_options, flags_frag=frag)


def _framed_segments(r: random.Random, stream: bytes, ovpn: bool) -> list[tuple[int, bytes]]:
    """Segments of a stream; an OpenVPN stream's hard reset mostly alone in the first one, as
    OpenVPN sends it (then waits for the answer)."""
    isn = r.randrange(1 << 32)
    if not ovpn or r.random() < 0.2:
        return segments(r, stream, isn)
    first = 2 + struct.unpack("!H", stream[:2])[0]
    rest = segments(r, stream[first:], (isn + first) & 0xFFFFFFFF)
    return [(isn, stream[:first]), *rest]


def more_encrypted_flow(r: random.Random, n: int, shaped: bool = False) -> list[bytes]:
    """The IP packets of one flow of a SPEC §9 protocol, in capture order."""
    kind = r.choice(("wireguard", "openvpn", "openvpn_tcp", "smb", "dtls", "webrtc", "rtp",
                     "quic", "esp"))  # fmt: skip
    v6 = r.random() < 0.3
    shape = ip_shape(r, v6) if shaped else IpShape()
    if kind == "esp":
        return [esp_packet(r, n, shape) for _ in range(r.randrange(1, 6))]
    if kind in ("openvpn_tcp", "smb"):
        port = 445 if kind == "smb" else r.choice((1194, 1194, 443, 8000))
        if kind == "smb":
            up, down = smb_stream(r), smb_stream(r)
        else:
            up, down = openvpn_tcp_stream(r, True), openvpn_tcp_stream(r, False)
        c = f"2001:db8:44::{n + 1:x}" if v6 else f"10.44.{n // 250}.{n % 250 + 1}"
        s = "2001:db8:44:ff::1" if v6 else "192.0.2.44"
        ups = perturb(r, _framed_segments(r, up, kind == "openvpn_tcp"))
        downs = perturb(r, _framed_segments(r, down, kind == "openvpn_tcp"))
        cport = 30000 + n
        packets = []
        while ups or downs:
            side = ups if (ups and (not downs or r.random() < 0.5)) else downs
            seq, data = side.pop(0)
            if side is ups:
                packets.append(_ip(v6, shape, c, s, synth.tcp(cport, port, data, seq=seq), 6))
            else:
                packets.append(_ip(v6, shape, s, c, synth.tcp(port, cport, data, seq=seq), 6))
        return packets
    port, datagrams = {
        "wireguard": lambda: (r.choice((51820, 41000)), wireguard_datagrams(r)),
        "openvpn": lambda: (r.choice((1194, 1194, 5000)), openvpn_datagrams(r)),
        "dtls": lambda: (r.choice((4433, 5684)), dtls_datagrams(r, media=False)),
        "webrtc": lambda: (r.randrange(49152, 65536), dtls_datagrams(r, media=True)),
        "rtp": lambda: (r.choice((5004, 16384)), rtp_datagrams(r)),
        "quic": lambda: (r.choice((4433, 8853, 784)), quic_datagrams(r)),
    }[kind]()
    return _udp_flow(r, n, v6, shape, port, datagrams)
