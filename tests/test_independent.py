"""Cut packets checked by a second implementation (scapy): they parse, their lengths agree and
their IPv4, TCP and UDP checksums verify. Everything that is not cut is byte identical."""

from __future__ import annotations

import random
import shutil

import pytest
from capfile import read_records
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum
from support import SAMPLE

from pcapslim import slim_file, synth

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike

CUT_PORTS_TCP = (443, 8443, 22, 9000, 993)
CUT_PORTS_UDP = (443, 500, 4500)


def _wellformed(r: random.Random) -> tuple[bytes, int]:
    """(Ethernet frame, IP offset): one kind of packet scapy parses without ambiguity (at most
    one source route, at most one routing header)."""
    n = r.choice((25, 26, 60, 300, 1400))
    payload = bytes([r.choice((0x17, 0x17, 0x16, 0x00, 0x41))]) + r.randbytes(n - 1)
    if r.random() < 0.6:
        seg = synth.tcp(
            r.choice(CUT_PORTS_TCP),
            r.randrange(1024, 65535),
            payload,
            options=r.randbytes(r.choice((0, 12))),
            seq=r.randrange(1 << 32),
        )
        proto = 6
    else:
        seg = synth.udp(r.randrange(1024, 65535), r.choice(CUT_PORTS_UDP), payload)
        proto = 17
    if r.random() < 0.5:
        opts = b""
        if r.random() < 0.5:
            hops = b"".join(bytes([10, 9, 9, k]) for k in range(r.randrange(1, 4)))
            opts = b"\x01" + bytes([r.choice((0x83, 0x89)), 3 + len(hops), 4]) + hops
        pkt = synth.ipv4(seg, proto, "10.1.2.3", "10.9.8.7", options=opts)
    else:
        ext = []
        if r.random() < 0.4:
            ext.append(synth.hop_by_hop())
        if r.random() < 0.5:
            rtype = r.choice((0, 4))
            addrs = [f"2001:db8:{k}::1" for k in range(r.randrange(1, 4))]
            ext.append(synth.routing(rtype, r.randrange(1, 3), addrs))
        pkt = synth.ipv6(seg, proto, ext=ext)
    tags = [(0x8100, r.randrange(4096))] * r.randrange(0, 3)
    trailer = r.randbytes(r.choice((0, 4, 12)))
    frame = synth.ether(pkt, 0x0800 if pkt[0] >> 4 == 4 else 0x86DD, tags, trailer)
    return frame, 14 + 4 * len(tags)


def _verify_cut(frame: bytes, ip_off: int) -> None:
    pkt = Ether(frame)
    if frame[ip_off] >> 4 == 4:
        ip = pkt[IP]
        ihl = (frame[ip_off] & 15) * 4
        assert checksum(frame[ip_off : ip_off + ihl]) == 0, "IPv4 header checksum"
        assert ip.len == len(frame) - ip_off
        l4_bytes = frame[ip_off + ihl :]
        l4 = pkt[TCP] if ip.proto == 6 else pkt[UDP]
        assert in4_chksum(ip.proto, ip, l4_bytes) == 0, "transport checksum (IPv4)"
    else:
        ip6 = pkt[IPv6]
        assert ip6.plen == len(frame) - ip_off - 40
        l4 = pkt[TCP] if pkt.haslayer(TCP) else pkt[UDP]
        l4_bytes = bytes(l4.original) if l4.original else bytes(l4)
        l4_bytes = frame[len(frame) - len(l4_bytes) :]
        assert in6_chksum(6 if isinstance(l4, TCP) else 17, l4, l4_bytes) == 0, (
            "transport checksum (IPv6)"
        )
    assert len(l4[Raw].load) == 24
    if isinstance(l4, UDP):
        assert l4.len == 32
        assert l4.chksum != 0


def _assert_same_except_cut(before: list, after: list) -> list[int]:  # type: ignore[type-arg]
    assert len(before) == len(after)
    cut = []
    for i, (b, a) in enumerate(zip(before, after)):
        assert a.ts == b.ts and a.orig_len == b.orig_len, f"record {i + 1} header"
        if a.frame != b.frame:
            assert len(a.frame) < len(b.frame)
            cut.append(i)
    return cut


@pytest.mark.parametrize("seed", range(4))
def test_cut_packets_verify_with_scapy(tmp_path, seed):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    made = [_wellformed(r) for _ in range(1500)]
    data = synth.pcap_bytes([synth.Record(f, ts=i) for i, (f, _) in enumerate(made)])
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(data)
    stats = slim_file(src, dst)
    cut = _assert_same_except_cut(read_records(data), read_records(dst.read_bytes()))
    assert len(cut) == stats.truncated > 1000
    after = read_records(dst.read_bytes())
    for i in cut:
        _verify_cut(after[i].frame, made[i][1])


def test_bundled_sample_cut_packets_verify_and_the_rest_is_identical(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "s.pcap"
    shutil.copyfile(SAMPLE, src)
    stats = slim_file(src, tmp_path / "o.pcap")
    before, after = read_records(src.read_bytes()), read_records((tmp_path / "o.pcap").read_bytes())
    cut = _assert_same_except_cut(before, after)
    assert len(cut) == stats.truncated
    assert (
        stats.in_pkts == 2065
        and stats.truncated_by["tls"] > 500
        and stats.truncated_by["ssh"] > 100
    )
    for i in cut:
        _verify_cut(after[i].frame, 14)
    assert stats.out_bytes < stats.in_bytes / 2


def test_slimming_a_slim_file_changes_nothing(tmp_path):  # type: ignore[no-untyped-def]
    r = random.Random(9)
    made = [_wellformed(r) for _ in range(500)]
    (tmp_path / "a").write_bytes(synth.pcap_bytes([synth.Record(f) for f, _ in made]))
    first = slim_file(tmp_path / "a", tmp_path / "b")
    second = slim_file(tmp_path / "b", tmp_path / "c")
    assert first.truncated > 300
    assert second.truncated == 0
    assert (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()
