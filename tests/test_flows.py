"""pcapslim.flows: per-packet flow keys against the naive twin, totals against the analyzer."""

from __future__ import annotations

import random
import struct

import naive
import numpy as np
import pytest
import randframes

from pcapslim import analyze_file, synth
from pcapslim.constants import (
    CATEGORY_NAMES,
    P_A0,
    P_APORT,
    P_B0,
    P_BPORT,
    P_LINK,
    P_PROTO,
    P_TS_NS,
    P_VER,
    PCAPNG_SPB,
)
from pcapslim.flows import flow_table, packet_table

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike


def _key_of_row(row: np.ndarray) -> tuple:  # type: ignore[type-arg]
    def endpoint(base: int, port: int) -> tuple[bytes, int]:
        if row[P_VER] == 0:
            return (b"", 0)
        return (b"".join(int(row[base + k]).to_bytes(4, "big") for k in range(4)), int(row[port]))

    proto = int(row[P_PROTO]) if row[P_VER] else 0
    return (int(row[P_VER]), proto, endpoint(P_A0, P_APORT), endpoint(P_B0, P_BPORT))


@pytest.mark.parametrize("link", randframes.ALL_LINKS)
def test_flow_keys_match_the_naive_twin(tmp_path, link):  # type: ignore[no-untyped-def]
    frames = randframes.frames(500 + link, 1500, link)
    f = tmp_path / "k.pcap"
    f.write_bytes(synth.pcap_bytes([synth.Record(fr, ts=i) for i, fr in enumerate(frames)], link))
    rows, stats = packet_table(f)
    assert len(rows) == len(frames) == stats.in_pkts
    for i, (row, frame) in enumerate(zip(rows, frames)):
        assert _key_of_row(row) == naive.flow_key(frame, link), f"packet {i + 1}"


@pytest.mark.parametrize("seed", range(4))
def test_pcapng_flow_keys_match_the_naive_twin_across_sections(tmp_path, seed):  # type: ignore[no-untyped-def]
    """Several sections in both byte orders, each describing its own interfaces: every packet's
    key comes from its own section's interface, simple packet blocks from interface 0's."""
    r = random.Random(70 + seed)
    data, expected = b"", []
    for _ in range(r.randrange(2, 5)):
        le = r.random() < 0.5
        o = "<" if le else ">"
        links = [r.choice(randframes.ALL_LINKS) for _ in range(r.randrange(1, 4))]
        blocks = [synth.pcapng_idb(link, 262144, le) for link in links]
        for i in range(r.randrange(50, 400)):
            if r.random() < 0.9:
                iface = r.randrange(len(links))
                frame = randframes.frame(r, links[iface])
                blocks.append(synth.pcapng_epb(synth.Record(frame, ts=i, iface=iface), le))
                expected.append((links[iface], naive.flow_key(frame, links[iface])))
            else:
                frame = randframes.frame(r, links[0])
                body = struct.pack(o + "I", len(frame)) + frame
                blocks.append(synth.pcapng_block(PCAPNG_SPB, body, le))
                expected.append((links[0], naive.flow_key(frame, links[0])))
        data += synth.pcapng_shb(le) + b"".join(blocks)
    f = tmp_path / "k.pcapng"
    f.write_bytes(data)
    rows, stats = packet_table(f)
    assert len(rows) == len(expected) == stats.in_pkts
    for i, (row, (link, key)) in enumerate(zip(rows, expected)):
        assert (int(row[P_LINK]), _key_of_row(row)) == (link, key), f"packet {i + 1}"


def test_totals_equal_the_analyzer(tmp_path):  # type: ignore[no-untyped-def]
    r = random.Random(3)
    frames = [randframes.frame(r, 1) for _ in range(3000)]
    f = tmp_path / "t.pcap"
    f.write_bytes(synth.pcap_bytes([synth.Record(fr, ts=i) for i, fr in enumerate(frames)]))
    flows, stats = flow_table(f)
    again = analyze_file(f)
    assert flows["packets"].sum() == stats.in_pkts == again.in_pkts == 3000
    assert flows["truncated"].sum() == again.truncated
    for name in CATEGORY_NAMES:
        assert flows[name].sum() == again.truncated_by[name]
    # classic pcap: record headers keep their size, so the file shrinks by the frame bytes cut
    assert flows["bytes_saved"].sum() == again.in_bytes - again.out_bytes
    assert (flows["bytes_before"] - flows["bytes_after"] == flows["bytes_saved"]).all()
    assert flows["bytes_saved"].is_monotonic_decreasing


