"""Kernels against the naive twin (tests/naive.py) on seeded random frames."""

from __future__ import annotations

import random
from collections import Counter

import naive
import pytest
import randframes
from capfile import read_records

from pcapslim import analyze_file, slim_file, synth

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


@pytest.mark.parametrize("link", randframes.ALL_LINKS)
@pytest.mark.parametrize("little_endian,nanosecond", [(True, False), (False, True)])
def test_pcap_kernels_match_naive_twin(tmp_path, link, little_endian, nanosecond):  # type: ignore[no-untyped-def]
    seed = link * 4 + little_endian * 2 + nanosecond
    frames = randframes.frames(seed, FRAMES_PER_LINK, link)
    recs = [synth.Record(f, ts=1_600_000_000 + i, frac=i * 7) for i, f in enumerate(frames)]
    data = synth.pcap_bytes(recs, link, little_endian=little_endian, nanosecond=nanosecond)
    _check_file(tmp_path, data, [link] * len(frames))


def test_the_random_frames_reach_every_category(tmp_path):  # type: ignore[no-untyped-def]
    seen: Counter[str | None] = Counter()
    for link in randframes.ALL_LINKS:
        for f in randframes.frames(link, 500, link):
            seen[naive.decide(f, link).category] += 1
    for name in ("tls", "tls_other_port", "ssh", "quic", "ipsec"):
        assert seen[name] >= 50, (name, seen)


@pytest.mark.parametrize("seed", range(12))
def test_pcapng_sections_interfaces_and_byte_orders_match_naive_twin(tmp_path, seed):  # type: ignore[no-untyped-def]
    r = random.Random(1000 + seed)
    parts, links_seen = [], []
    for _ in range(r.randrange(1, 4)):
        le = r.random() < 0.5
        links = [r.choice(randframes.ALL_LINKS) for _ in range(r.randrange(1, 4))]
        recs = []
        for i in range(r.randrange(0, 400)):
            iface = r.randrange(len(links))
            opts = synth.pcapng_option(1, b"c%d" % i, le) if r.random() < 0.3 else b""
            frame = randframes.frame(r, links[iface])
            recs.append(synth.Record(frame, ts=i, frac=3, iface=iface, options=opts))
            links_seen.append(links[iface])
        parts.append(
            synth.pcapng_bytes(recs, links, little_endian=le, section_len=r.choice((-1, 4096)))
        )
    _check_file(tmp_path, b"".join(parts), links_seen)
