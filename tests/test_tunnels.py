"""SPEC §10 against the twins: random conversations (TLS, SSH, QUIC, IKE, cleartext and the
protocols of §9) with most packets inside random tunnel stacks (tests/tunnelgen.py), in both
rule sets, with the command's table and a tiny one, on both kernel sets: the slim copy, the cut
counts and the per-kind tunnel counts are the twins'."""

from __future__ import annotations

import random

import flowgen
import naive
import pytest
import randframes
import tunnelgen
from naive_forensic import Forensic
from support.engine_io import slim_with_engine

from pcapslim import synth
from pcapslim.constants import FLOW_PROBES, FLOW_SLOTS, TUNNEL_NAMES

pytestmark = pytest.mark.usefixtures("kernels")


def tunnel_capture(seed: int, fmt: str) -> bytes:
    r = random.Random(seed)
    packets = flowgen.capture_packets(seed, 40, 80, shaped=True, more_flows=30)
    recs = []
    for i, p in enumerate(packets):
        if r.random() < 0.7:
            p = tunnelgen.wrap(r, p, i)
        link = r.choice((1, 1, 1, 113, 101, 0))
        frame = randframes.link_frame(r, p, link, 0x0800 if p[0] >> 4 == 4 else 0x86DD)
        orig = len(frame)
        if r.random() < 0.05:
            frame = frame[: r.randrange(min(60, orig), orig + 1)]
        recs.append((link, synth.Record(frame, ts=i, orig_len=orig)))
    if fmt == "pcap":  # one link type per classic file: Ethernet
        return synth.pcap_bytes([rec for link, rec in recs if link == 1])
    links = [1, 113, 101, 0]
    for link, rec in recs:
        rec.iface = links.index(link)
    return synth.pcapng_bytes([rec for _, rec in recs], links)


@pytest.mark.parametrize("rules", ["compatible", "forensic", "forensic-64x4"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("seed", range(3))
def test_tunnels_match_the_twin(tmp_path, seed, fmt, rules):  # type: ignore[no-untyped-def]
    data = tunnel_capture(500 + seed, fmt)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    slots, probes = (64, 4) if rules.endswith("64x4") else (FLOW_SLOTS, FLOW_PROBES)
    decide = None if rules == "compatible" else Forensic(slots, probes).decide
    twin = naive.slim_bytes(data, decide)
    stats = slim_with_engine(src, dst, rules=rules.split("-")[0], flow_slots=slots,
                             flow_probes=probes)  # fmt: skip
    out = dst.read_bytes()
    assert out == twin.data
    assert {k: v for k, v in stats.truncated_by.items() if v} == twin.categories
    assert {k: v for k, v in stats.tunnels.items() if v} == twin.tunnels
    assert set(stats.tunnels) == set(TUNNEL_NAMES)


def test_the_tunnel_captures_reach_every_kind_and_the_bad_cases() -> None:
    """What the differential above is meant to cover occurs in its inputs: every kind, cut
    packets inside each, stacks four deep, and packets kept for a tunnel that does not parse
    or is too deep."""
    from capfile import read_records

    cut_inside: dict[str, int] = {}
    deep = kept_bad = 0
    for seed in range(3):
        for rec in read_records(tunnel_capture(500 + seed, "pcapng")):
            net = naive.network(rec.frame, rec.link)
            if net is None:
                continue
            deep += len(net.enclosing) == 4
            kept_bad += net.version == 0
            if naive.decide(rec.frame, rec.link).category:
                for kind in set(net.tunnels):
                    cut_inside[kind] = cut_inside.get(kind, 0) + 1
    assert set(cut_inside) == set(TUNNEL_NAMES), cut_inside
    assert min(cut_inside.values()) >= 20 and deep >= 20 and kept_bad >= 20, (cut_inside, deep)
