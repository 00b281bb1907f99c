"""SPEC §4: classic pcap and pcapng structure, tails, corrupt and unknown inputs."""

from __future__ import annotations

import random
import struct

import naive
import pytest
import randframes
from support.engine_io import slim_with_engine

from pcapslim import CorruptCaptureError, UnknownFormatError, analyze_file, slim_file, synth

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike

TLS_FRAME = synth.eth_ip(synth.ipv4(synth.tcp(443, 50000, b"\x17\x03\x03" + bytes(97)), 6))
PLAIN_FRAME = synth.eth_ip(synth.ipv4(synth.tcp(80, 50000, b"GET / HTTP/1.1\r\n" * 4), 6))


def _mixed_pcap(**kw) -> bytes:  # type: ignore[no-untyped-def]
    return synth.pcap_bytes(
        [
            synth.Record(f, ts=i)
            for i, f in enumerate([TLS_FRAME, PLAIN_FRAME, TLS_FRAME, PLAIN_FRAME])
        ],
        **kw,
    )


# --- unknown and short ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"\xd4\xc3\xb2\xa1" + bytes(19), b"hello world, not a capture!!"]
)
def test_unknown_or_short_input_fails_with_a_clear_message(write, data):  # type: ignore[no-untyped-def]
    p = write("x.pcap", data)
    with pytest.raises(UnknownFormatError, match=str(p)):
        analyze_file(p)
    with pytest.raises(UnknownFormatError):
        slim_file(p, p.with_suffix(".out"))
    assert not p.with_suffix(".out").exists()
    assert p.read_bytes() == data


def test_header_only_pcap_is_copied(write):  # type: ignore[no-untyped-def]
    data = synth.pcap_bytes([])
    st = slim_file(write("h.pcap", data), write("o.pcap", b""))
    assert st.in_pkts == 0 and st.out_bytes == 24 and st.format == "pcap"


@pytest.mark.parametrize("le,ns", [(True, False), (True, True), (False, False), (False, True)])
def test_every_pcap_magic_and_byte_order_is_slimmed(write, le, ns):  # type: ignore[no-untyped-def]
    data = _mixed_pcap(little_endian=le, nanosecond=ns)
    st = slim_file(write("a.pcap", data), write("b.pcap", b""))
    assert st.truncated == 2 and st.in_pkts == 4
    # by hand: each TLS frame is 14 + 20 + 20 + 100 bytes and loses 100 - 24 = 76
    assert st.out_bytes == len(data) - 2 * 76


# --- tails ----------------------------------------------------------------------------------


def test_pcap_cut_at_every_offset_keeps_complete_records_and_the_tail(tmp_path):  # type: ignore[no-untyped-def]
    data = _mixed_pcap()
    src = tmp_path / "t.pcap"
    for cut in range(24, len(data) + 1):
        src.write_bytes(data[:cut])
        st = slim_file(src, tmp_path / "o.pcap")
        exp = naive.slim_bytes(data[:cut])
        assert (tmp_path / "o.pcap").read_bytes() == exp.data, cut
        assert st.tail_bytes == exp.tail and st.in_pkts == exp.packets


def test_pcapng_cut_at_every_offset_keeps_complete_blocks_and_the_tail(tmp_path):  # type: ignore[no-untyped-def]
    recs = [
        synth.Record(f, ts=i, options=synth.pcapng_option(1, b"note"))
        for i, f in enumerate([TLS_FRAME, PLAIN_FRAME, TLS_FRAME])
    ]
    data = synth.pcapng_bytes(recs, section_len=4242)
    src = tmp_path / "t.pcapng"
    for cut in range(24, len(data) + 1):
        src.write_bytes(data[:cut])
        st = slim_file(src, tmp_path / "o.pcapng")
        exp = naive.slim_bytes(data[:cut])
        assert (tmp_path / "o.pcapng").read_bytes() == exp.data, cut
        assert st.tail_bytes == exp.tail and st.in_pkts == exp.packets


def test_pcapng_ending_inside_its_first_section_header_is_all_tail(write):  # type: ignore[no-untyped-def]
    shb = synth.pcapng_shb(options=synth.pcapng_option(2, b"some hardware"))
    data = shb[:-4]
    st = slim_file(write("s.pcapng", data), write("o.pcapng", b""))
    assert st.tail_bytes == len(data) and st.in_pkts == 0 and st.out_bytes == len(data)


