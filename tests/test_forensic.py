"""Forensic rules (SPEC §8): the stateful kernel against the naive twin on random flows, and
the default rules untouched by them."""

from __future__ import annotations

import struct

import flowgen
import naive
import pytest
from engine_io import slim_with_engine
from naive_forensic import Forensic

from pcapslim import analyze_file, slim_file, synth

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike


def _expected(frames: list[bytes]) -> tuple[bytes, dict[str, int]]:
    twin = Forensic()
    recs, cats = [], {}
    for i, f in enumerate(frames):
        v = twin.decide(f, 1)
        if v.category:
            cats[v.category] = cats.get(v.category, 0) + 1
        recs.append(synth.Record(v.frame, ts=i, orig_len=len(f)))
    return synth.pcap_bytes(recs), cats


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
