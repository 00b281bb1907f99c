"""Kernels against the naive twin (tests/naive.py) on seeded random frames."""

from __future__ import annotations

import random
import struct
from collections import Counter

import naive
import pytest
import randframes
from capfile import read_records

from pcapslim import analyze_file, slim_file, synth
from pcapslim.constants import PCAPNG_OPB, PCAPNG_SPB

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike

FRAMES_PER_LINK = 2500  # x 13 link types x 2 file variants: 65,000 frames a run


def _check_file(tmp_path, data: bytes, links_by_record: list[int]) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.cap"
    dst = tmp_path / "out.cap"
    src.write_bytes(data)
    expected = naive.slim_bytes(data)
    stats = slim_file(src, dst)
    out = dst.read_bytes()
    assert len(out) == len(expected.data)
    if out != expected.data:  # name the first record that differs
        got_recs = read_records(out)
        exp_recs = read_records(expected.data)
        for i, (g, e) in enumerate(zip(got_recs, exp_recs)):
            assert (g.header, g.frame) == (e.header, e.frame), f"record {i + 1} differs"
        raise AssertionError("files differ outside the records")
    assert stats.in_pkts == expected.packets
    assert stats.truncated == sum(expected.categories.values())
    for name in ("tls", "tls_other_port", "ssh", "quic", "ipsec"):
        assert stats.truncated_by[name] == expected.categories.get(name, 0), name
    assert stats.out_bytes == len(out)
    assert stats.tail_bytes == expected.tail
    assert Counter(links_by_record) == Counter({int(k): v for k, v in stats.linktypes.items()})
    analysed = analyze_file(src)
    assert analysed.report_fields() | {"elapsed_ms": 0} == stats.report_fields() | {"elapsed_ms": 0}


# (little-endian, nanosecond, snaplen, file cut inside its last record): all four magics
PCAP_VARIANTS = [
    (True, False, 262144, False),
    (False, True, 262144, False),
    (True, True, 96, True),
    (False, False, 200, True),
]


@pytest.mark.parametrize("link", randframes.ALL_LINKS)
@pytest.mark.parametrize(
    "little_endian,nanosecond,snaplen,cut_short",
    PCAP_VARIANTS,
    ids=["le-us", "be-ns", "le-ns-snap96-cut", "be-us-snap200-cut"],
)
def test_pcap_kernels_match_naive_twin(
    tmp_path, link, little_endian, nanosecond, snaplen, cut_short
):  # type: ignore[no-untyped-def]
    seed = link * 16 + little_endian * 8 + nanosecond * 4 + cut_short
    r = random.Random(seed)
    frames = randframes.frames(seed, FRAMES_PER_LINK, link)
    recs = [
        synth.Record(f[:snaplen], ts=1_600_000_000 + i, frac=i * 7, orig_len=len(f))
        for i, f in enumerate(frames)
    ]
    data = synth.pcap_bytes(
        recs, link, little_endian=little_endian, nanosecond=nanosecond, snaplen=snaplen
    )
    complete = len(frames)
    if cut_short:  # the capture was killed while writing its last record
        data = data[: -r.randrange(1, 16 + len(recs[-1].frame))]
        complete -= 1
    _check_file(tmp_path, data, [link] * complete)


def test_the_random_frames_reach_every_category(tmp_path):  # type: ignore[no-untyped-def]
    seen: Counter[str | None] = Counter()
    for link in randframes.ALL_LINKS:
        for f in randframes.frames(link, 500, link):
            seen[naive.decide(f, link).category] += 1
    for name in ("tls", "tls_other_port", "ssh", "quic", "ipsec"):
        assert seen[name] >= 50, (name, seen)


def _pcapng_section(r: random.Random, links_seen: list[int]) -> bytes:
    """One section in a random byte order: interfaces of several link types, enhanced packet
    blocks with and without options, simple and obsolete packet blocks, packets of interfaces
    the section does not describe, custom, statistics, name-resolution and unknown blocks."""
    le = r.random() < 0.5
    o = "<" if le else ">"
    links = [r.choice(randframes.ALL_LINKS) for _ in range(r.randrange(0, 4))]
    blocks = [synth.pcapng_idb(link, r.choice((262144, 65535, 0)), le) for link in links]
    for i in range(r.randrange(0, 300)):
        pick = r.random()
        if links and pick < 0.8:  # an enhanced packet block of a described interface
            iface = r.randrange(len(links))
            opts = synth.pcapng_option(1, b"c%d" % i, le) if r.random() < 0.3 else b""
            frame = randframes.frame(r, links[iface])
            blocks.append(
                synth.pcapng_epb(synth.Record(frame, ts=i, iface=iface, options=opts), le)
            )
            links_seen.append(links[iface])
        elif pick < 0.85:  # a simple packet block: interface 0's link type
            frame = randframes.frame(r, links[0] if links else 1)
            body = struct.pack(o + "I", len(frame) + r.choice((0, 0, 40))) + frame
            blocks.append(synth.pcapng_block(PCAPNG_SPB, body, le))
            if links:
                links_seen.append(links[0])
        elif pick < 0.9:  # an obsolete packet block, of a described interface or not
            iface = r.randrange(len(links) + 1)
            frame = randframes.frame(r, links[iface] if iface < len(links) else 1)
            body = struct.pack(o + "HHIIII", iface, 0, 0, i, len(frame), len(frame)) + frame
            body += b"\0" * (-len(frame) % 4)
            blocks.append(synth.pcapng_block(PCAPNG_OPB, body, le))
            if iface < len(links):
                links_seen.append(links[iface])
        elif pick < 0.93:  # a packet of an interface the section does not describe
            frame = randframes.frame(r, 1)
            rec = synth.Record(frame, ts=i, iface=len(links) + r.randrange(3))
            blocks.append(synth.pcapng_epb(rec, le))
        else:  # custom (copiable or not), interface statistics, name resolution, unknown
            btype = r.choice((0x00000BAD, 0x40000BAD, 5, 4, 0x0000ABCD, 0x80001234))
            blocks.append(synth.pcapng_block(btype, r.randbytes(r.randrange(0, 64)), le))
    body = b"".join(blocks)
    shb = synth.pcapng_shb(le, -1)
    section_len = r.choice((-1, len(body)))  # unspecified, or the section's true length
    return synth.pcapng_shb(le, section_len) + body if section_len >= 0 else shb + body


@pytest.mark.parametrize("seed", range(12))
def test_pcapng_sections_interfaces_and_byte_orders_match_naive_twin(tmp_path, seed):  # type: ignore[no-untyped-def]
    r = random.Random(1000 + seed)
    links_seen: list[int] = []
    data = b"".join(_pcapng_section(r, links_seen) for _ in range(r.randrange(1, 4)))
    _check_file(tmp_path, data, links_seen)


def test_pcapng_generator_reaches_every_kind_of_block():  # type: ignore[no-untyped-def]
    from capfile import read_blocks

    kinds: Counter[int] = Counter()
    for seed in range(12):
        r = random.Random(1000 + seed)
        data = b"".join(_pcapng_section(r, []) for _ in range(r.randrange(1, 4)))
        kinds.update(b.btype for b in read_blocks(data))
    for btype in (0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 0x00000BAD, 0x40000BAD, 0x0000ABCD):
        assert kinds[btype] >= 3, (hex(btype), kinds)