def _tcp(src: str, dst: str, sport: int, dport: int, payload: bytes, v6: bool = False) -> bytes:
    seg = synth.tcp(sport, dport, payload)
    return synth.ipv6(seg, 6, src, dst) if v6 else synth.ipv4(seg, 6, src, dst)


def test_both_directions_are_one_flow_for_ipv4_ipv6_vlan_and_non_ip(tmp_path):  # type: ignore[no-untyped-def]
    tls = b"\x17\x03\x03" + bytes(100)
    frames = [
        synth.eth_ip(_tcp("10.0.0.2", "10.0.0.1", 50000, 443, tls)),
        synth.eth_ip(_tcp("10.0.0.1", "10.0.0.2", 443, 50000, tls)),
        synth.ether(_tcp("10.0.0.1", "10.0.0.2", 443, 50000, tls), 0x0800, [(0x8100, 7)]),
        synth.eth_ip(_tcp("2001:db8::9", "2001:db8::1", 22, 40000, bytes(80), v6=True)),
        synth.eth_ip(_tcp("2001:db8::1", "2001:db8::9", 40000, 22, bytes(80), v6=True)),
        synth.ether(b"\x00\x01\x08\x00\x06\x04" + bytes(22), 0x0806),  # ARP
        synth.ether(b"\x00\x01\x08\x00\x06\x04" + bytes(22), 0x0806),
        synth.eth_ip(synth.ipv4(bytes(64), 1, "10.0.0.1", "10.0.0.2")),  # ICMP
    ]
    f = tmp_path / "d.pcap"
    f.write_bytes(
        synth.pcap_bytes([synth.Record(fr, ts=100 + i, frac=5) for i, fr in enumerate(frames)])
    )
    flows, _ = flow_table(f)
    table = {
        (r.protocol, r.address_a, r.port_a, r.address_b, r.port_b): r for r in flows.itertuples()
    }
    tcp4 = table[("tcp", "10.0.0.1", 443, "10.0.0.2", 50000)]
    assert (tcp4.packets, tcp4.truncated, tcp4.tls) == (3, 3, 3)  # VLAN tag does not split it
    assert tcp4.bytes_saved == 3 * (103 - 24)
    tcp6 = table[("tcp", "2001:db8::1", 40000, "2001:db8::9", 22)]
    assert (tcp6.packets, tcp6.ssh, tcp6.ip_version) == (2, 2, 6)
    assert tcp6.categories == "ssh"
    arp = table[("non-ip", "", 0, "", 0)]
    assert (arp.packets, arp.truncated, arp.ip_version) == (2, 0, 0)
    icmp = table[("icmp", "10.0.0.1", 0, "10.0.0.2", 0)]
    assert icmp.packets == 1
    assert str(tcp4.first_seen) == "1970-01-01 00:01:40.000005+00:00"
    assert str(tcp4.last_seen) == "1970-01-01 00:01:42.000005+00:00"
    assert len(flows) == 4


def test_timestamps_of_every_format(tmp_path):  # type: ignore[no-untyped-def]
    fr = synth.eth_ip(_tcp("10.0.0.1", "10.0.0.2", 80, 1234, b"x"))
    rec = synth.Record(fr, ts=1_700_000_000, frac=123456)
    cases = {
        "us.pcap": (synth.pcap_bytes([rec]), 1_700_000_000_123_456_000),
        "ns.pcap": (
            synth.pcap_bytes([rec], nanosecond=True, little_endian=False),
            1_700_000_000_000_123_456,
        ),
        "us.pcapng": (synth.pcapng_bytes([rec]), 1_700_000_000_123_456_000),
    }
    # an interface with if_tsresol 9 (nanoseconds): ticks are nanoseconds
    ticks = 1_700_000_000_123_456_789
    idb = synth.pcapng_idb(1, options=synth.pcapng_option(9, b"\x09") + synth.pcapng_option(0, b""))
    body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(fr), len(fr)) + fr
    cases["ns.pcapng"] = (synth.pcapng_shb() + idb + synth.pcapng_block(6, body), ticks)
    for name, (data, expected) in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        rows, _ = packet_table(f)
        assert rows[0, P_TS_NS] == expected, name
