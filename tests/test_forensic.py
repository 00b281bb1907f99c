"""Forensic rules (SPEC §8): the stateful kernel against the naive twin on random flows, and
the default rules untouched by them."""

from __future__ import annotations

import random
import struct

import flowgen
import naive
import pytest
import randframes
from naive_forensic import EVENTS, Forensic
from support.engine_io import slim_with_engine

from pcapslim import analyze_file, slim_file, synth
from pcapslim.constants import FLOW_PROBES, FLOW_SLOTS

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike


def _expected(frames: list[bytes]) -> tuple[bytes, dict[str, int]]:
    data = synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)])
    twin = naive.slim_bytes(data, Forensic().decide)
    return twin.data, twin.categories


# every sliced link type; Ethernet twice as often, as on sensors
FORENSIC_LINKS = (1, 1, 113, 276, 101, 12, 14, 228, 229, 0, 108)


def _frame(r: random.Random, packet: bytes, link: int) -> synth.Record:
    """The packet in a random frame of `link` (tags, MPLS, trailers as randframes makes them);
    one in ten cut short by the snaplen, often inside its payload."""
    etype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    frame = randframes.link_frame(r, packet, link, etype)
    orig = len(frame)
    if r.random() < 0.1:
        frame = frame[: r.randrange(min(40, orig), orig + 1)]
    return synth.Record(frame, orig_len=orig)


def forensic_capture(seed: int, fmt: str) -> bytes:
    """Random conversations (TLS, SSH, cleartext, QUIC, IKE, and the flows of SPEC §9; IPv4
    options and IPv6 extension headers) in one classic pcap of one link type, or in pcapng
    sections of either byte order whose interfaces have several link types."""
    r = random.Random(seed)
    packets = flowgen.capture_packets(
        seed, conversations=60, datagrams=120, shaped=True, more_flows=60
    )
    if fmt == "pcap":
        link = r.choice(FORENSIC_LINKS)
        recs = []
        for i, p in enumerate(packets):
            rec = _frame(r, p, link)
            rec.ts, rec.frac = 1_700_000_000 + i, i
            recs.append(rec)
        le, ns = r.random() < 0.5, r.random() < 0.5
        return synth.pcap_bytes(recs, link, little_endian=le, nanosecond=ns)
    out, i = b"", 0
    while i < len(packets):
        links = [r.choice(FORENSIC_LINKS) for _ in range(r.randrange(1, 4))]
        recs = []
        for p in packets[i : i + r.randrange(50, 400)]:
            iface = r.randrange(len(links))
            rec = _frame(r, p, links[iface])
            rec.ts, rec.iface = i, iface
            recs.append(rec)
            i += 1
        out += synth.pcapng_bytes(recs, links, little_endian=r.random() < 0.5)
    return out


def _assert_same_output(out: bytes, expected: bytes) -> None:
    if out == expected:
        return
    from capfile import read_records

    for i, (g, e) in enumerate(zip(read_records(out), read_records(expected))):
        assert (g.header, g.frame) == (e.header, e.frame), f"record {i + 1} differs"
    raise AssertionError("files differ outside the records")


TABLES = [(FLOW_SLOTS, FLOW_PROBES), (64, 4)]


