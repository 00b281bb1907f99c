"""SPEC §9 case by case, on hand-built packets whose expected decisions and sizes are worked
out here from the spec text (not from the kernels or the twin), on both kernel sets."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from capfile import read_records

from pcapslim import slim_file, synth

pytestmark = pytest.mark.usefixtures("kernels")

C, S = "10.0.0.1", "10.0.0.2"


def udp(sport: int, dport: int, payload: bytes, src: str = C, dst: str = S) -> bytes:
    return synth.eth_ip(synth.ipv4(synth.udp(sport, dport, payload), 17, src, dst))


def tcp(sport: int, dport: int, seq: int, payload: bytes, src: str = C, dst: str = S) -> bytes:
    return synth.eth_ip(synth.ipv4(synth.tcp(sport, dport, payload, seq=seq), 6, src, dst))


def slim(tmp_path: Path, frames: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    stats = slim_file(src, dst, rules="forensic")
    out = [r.frame for r in read_records(dst.read_bytes())]
    return out, {k: v for k, v in stats.truncated_by.items() if v}


def cut(frames: list[bytes], out: list[bytes]) -> list[bool]:
    """Which frames came out shorter; a cut UDP/TCP frame keeps 14 + 20 + header + 24 bytes."""
    return [len(o) < len(f) for f, o in zip(frames, out)]


def wg(t: int, n: int) -> bytes:
    return bytes([t, 0, 0, 0]) + (bytes(range(256)) * 4)[: n - 4]


def test_wireguard(tmp_path):  # type: ignore[no-untyped-def]
    frames = [
        udp(41000, 9, wg(4, 64)),  # data before any handshake, off port 51820: kept
        udp(41000, 9, wg(1, 148)),  # initiation: kept, marks the flow
        udp(9, 41000, wg(2, 92), S, C),  # response, the other direction: kept
        udp(9, 41000, wg(4, 32), S, C),  # a keepalive (16 + 16): cut
        udp(41000, 9, wg(4, 16 + 16 * 40)),  # data: cut
        udp(41000, 9, wg(4, 50)),  # 50 - 16 is no multiple of 16: kept
        udp(41000, 9, wg(1, 149)),  # not an initiation (149 bytes): kept
        udp(33000, 51820, wg(4, 48)),  # port 51820, no handshake seen: cut
        udp(33000, 51821, wg(4, 48)),  # another port, no handshake seen: kept
    ]
    out, cats = slim(tmp_path, frames)
    assert cut(frames, out) == [False, False, False, True, True, False, False, True, False]
    assert cats == {"wireguard": 3}
    assert len(out[3]) == 14 + 20 + 8 + 24  # 32 payload bytes lose 8


def ovpn(opcode: int, key: int, n: int) -> bytes:
    return bytes([(opcode << 3) | key]) + b"\x5a" * (n - 1)


def test_openvpn_udp(tmp_path):  # type: ignore[no-untyped-def]
    client_sid, server_sid = bytes.fromhex("04e54aa55291b364"), bytes.fromhex("ea2e57256a365593")
    client_reset = bytes([7 << 3]) + client_sid + b"\x00" + bytes(4)  # as OpenVPN 2.6 sends it
    # the server's: its session id, one ACK (packet id 0) of the client's session, a packet id
    server_reset = bytes([8 << 3]) + server_sid + b"\x01" + bytes(4) + client_sid + bytes(4)
    frames = [
        udp(5000, 6000, ovpn(9, 0, 100)),  # data with no hard reset seen, off 1194: kept
        udp(5000, 6000, ovpn(7, 1, 60)),  # a hard reset with key id 1 is none: kept
        udp(6000, 5000, ovpn(8, 0, 60), S, C),  # a server's that acknowledges nothing: kept
        udp(5000, 6000, ovpn(9, 0, 100)),  # so data is still kept
        udp(5000, 6000, client_reset),  # hard reset client v2: kept
        udp(5000, 6000, ovpn(9, 0, 100)),  # not yet answered: kept
        udp(6000, 5000, server_reset, S, C),  # hard reset server v2, acknowledging: kept, marks
        udp(6000, 5000, ovpn(4, 0, 300), S, C),  # control: kept
        udp(5000, 6000, ovpn(5, 0, 40)),  # ack: kept
        udp(5000, 6000, ovpn(9, 2, 100)),  # P_DATA_V2: cut
        udp(6000, 5000, ovpn(6, 1, 100), S, C),  # P_DATA_V1: cut
        udp(7000, 1194, ovpn(9, 0, 100)),  # on 1194 without state: cut
    ]
    out, cats = slim(tmp_path, frames)
    assert cut(frames, out) == [False] * 9 + [True] * 3
    assert cats == {"openvpn": 3}


def test_dns_whose_ids_look_like_openvpn_is_never_cut(tmp_path):  # type: ignore[no-untyped-def]
    """One resolver port asking one server: transaction ids 0x38.. (a client hard reset's first
    byte), 0x40.. (a server's) and 0x48.. (P_DATA_V2). Without the client's session id
    acknowledged, the flow is never OpenVPN and nothing is cut."""

    def dns(txid: int, response: bool) -> bytes:
        flags = b"\x81\x80" if response else b"\x01\x00"
        counts = struct.pack("!HHHH", 1, int(response), 0, 0)
        return struct.pack("!H", txid) + flags + counts + b"\x07example\x03com\x00\x00\x01\x00\x01"

    frames = []
    for txid in (0x3801, 0x4002, 0x4803, 0x5004, 0x4C05, 0x3006):
        frames += [udp(40053, 53, dns(txid, False)), udp(53, 40053, dns(txid, True), S, C)]
    out, cats = slim(tmp_path, frames)
    assert out == frames and cats == {}


def framed_ovpn(opcode: int, n: int) -> bytes:
    body = ovpn(opcode, 0, n)
    return struct.pack("!H", len(body)) + body


def test_openvpn_tcp(tmp_path):  # type: ignore[no-untyped-def]
    up = framed_ovpn(7, 40)  # hard reset: the direction is followed from here
    data = framed_ovpn(9, 200) + framed_ovpn(9, 60)
    mixed = framed_ovpn(9, 100) + framed_ovpn(5, 30)
    seq = 1000
    frames = [tcp(40000, 7777, seq, up)]
    seq += len(up)
    frames.append(tcp(40000, 7777, seq, data))  # two data packets: cut
    seq += len(data)
    frames.append(tcp(40000, 7777, seq, mixed))  # data and an ack: kept
    seq += len(mixed)
    big = framed_ovpn(9, 400)
    frames.append(tcp(40000, 7777, seq, big[:150]))  # the start of a data packet: cut
    frames.append(tcp(40000, 7777, seq + 150, big[150:]))  # its rest: cut
    seq += len(big)
    frames.append(tcp(40000, 7777, seq + 5000, data))  # a gap: the position is lost, kept
    frames.append(tcp(40000, 7777, seq + 5000 + len(data), data))  # still lost: kept
    frames.append(tcp(41000, 1194, 1, data))  # port 1194, no state, exactly data: cut
    frames.append(tcp(41000, 1194, 1 + len(data), data + b"\x00"))  # not exactly: kept
    # a hard reset opens a direction: one that began otherwise is not followed from one later
    hello = b"HELLO, this direction started in cleartext\r\n"
    frames.append(tcp(42000, 7777, 1, hello))  # kept
    frames.append(tcp(42000, 7777, 1 + len(hello), up))  # looks like a hard reset: kept
    frames.append(tcp(42000, 7777, 1 + len(hello) + len(up), data))  # not followed: kept
    out, cats = slim(tmp_path, frames)
    assert cut(frames, out) == [False, True, False, True, True, False, False, True, False,
                                False, False, False]  # fmt: skip
    assert cats == {"openvpn": 4}


def smb(kind: int, n: int) -> bytes:
    body = bytes([kind]) + b"SMB" + b"\x17" * n
    return b"\x00" + len(body).to_bytes(3, "big") + body


def test_smb3(tmp_path):  # type: ignore[no-untyped-def]
    negotiate = smb(0xFE, 100)
    seq = 7
    frames = [tcp(50000, 445, seq, negotiate)]  # plain: kept
    seq += len(negotiate)
    enc = smb(0xFD, 300) + smb(0xFD, 52)
    frames.append(tcp(50000, 445, seq, enc))  # two transform messages: cut
    seq += len(enc)
    enc2 = smb(0xFD, 200)
    nxt = smb(0xFD, 100)
    # the segment ends 6 bytes into the next transform header: its type byte is there, the
    # header is not whole; kept (not known to be ciphertext yet)
    frames.append(tcp(50000, 445, seq, enc2 + nxt[:6]))
    seq += len(enc2) + 6
    frames.append(tcp(50000, 445, seq, nxt[6:]))  # the rest of it: cut
    seq += len(nxt) - 6
    plain = smb(0xFE, 1000)  # cleartext whose body is 17 17 17...
    frames.append(tcp(50000, 445, seq, plain[:40]))  # kept
    frames.append(tcp(50000, 445, seq + 40, plain[40:]))  # starts with 17: kept
    seq += len(plain)
    frames.append(tcp(50000, 445, seq, smb(0xFC, 40)))  # compressed: kept
    out, cats = slim(tmp_path, frames)
    assert cut(frames, out) == [False, True, False, True, False, False, False]
    assert cats == {"smb3": 2}


def dtls(t: int, n: int, version: bytes = b"\xfe\xfd") -> bytes:
    return bytes([t]) + version + bytes(8) + struct.pack("!H", n) + b"\x33" * n


def test_dtls_and_srtp(tmp_path):  # type: ignore[no-untyped-def]
    rtp = bytes([0x80, 111]) + b"\x44" * 160
    stun = bytes([0, 1, 0, 8]) + b"\x21\x12\xa4\x42" + bytes(12) + bytes(8)
    frames = [
        udp(3000, 4000, rtp),  # RTP with no DTLS handshake in the flow: kept
        udp(3000, 4000, stun),  # STUN: kept
        udp(3000, 4000, dtls(23, 100)),  # application data, even without state: cut
        udp(3000, 4000, dtls(22, 100)),  # a handshake: kept, marks the flow
        udp(4000, 3000, dtls(20, 1) + dtls(22, 40), S, C),  # CCS + Finished: kept
        udp(3000, 4000, rtp),  # SRTP now: cut (srtp)
        udp(4000, 3000, stun, S, C),  # STUN: kept
        udp(3000, 4000, dtls(23, 30) + dtls(23, 40)),  # two application data records: cut
        udp(3000, 4000, dtls(23, 30) + dtls(21, 2)),  # data and an alert: kept
        udp(3000, 4000, dtls(23, 30) + b"x"),  # the lengths do not fill the datagram: kept
        udp(3000, 4000, dtls(25, 60, b"\xfe\xff")),  # a connection-id record, DTLS 1.0: cut
        udp(3000, 4000, bytes([0x2F]) + b"\x10" * 60),  # a DTLS 1.3 unified header: cut
        udp(3000, 4000, dtls(23, 100, b"\x03\x03")),  # TLS version bytes: no DTLS, kept
        udp(5000, 6000, bytes([0x2F]) + b"\x10" * 60),  # unified header elsewhere: kept
    ]
    out, cats = slim(tmp_path, frames)
    expected = [False, False, True, False, False, True, False, True, False, False, True, True,
                False, False]  # fmt: skip
    assert cut(frames, out) == expected
    assert cats == {"dtls": 4, "srtp": 1}
    assert out[5][14 + 20 + 8 : 14 + 20 + 8 + 2] == bytes([0x80, 111])  # the RTP header stays


def quic(first: int, version: int, n: int = 1200) -> bytes:
    return bytes([first]) + struct.pack("!I", version) + b"\x01" * (n - 5)


def test_quic_on_any_port(tmp_path):  # type: ignore[no-untyped-def]
    frames = [
        udp(30000, 4433, bytes([0x45]) + b"\x02" * 300),  # short header, no Initial seen: kept
        udp(30000, 4433, quic(0xC3, 1)),  # v1 Initial: kept, marks the flow
        udp(4433, 30000, quic(0xE1, 1, 400), S, C),  # v1 Handshake: cut
        udp(30000, 4433, quic(0xD1, 1, 400)),  # v1 0-RTT: cut
        udp(4433, 30000, bytes([0x45]) + b"\x02" * 300, S, C),  # short header: cut
        udp(30000, 4433, quic(0xF0, 1, 400)),  # v1 Retry: kept
        udp(30000, 4433, quic(0xE0, 0xFF00001D, 400)),  # an unknown version: kept
        udp(31000, 8853, quic(0xD0, 0x6B3343CF)),  # v2 Initial (type 1): kept, marks
        udp(31000, 8853, quic(0xF0, 0x6B3343CF, 300)),  # v2 Handshake (type 3): cut
        udp(31000, 8853, quic(0xE0, 0x6B3343CF, 300)),  # v2 0-RTT (type 2): cut
    ]
    out, cats = slim(tmp_path, frames)
    expected = [False, False, True, True, True, False, False, False, True, True]
    assert cut(frames, out) == expected
    assert cats == {"quic": 5}


@pytest.mark.parametrize("v6", [False, True])
def test_esp_is_cut_after_24_bytes_with_ip_lengths_fixed(tmp_path, v6):  # type: ignore[no-untyped-def]
    esp = struct.pack("!II", 0x51005100, 7) + bytes(range(200))  # SPI, sequence, the rest
    if v6:
        packets = [synth.ipv6(esp, 50, "2001:db8::1", "2001:db8::2"),
                   synth.ipv6(esp, 50, "2001:db8::1", "2001:db8::2", ext=[synth.dest_opts(8)]),
                   synth.ipv6(esp, 50, "2001:db8::1", "2001:db8::2",
                              ext=[synth.fragment(0, more=True)]),
                   synth.ipv6(esp[:24], 50, "2001:db8::1", "2001:db8::2")]  # fmt: skip
    else:
        packets = [synth.ipv4(esp, 50, C, S), synth.ipv4(esp, 50, C, S, options=b"\x01" * 4),
                   synth.ipv4(esp, 50, C, S, flags_frag=0x2000),
                   synth.ipv4(esp[:24], 50, C, S)]  # fmt: skip
    frames = [synth.eth_ip(p) for p in packets]
    out, cats = slim(tmp_path, frames)
    assert cut(frames, out) == [True, True, False, False]  # a fragment, 24 bytes: kept
    assert cats == {"ipsec": 2}
    for f, o, ext in zip(frames[:2], out[:2], (0, 8 if v6 else 4)):
        ip = 14
        hdr = (40 if v6 else 20) + ext
        assert len(o) == ip + hdr + 24
        assert o[ip + hdr : ip + hdr + 24] == esp[:24]  # SPI, sequence and 16 bytes
        if v6:
            assert struct.unpack("!H", o[ip + 4 : ip + 6])[0] == ext + 24
            assert o[: ip + 4] == f[: ip + 4] and o[ip + 6 : ip + hdr] == f[ip + 6 : ip + hdr]
        else:
            assert struct.unpack("!H", o[ip + 2 : ip + 4])[0] == hdr + 24
            assert synth.checksum(o[ip : ip + hdr]) == 0  # the header checksum is right
            assert o[ip + 12 : ip + hdr] == f[ip + 12 : ip + hdr]


def test_compatible_rules_cut_none_of_it(tmp_path):  # type: ignore[no-untyped-def]
    """§9 belongs to the forensic rules: the default rules keep ESP and the new protocols on
    ports §1 does not list."""
    frames = [udp(41000, 9, wg(1, 148)), udp(41000, 9, wg(4, 64)),
              synth.eth_ip(synth.ipv4(b"\x00" * 100, 50, C, S)), udp(3000, 4000, dtls(22, 100)),
              udp(3000, 4000, bytes([0x80]) + b"\x44" * 100)]  # fmt: skip
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    stats = slim_file(src, dst)
    assert stats.truncated == 0 and dst.read_bytes() == src.read_bytes()