# --- corrupt records ------------------------------------------------------------------------


def _record_with_caplen(caplen: int, data_len: int) -> bytes:
    return struct.pack("<IIII", 1, 2, caplen, caplen) + bytes(data_len)


def test_corrupt_caplen_names_the_record_and_offset(write):  # type: ignore[no-untyped-def]
    good = synth.pcap_bytes([synth.Record(TLS_FRAME), synth.Record(PLAIN_FRAME)], snaplen=65535)
    data = good + _record_with_caplen(300_000, 100)
    p = write("c.pcap", data)
    with pytest.raises(CorruptCaptureError) as err:
        slim_file(p, p.with_suffix(".out"))
    # by hand: 24-byte header + (16 + 154) + (16 + 118) = 328
    assert (err.value.record, err.value.offset) == (
        3,
        24 + 16 + len(TLS_FRAME) + 16 + len(PLAIN_FRAME),
    )
    assert "record 3 at byte offset 328" in str(err.value) and "300000" in str(err.value)
    assert not p.with_suffix(".out").exists()


def test_large_caplen_within_the_snaplen_is_not_corrupt(write):  # type: ignore[no-untyped-def]
    big = PLAIN_FRAME + bytes(300_000 - len(PLAIN_FRAME))
    data = synth.pcap_bytes([synth.Record(big), synth.Record(TLS_FRAME)], snaplen=400_000)
    st = slim_file(write("b.pcap", data), write("o.pcap", b""))
    assert st.in_pkts == 2 and st.truncated == 1


def test_corrupt_caplen_is_checked_before_the_end_of_file(write):  # type: ignore[no-untyped-def]
    data = synth.pcap_bytes([synth.Record(TLS_FRAME)], snaplen=1000) + _record_with_caplen(
        270_000, 10
    )
    with pytest.raises(CorruptCaptureError) as err:
        analyze_file(write("c.pcap", data))
    assert err.value.record == 2


def _epb_raw(caplen: int, data: bytes, blen: int | None = None, le: bool = True) -> bytes:
    o = "<" if le else ">"
    body = struct.pack(o + "IIIII", 0, 0, 0, caplen, caplen) + data
    n = len(body) + 12 if blen is None else blen
    return struct.pack(o + "II", 6, n) + body + struct.pack(o + "I", n)


def _section(*blocks: bytes, snaplen: int = 65535) -> bytes:
    return synth.pcapng_shb() + synth.pcapng_idb(1, snaplen) + b"".join(blocks)


@pytest.mark.parametrize(
    "data,what",
    [
        (_section(struct.pack("<II", 0x99, 8) + bytes(16)), "below 12"),
        (_section(struct.pack("<II", 0x99, 14) + bytes(16)), "multiple of 4"),
        (
            _section(struct.pack("<III", 0x99, 16, 0) + struct.pack("<I", 20)),
            "trailing block lengths differ",
        ),
        (
            synth.pcapng_block(0x0A0D0D0A, bytes([0x4D, 0x3C, 0x2B, 0x1A]) + bytes(8)),
            "section header",
        ),
        (
            synth.pcapng_shb()[:8] + b"\x11\x22\x33\x44" + synth.pcapng_shb()[12:],
            "byte-order magic",
        ),
        (synth.pcapng_shb() + synth.pcapng_block(1, b"\x01\x00\x00\x00"), "interface description"),
        (_section(synth.pcapng_block(6, bytes(16))), "enhanced packet block"),
        (_section(_epb_raw(200, bytes(100))), "does not fit"),
        (_section(_epb_raw(300_000, bytes(64))), "captured length 300000"),
    ],
)
def test_malformed_pcapng_fails_with_the_block_number_and_offset(write, data, what):  # type: ignore[no-untyped-def]
    p = write("m.pcapng", data + bytes(64))
    with pytest.raises(CorruptCaptureError, match=what) as err:
        slim_file(p, p.with_suffix(".out"))
    assert err.value.offset % 4 == 0 and err.value.record >= 1
    assert not p.with_suffix(".out").exists()