@pytest.mark.parametrize("slots,probes", TABLES, ids=["table-262144x16", "table-64x4"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("seed", range(4))
def test_forensic_kernel_matches_the_twin_on_every_format_and_link(  # type: ignore[no-untyped-def]
    tmp_path, seed, fmt, slots, probes
):
    """The bounded table as the command sizes it, and one so small that directions keep
    taking each other's slots: the twin follows the same policy, so every takeover must fall
    on the same direction at the same packet."""
    data = forensic_capture(100 + seed, fmt)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    twin = Forensic(slots, probes)
    expected = naive.slim_bytes(data, twin.decide)
    stats = slim_with_engine(src, dst, rules="forensic", flow_slots=slots, flow_probes=probes)
    _assert_same_output(dst.read_bytes(), expected.data)
    assert stats.in_pkts == expected.packets
    assert {k: v for k, v in stats.truncated_by.items() if v} == expected.categories
    assert stats.tail_bytes == expected.tail == 0
    if slots == 64:
        assert twin.table.taken_over > 100, twin.table.taken_over
    else:
        assert twin.table.taken_over == 0


def test_the_forensic_captures_reach_the_hard_cases():  # type: ignore[no-untyped-def]
    """What the differential above is meant to cover does occur in its inputs."""
    from capfile import read_records

    EVENTS.clear()
    links, cut, v4_options, v6_ext = set(), 0, 0, 0
    for seed in range(4):
        for fmt in ("pcap", "pcapng"):
            data = forensic_capture(100 + seed, fmt)
            naive.slim_bytes(data, Forensic().decide)
            for rec in read_records(data):
                links.add(rec.link)
                cut += len(rec.frame) < rec.orig_len
                net = naive.network(rec.frame, rec.link)
                if net is not None and net.version == 4:
                    v4_options += (rec.frame[net.ip] & 0x0F) > 5
                elif net is not None and net.l4 is not None:
                    v6_ext += net.l4 - net.ip > 40
    assert links == set(FORENSIC_LINKS), links
    assert cut > 200 and v4_options > 200 and v6_ext > 200, (cut, v4_options, v6_ext)
    assert EVENTS["tls_header_not_captured"] >= 5, EVENTS
    assert EVENTS["ssh_header_not_captured"] >= 2, EVENTS


def test_a_stream_whose_slot_was_taken_over_starts_again(tmp_path):  # type: ignore[no-untyped-def]
    """SPEC §8: state is bounded and changes only whether a packet is cut. A direction that
    lost its slot is a new stream: its next segments fall back to the per-packet rules until
    one starts with a plausible record header, from where it is followed again.

    A handshake record of 2,000 bytes spans segments 1 and 2; another connection's packet
    comes between them; record 2 (application data, 3,000 bytes) starts segment 3 and goes on
    in segment 4, whose first byte happens to be 0x16. By hand, with room for both directions
    and with one slot:"""
    handshake = b"\x16\x03\x03" + struct.pack("!H", 2000) + bytes([0x30]) * 2000
    app = b"\x17\x03\x03" + struct.pack("!H", 3000) + bytes([0x16]) * 3000
    seg = [handshake[:1000], handshake[1000:], app[:1500], app[1500:]]
    seqs = [1000, 2000, 3005, 4505]
    frames = [_tcp(443, 40000, q, s) for q, s in zip(seqs[:1], seg[:1])]
    other = synth.eth_ip(synth.ipv4(synth.tcp(80, 50000, b"GET / HTTP/1.1\r\n" * 4), 6))
    frames += [other] + [_tcp(443, 40000, q, s) for q, s in zip(seqs[1:], seg[1:])]
    src = tmp_path / "t.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f) for f in frames]))

    def categories(slots: int, probes: int) -> list[str | None]:
        slim_with_engine(
            src, tmp_path / "o", rules="forensic", flow_slots=slots, flow_probes=probes
        )
        return [len(f) < len(g) and "cut" or None for f, g in zip(_frames(tmp_path / "o"), frames)]

    #       seg 1 (handshake), other, seg 2 (handshake rest), seg 3 (app), seg 4 (app rest)
    assert categories(FLOW_SLOTS, FLOW_PROBES) == [None, None, None, "cut", "cut"]
    # seg 2 starts with 0x30 on port 443: cut by the per-packet rule; seg 3 starts a record
    # and is followed; seg 4 is known to be application data although it starts with 0x16
    assert categories(1, 1) == [None, None, "cut", "cut", "cut"]
    twin = Forensic(1, 1)
    data = synth.pcap_bytes([synth.Record(f) for f in frames])
    assert naive.slim_bytes(data, twin.decide).categories == {"tls": 3}
    assert twin.table.taken_over == 2  # the other connection's direction, then ours again


def _frames(path):  # type: ignore[no-untyped-def]
    from capfile import read_records

    return [r.frame for r in read_records(path.read_bytes())]


@pytest.mark.parametrize("seed", range(6))
def test_forensic_kernel_matches_the_naive_twin(tmp_path, seed):  # type: ignore[no-untyped-def]
    frames = flowgen.capture_frames(seed, conversations=60, datagrams=150)
    src = tmp_path / "in.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    expected, cats = _expected(frames)
    stats = slim_file(src, tmp_path / "out.pcap", rules="forensic")
    out = (tmp_path / "out.pcap").read_bytes()
    if out != expected:
        from capfile import read_records

        for i, (g, e) in enumerate(zip(read_records(out), read_records(expected))):
            assert g.frame == e.frame, (
                f"frame {i + 1}: got {len(g.frame)} bytes, want {len(e.frame)}"
            )
    assert out == expected
    assert {k: v for k, v in stats.truncated_by.items() if v} == cats
    assert stats.rules == "forensic"


def test_benchmark_conversations_match_the_twin_and_keep_less(tmp_path):  # type: ignore[no-untyped-def]
    """The conversation capture of the benchmark (benches/gen_streams.py): the kernel agrees with
    the twin on every packet, every stream is followed (TLS on unlisted ports cut after its
    handshake, certificate chains kept), and the forensic rules keep less than the default."""
    from capfile import read_records

    from benches.gen_streams import generate

    src = tmp_path / "conv.pcap"
    generate(src, 3.0, seed=5, concurrent=8)  # few at once: whole conversations in 3 MB
    frames = [r.frame for r in read_records(src.read_bytes())]
    expected, cats = _expected(frames)
    stats = slim_file(src, tmp_path / "out.pcap", rules="forensic")
    got = [r.frame for r in read_records((tmp_path / "out.pcap").read_bytes())]
    assert got == [r.frame for r in read_records(expected)]
    assert {k: v for k, v in stats.truncated_by.items() if v} == cats
    compatible = analyze_file(src)
    assert stats.out_bytes < 0.8 * compatible.out_bytes
    assert stats.truncated_by["tls_other_port"] > 5 * compatible.truncated_by["tls_other_port"]


def test_state_carries_across_windows(tmp_path):  # type: ignore[no-untyped-def]
    frames = flowgen.capture_frames(42, conversations=30, datagrams=20)
    src = tmp_path / "in.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    expected, _ = _expected(frames)
    for window, budget in ((300, 1), (5000, 7)):
        slim_with_engine(
            src, tmp_path / "o", window_bytes=window, max_records=budget, rules="forensic"
        )
        assert (tmp_path / "o").read_bytes() == expected


def test_compatible_rules_are_unchanged_by_the_forensic_code(tmp_path):  # type: ignore[no-untyped-def]
    frames = flowgen.capture_frames(7, conversations=40, datagrams=60)
    data = synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)])
    src = tmp_path / "in.pcap"
    src.write_bytes(data)
    slim_file(src, tmp_path / "c.pcap")
    assert (tmp_path / "c.pcap").read_bytes() == naive.slim_bytes(data).data
    assert analyze_file(src).rules == "compatible"


