"""The record table the index kernels fill, against a reading of the blocks written here from the
format: for every way a packet can be stored (classic pcap records; pcapng enhanced packet
blocks of a described interface and of one the section does not describe, obsolete packet
blocks, simple packet blocks, whole and cut short) and every link type, in both byte orders:
where the packet's frame starts, how many of its bytes were captured, its kind, its link type
and its decision. Frames that must be cut are put in every kind of block: only those of
enhanced packet blocks of a described interface, and of classic records, are cut (SPEC §4);
the others are kept whole, and the later stages (the flow table) read their frames where the
index kernel says they are.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, replace

import naive
import numpy as np
import pytest
import randframes

from pcapslim import synth
from pcapslim.constants import (
    CATEGORY_NAMES,
    F_CAPLEN,
    F_CAT,
    F_DATA,
    F_KIND,
    F_LINK,
    F_START,
    KIND_OTHER_PACKET,
    PCAPNG_OPB,
    PCAPNG_SPB,
)
from pcapslim.engine import process
from pcapslim.flows import packet_table

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike

KIND_PACKET, KIND_OTHER = 0, 1
STORAGE = ("epb", "epb_undescribed", "opb", "opb_undescribed", "spb", "spb_cut_short")


@dataclass(frozen=True)
class Row:
    start: int
    kind: int
    link: int
    data: int
    caplen: int
    category: int  # 0 keep, else 1 + index in CATEGORY_NAMES
    written: bytes = b""  # the whole frame the block was made from (not compared)
    held: bytes = b""  # the bytes of it the block holds (not compared)

    def table_fields(self) -> tuple[int, ...]:
        return (self.start, self.kind, self.link, self.data, self.caplen, self.category)


def _code(frame: bytes, link: int) -> int:
    category = naive.decide(frame, link).category
    return 0 if category is None else 1 + CATEGORY_NAMES.index(category)


def _frames(r: random.Random, link: int, n: int) -> list[bytes]:
    """`n` frames of the link type, six in seven of them ones the rules cut (where the link
    type is sliced at all)."""
    out: list[bytes] = []
    tries = 0
    while len(out) < n:
        f = randframes.frame(r, link)
        tries += 1
        cut = naive.decide(f, link).category is not None
        if cut or len(out) % 7 == 6 or tries > 50 * n:
            out.append(f)
    return out


def _pcapng(r: random.Random, link: int, le: bool) -> tuple[bytes, list[Row]]:
    """A section with two interfaces (`link` and Ethernet) and a packet of every storage kind
    for each frame, with what the table must say of each."""
    o = "<" if le else ">"
    other = 1
    blocks = [synth.pcapng_shb(le), synth.pcapng_idb(link, 0, le), synth.pcapng_idb(other, 0, le)]
    pos = sum(len(b) for b in blocks)
    rows: list[Row] = []
    for i, frame in enumerate(_frames(r, link, 60)):
        how = STORAGE[i % len(STORAGE)]
        held = frame
        if how == "epb":
            block = synth.pcapng_epb(synth.Record(frame, ts=i, iface=0), le)
            row = Row(pos, KIND_PACKET, link, pos + 28, len(frame), _code(frame, link))
        elif how == "epb_undescribed":
            block = synth.pcapng_epb(synth.Record(frame, ts=i, iface=2 + i % 3), le)
            row = Row(pos, KIND_OTHER, -1, pos + 28, len(frame), 0)
        elif how in ("opb", "opb_undescribed"):
            iface = 0 if how == "opb" else 5
            body = struct.pack(o + "HHIIII", iface, 0, 0, i, len(frame), len(frame)) + frame
            block = synth.pcapng_block(PCAPNG_OPB, body, le)
            row = Row(pos, KIND_OTHER, link if iface == 0 else -1, pos + 28, len(frame), 0)
        else:  # simple packet block: interface 0's link type; the frame is what it holds
            held = frame if how == "spb" else frame[: max(0, len(frame) - 1 - i % 7)]
            block = synth.pcapng_block(PCAPNG_SPB, struct.pack(o + "I", len(frame)) + held, le)
            caplen = min(len(frame), len(block) - 16)
            row = Row(pos, KIND_OTHER, link, pos + 12, caplen, 0)
        blocks.append(block)
        held = frame[: row.caplen] if how != "spb_cut_short" else held
        rows.append(replace(row, written=frame, held=held))
        pos += len(block)
    return b"".join(blocks), rows


def _pcap(r: random.Random, link: int, le: bool) -> tuple[bytes, list[Row]]:
    frames = _frames(r, link, 40)
    data = synth.pcap_bytes(
        [synth.Record(f, ts=i) for i, f in enumerate(frames)], link, little_endian=le
    )
    rows, pos = [], 24
    for f in frames:
        rows.append(Row(pos, KIND_PACKET, link, pos + 16, len(f), _code(f, link), f, f))
        pos += 16 + len(f)
    return data, rows


def _table(path: str) -> list[Row]:
    """The packet rows the index kernel fills, as the engine's analysis pass sees them."""
    rows: list[Row] = []

    def collect(buf: object, rec: np.ndarray, n: int) -> None:
        for i in range(n):
            if rec[i, F_KIND] <= KIND_OTHER_PACKET:
                rows.append(Row(*(int(rec[i, f]) for f in (F_START, F_KIND, F_LINK, F_DATA,
                                                            F_CAPLEN, F_CAT))))  # fmt: skip

    fd = os.open(path, os.O_RDONLY)
    try:
        process(path, fd, None, on_window=collect)  # mapped: offsets are the file's own
    finally:
        os.close(fd)
    return rows


@pytest.mark.parametrize("le", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("link", randframes.ALL_LINKS)
def test_every_packet_row_locates_its_frame_in_every_kind_of_block(tmp_path, link, fmt, le):  # type: ignore[no-untyped-def]
    r = random.Random(link * 4 + (fmt == "pcapng") * 2 + le)
    data, expected = (_pcapng if fmt == "pcapng" else _pcap)(r, link, le)
    f = tmp_path / f"t.{fmt}"
    f.write_bytes(data)
    got = _table(str(f))
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        how = STORAGE[i % len(STORAGE)] if fmt == "pcapng" else "record"
        assert g.table_fields() == e.table_fields(), f"packet {i + 1} ({how}): {g} != {e}"
        assert data[g.data : g.data + len(e.held)] == e.held
    if link in naive.SLICED:  # the frames that must be cut reached every kind of block
        kinds = STORAGE if fmt == "pcapng" else ("record",)
        for k, how in enumerate(kinds):
            written = [e.written for j, e in enumerate(expected) if j % len(kinds) == k]
            assert any(naive.decide(fr, link).category for fr in written), how


@pytest.mark.parametrize("link", [1, 113, 276, 101, 0])
def test_flow_rows_read_each_frame_where_the_table_says(tmp_path, link):  # type: ignore[no-untyped-def]
    """The flow kernel's keys for packets of every kind of block equal the twin's reading of
    the very frames the blocks hold."""
    r = random.Random(900 + link)
    data, expected = _pcapng(r, link, le=link % 2 == 0)
    f = tmp_path / "k.pcapng"
    f.write_bytes(data)
    rows, stats = packet_table(f)
    assert len(rows) == len(expected) == stats.in_pkts
    from test_flows import _key_of_row

    for i, (row, e) in enumerate(zip(rows, expected)):
        if e.link < 0:
            continue  # no link type: no key
        frame = data[e.data : e.data + e.caplen]
        how = STORAGE[i % len(STORAGE)]
        assert _key_of_row(row) == naive.flow_key(frame, e.link), f"packet {i + 1} ({how})"