def test_pcapng_snaplen_zero_means_unlimited(write):  # type: ignore[no-untyped-def]
    frame = PLAIN_FRAME + bytes(300_000 - len(PLAIN_FRAME))
    data = synth.pcapng_bytes([synth.Record(frame), synth.Record(TLS_FRAME)], snaplen=0)
    st = analyze_file(write("z.pcapng", data))
    assert st.in_pkts == 2 and st.truncated == 1


# --- pcapng structure -----------------------------------------------------------------------


def test_section_length_becomes_unspecified_only_when_the_section_changed(tmp_path):  # type: ignore[no-untyped-def]
    changed = synth.pcapng_bytes([synth.Record(TLS_FRAME)], section_len=12345)
    unchanged = synth.pcapng_bytes(
        [synth.Record(PLAIN_FRAME)], section_len=777, little_endian=False
    )
    (tmp_path / "s.pcapng").write_bytes(changed + unchanged)
    slim_file(tmp_path / "s.pcapng", tmp_path / "o.pcapng")
    out = (tmp_path / "o.pcapng").read_bytes()
    assert struct.unpack("<q", out[16:24])[0] == -1
    second = out.index(b"\x0a\x0d\x0d\x0a", 4)
    assert struct.unpack(">q", out[second + 16 : second + 24])[0] == 777
    assert out[second:] == unchanged


def test_simple_obsolete_and_undescribed_packets_are_kept_and_counted(write):  # type: ignore[no-untyped-def]
    spb = synth.pcapng_block(3, struct.pack("<I", len(TLS_FRAME)) + TLS_FRAME)
    opb = synth.pcapng_block(
        2, struct.pack("<HHIIII", 0, 0, 0, 0, len(TLS_FRAME), len(TLS_FRAME)) + TLS_FRAME
    )
    stray = synth.pcapng_epb(synth.Record(TLS_FRAME, iface=5))
    nrb = synth.pcapng_block(4, bytes(8))
    data = _section(spb, opb, stray, nrb, synth.pcapng_epb(synth.Record(TLS_FRAME)))
    st = slim_file(write("k.pcapng", data), write("o.pcapng", b""))
    assert st.in_pkts == 4 and st.truncated == 1
    assert st.linktypes == {"1": 3}  # the packet of the undescribed interface has no link type
    assert st.out_bytes == len(data) - 76


def test_more_interfaces_than_the_initial_table_holds(write):  # type: ignore[no-untyped-def]
    links = [randframes.ALL_LINKS[i % 10] for i in range(40)]
    recs = [synth.Record(TLS_FRAME if links[i] == 1 else PLAIN_FRAME, iface=i) for i in range(40)]
    data = synth.pcapng_bytes(recs, links)
    st = analyze_file(write("i.pcapng", data))
    assert st.in_pkts == 40 and st.truncated == 4  # link type 1 sits at interfaces 0, 10, 20, 30


# --- windows, buffers and the record budget -------------------------------------------------


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("window,budget", [(64, 1), (1000, 3), (4096, 7), (1 << 20, 1 << 16)])
def test_window_and_budget_never_change_the_output(tmp_path, use_mmap, window, budget):  # type: ignore[no-untyped-def]
    r = random.Random(window + budget)
    recs = [synth.Record(randframes.frame(r, 1), ts=i) for i in range(300)]
    recs.append(synth.Record(PLAIN_FRAME + bytes(20_000)))  # larger than small windows
    parts = [synth.pcapng_bytes(recs[:150]), synth.pcapng_bytes(recs[150:], little_endian=False)]
    for name, data in (("a.pcap", synth.pcap_bytes(recs)), ("b.pcapng", b"".join(parts)[:-7])):
        src = tmp_path / name
        src.write_bytes(data)
        expected = naive.slim_bytes(data)
        progress: list[tuple[int, int]] = []
        st = slim_with_engine(
            src,
            tmp_path / "out",
            use_mmap=use_mmap,
            window_bytes=window,
            max_records=budget,
            on_progress=lambda d, t, seen=progress: seen.append((d, t)),
        )
        assert (tmp_path / "out").read_bytes() == expected.data
        assert st.tail_bytes == expected.tail
        assert progress[-1] == (len(data), len(data))
        assert all(a[0] <= b[0] for a, b in zip(progress, progress[1:]))