def test_unknown_rules_are_refused(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "in.pcap"
    src.write_bytes(synth.pcap_bytes([]))
    with pytest.raises(ValueError, match="rules"):
        analyze_file(src, rules="strict")


def _tcp(sport: int, dport: int, seq: int, payload: bytes) -> bytes:
    return synth.eth_ip(
        synth.ipv4(synth.tcp(sport, dport, payload, seq=seq), 6, "10.0.0.1", "10.0.0.2")
    )


def test_certificate_continuation_segments_are_kept_and_app_data_cut(tmp_path):  # type: ignore[no-untyped-def]
    cert = b"\x0b" + (5000).to_bytes(3, "big") + bytes(range(256)) * 20  # a long handshake message
    record = b"\x16\x03\x03" + struct.pack("!H", len(cert[:4000])) + cert[:4000]
    app = b"\x17\x03\x03" + struct.pack("!H", 3000) + bytes(3000)
    stream = record + app
    frames = [
        _tcp(443, 40000, 1000 + off, stream[off : off + 1448])
        for off in range(0, len(stream), 1448)
    ]
    src = tmp_path / "t.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f) for f in frames]))
    compat = analyze_file(src)
    forensic = analyze_file(src, rules="forensic")
    # by hand: segments 1-3 hold the 4005-byte handshake record (3 is shared with app data),
    # segments 4 and 5 hold only application data
    assert forensic.truncated == 2 and forensic.truncated_by["tls"] == 2
    assert compat.truncated == 4  # every continuation segment is cut by the default rules


def test_cleartext_starting_with_0x17_is_kept_outside_tls_streams(tmp_path):  # type: ignore[no-untyped-def]
    body = b"\x17" + b"plain text that happens to start with 0x17" * 3
    src = tmp_path / "c.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(_tcp(8080, 40000, 5, body))]))
    assert analyze_file(src).truncated_by["tls_other_port"] == 1
    assert analyze_file(src, rules="forensic").truncated == 0


@pytest.mark.slow
def test_tens_of_thousands_of_concurrent_connections(tmp_path):  # type: ignore[no-untyped-def]
    """40,000 TLS connections open at once (every one mid-stream while the others go on):
    the bounded table follows them all, exactly like the unbounded twin."""
    import random

    r = random.Random(5)
    n = 40_000
    app = b"\x17\x03\x03" + struct.pack("!H", 1400) + bytes(1400)
    hello = b"\x16\x03\x01" + struct.pack("!H", 200) + bytes(200)
    frames = []
    for rnd in range(3):  # hello, then a record split over two segments, for every connection
        for i in r.sample(range(n), n):
            ip = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
            seg = [hello, app[:700], app[700:]][rnd]
            seq = [0, len(hello), len(hello) + 700][rnd]
            tcp = synth.tcp(40000 + (i % 20000), 443, seg, seq=seq)
            frames.append(synth.eth_ip(synth.ipv4(tcp, 6, ip, "192.0.2.1")))
    src = tmp_path / "many.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    stats = analyze_file(src, rules="forensic")
    # by hand: hellos kept; both halves of each application-data record are cut (the second
    # half starts mid-record and is only known to be application data by tracking)
    assert stats.truncated == 2 * n and stats.truncated_by["tls"] == 2 * n
    expected, cats = _expected(frames)
    slim_file(src, tmp_path / "o.pcap", rules="forensic")
    assert (tmp_path / "o.pcap").read_bytes() == expected


@pytest.mark.parametrize(
    ("v6", "twin_a", "twin_b"),
    [
        # addresses that differ only in the top bit of one 32-bit word (the table keeps two
        # words in one, the upper one taken as signed), or ports that differ in their top bit
        (True, ("7e80::1", "2001:db8::1", 40000), ("fe80::1", "2001:db8::1", 40000)),
        (True, ("2001:db8::1", "7e80::1:0:0", 40000), ("2001:db8::1", "fe80::1:0:0", 40000)),
        (True, ("2001:db8::1", "2001:db8::2", 0x1C40), ("2001:db8::1", "2001:db8::2", 0x9C40)),
        (False, ("10.0.0.1", "192.0.2.1", 40000), ("138.0.0.1", "192.0.2.1", 40000)),
        (False, ("10.0.0.1", "64.0.2.1", 40000), ("10.0.0.1", "192.0.2.1", 40000)),
    ],
)
def test_directions_that_differ_in_a_words_top_bit_are_told_apart(tmp_path, v6, twin_a, twin_b):  # type: ignore[no-untyped-def]
    """Direction A (port 8080) is inside a TLS application-data record (its second half
    follows, only known as such by tracking); direction B, whose key differs from A's in one
    top bit, sends cleartext at the very sequence number A expects next. Told apart, A's
    continuation is cut and B's cleartext kept (by hand); taken for one direction, B's bytes
    would be cut as A's record."""
    app = b"\x17\x03\x03" + struct.pack("!H", 1400) + bytes(1400)
    hello = b"\x16\x03\x01" + struct.pack("!H", 200) + bytes(200)
    text = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" + b"x" * 600

    def frame(src: str, dst: str, sport: int, seg: bytes, seq: int) -> bytes:
        tcp = synth.tcp(sport, 8080, seg, seq=seq)  # no TLS port: B's cleartext stays whole
        ip = synth.ipv6(tcp, 6, src, dst) if v6 else synth.ipv4(tcp, 6, src, dst)
        return synth.eth_ip(ip)

    (sa, da, pa), (sb, db, pb) = twin_a, twin_b
    cont = len(hello) + 700
    frames = [
        frame(sa, da, pa, hello, 0),
        frame(sa, da, pa, app[:700], len(hello)),
        frame(sb, db, pb, text, cont),  # B: cleartext where A's record goes on
        frame(sa, da, pa, app[700:], cont),  # A: the rest of the record
    ]
    data = synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)])
    src = tmp_path / "twins.pcap"
    src.write_bytes(data)
    # by hand: with room for both, A's two halves are cut and B is kept; with one slot, B takes
    # A's over, and A's second half (zeros, on no TLS port) is then kept as well
    for slots, probes, cut in ((FLOW_SLOTS, FLOW_PROBES, [1, 3]), (1, 1, [1])):
        stats = slim_with_engine(
            src, tmp_path / "o", rules="forensic", flow_slots=slots, flow_probes=probes
        )
        twin = naive.slim_bytes(data, Forensic(slots, probes).decide)
        assert (tmp_path / "o").read_bytes() == twin.data
        got = [i for i, (f, g) in enumerate(zip(_frames(tmp_path / "o"), frames)) if f != g]
        assert got == cut and stats.truncated_by["tls_other_port"] == len(cut)
