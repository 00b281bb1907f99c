"""Hostile input: structurally mutated captures against the naive twins.

Every input goes through the twin (tests/naive.py; tests/naive_forensic.py for the forensic
rules, with the same bounded table). Either both refuse it — and then pcapslim writes nothing:
`slim_file` leaves no output file, and an in-place run leaves the original byte for byte, with
no tmp and no marker — or pcapslim's output is byte-identical to the twin's and the statistics
are equal (packets, cuts per category, tail bytes, output size).

The mutator works on the structure, so that most inputs stay acceptable and compare packets:
record and block lengths, block types, options, sections and their byte orders, interface link
types and snaplens, link headers, IP, TCP and UDP fields, cut-short files; a few inputs get one
mutation that breaks the format (absurd captured lengths, bad block lengths, raw byte flips,
unknown magic). Hypothesis drives the draws; the profile `campaign` (HYPOTHESIS_PROFILE=campaign,
see tests/fuzz_campaign.sh) runs the long one. Per run the counts are printed and checked: at
least 90 % of the inputs accepted by the twin, at least 50,000 packets compared.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import flowgen
import naive
import pytest
import randframes
import tunnelgen
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from naive_forensic import Forensic
from support.engine_io import slim_with_engine

from pcapslim import PcapslimError, kernelset, slim_file, synth
from pcapslim import coordinator as co

settings.register_profile(
    "ci",
    max_examples=240,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(  # the long campaign: generate only, report a failure unshrunk
    "campaign",
    max_examples=2000,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MIN_ACCEPTED_SHARE = 0.90
MIN_PACKETS_COMPARED = 50_000
PORTS = (22, 80, 443, 500, 4500, 853, 8443, 53, 4433, 12345, 51820, 1194, 445)
FIRST_BYTES = (b"\x16\x03\x01", b"\x17\x03\x03", b"\x17\x03\x09", b"\x14", b"SSH-", b"\x00",
               # SPEC §9: WireGuard types, OpenVPN hard reset / data, DTLS records, SRTP, QUIC
               # long and short headers, an SMB header's first bytes
               b"\x01\x00\x00\x00", b"\x04\x00\x00\x00", b"\x38", b"\x48", b"\x17\xfe\xfd",
               b"\x16\xfe\xff", b"\x90", b"\xc0\x00\x00\x00\x01", b"\x41",
               b"\x00\x00\x00\x40\xfdSMB", b"\x00\x0e\x40")  # fmt: skip


# --- the model: captures as records and blocks ----------------------------------------------


@dataclass
class Packet:
    frame: bytes
    orig: int
    ts: int
    iface: int = 0
    options: bytes = b""  # pcapng only


@dataclass
class Block:  # any pcapng block that is not an enhanced packet block nor an interface
    btype: int
    body: bytes
    head: tuple[str, tuple[int, ...]] = ("", ())  # fields before the body, in the section's order


@dataclass
class Section:
    le: bool
    interfaces: list[tuple[int, int, bytes]]  # (link type, snaplen, options)
    items: list[Packet | Block]
    known_length: bool = False  # section length given, or -1
    options: bytes = b""


@dataclass
class Capture:
    pcapng: bool
    packets: list[Packet] = field(default_factory=list)  # classic pcap
    link: int = 1
    le: bool = True
    nanosecond: bool = False
    snaplen: int = 262144
    sections: list[Section] = field(default_factory=list)  # pcapng

    def all_packets(self) -> list[Packet]:
        if not self.pcapng:
            return self.packets
        return [p for s in self.sections for p in s.items if isinstance(p, Packet)]

    def link_of(self, p: Packet) -> int:
        if not self.pcapng:
            return self.link
        for s in self.sections:
            if any(x is p for x in s.items):
                return s.interfaces[p.iface][0] if p.iface < len(s.interfaces) else 1
        return 1

    def to_bytes(self) -> bytes:
        if not self.pcapng:
            recs = [synth.Record(p.frame, ts=p.ts, frac=7, orig_len=p.orig) for p in self.packets]
            return synth.pcap_bytes(
                recs, self.link, little_endian=self.le, nanosecond=self.nanosecond,
                snaplen=self.snaplen,
            )  # fmt: skip
        return b"".join(_section_bytes(s) for s in self.sections)


def _section_bytes(s: Section) -> bytes:
    blocks = [synth.pcapng_idb(link, snap, s.le, opts) for link, snap, opts in s.interfaces]
    for item in s.items:
        if isinstance(item, Packet):
            rec = synth.Record(item.frame, ts=item.ts, iface=item.iface, orig_len=item.orig,
                               options=item.options)  # fmt: skip
            blocks.append(synth.pcapng_epb(rec, s.le))
        else:
            fmt, values = item.head
            head = struct.pack(("<" if s.le else ">") + fmt, *values)
            blocks.append(synth.pcapng_block(item.btype, head + item.body, s.le))
    body = b"".join(blocks)
    return synth.pcapng_shb(s.le, len(body) if s.known_length else -1, s.options) + body


# --- base captures --------------------------------------------------------------------------


def _packets(r: random.Random, link: int, n: int, first_ts: int = 0) -> list[Packet]:
    """n random frames; in half of the captures, flows of the protocols of SPEC §9 (state to
    follow: handshakes, then data) among them."""
    flows = [flowgen.more_encrypted_flow(r, k) for k in range(r.randrange(0, 12))]
    if r.random() < 0.5:
        flows = []
    out = []
    tunnels = r.random() < 0.4  # and in some, packets inside tunnel stacks (SPEC §10)
    for i in range(n):
        queue = r.choice(flows) if flows and r.random() < 0.4 else None
        if queue or (tunnels and r.random() < 0.5):
            pkt = queue.pop(0) if queue else flowgen.udp_datagram(r, i)
            if tunnels and r.random() < 0.6:
                pkt = tunnelgen.wrap(r, pkt, i)
            f = randframes.link_frame(r, pkt, link, 0x0800 if pkt[0] >> 4 == 4 else 0x86DD)
            flows = [q for q in flows if q]
        else:
            f = randframes.frame(r, link)
        out.append(Packet(f, len(f) + r.choice((0, 0, 0, 100)), first_ts + i))
    return out


def base_capture(r: random.Random) -> Capture:
    if r.random() < 0.5:
        link = r.choice(randframes.ALL_LINKS)
        return Capture(
            False, _packets(r, link, r.randrange(100, 600)), link, r.random() < 0.5,
            r.random() < 0.5, r.choice((65535, 262144, 0)),
        )  # fmt: skip
    cap = Capture(True)
    for _ in range(r.randrange(1, 4)):
        links = [r.choice(randframes.ALL_LINKS) for _ in range(r.randrange(1, 4))]
        s = Section(r.random() < 0.5, [(lt, r.choice((0, 65535, 262144)), b"") for lt in links], [])
        for p in _packets(r, 1, r.randrange(30, 250)):
            p.iface = r.randrange(len(links))
            p.frame = randframes.frame(r, links[p.iface])
            p.orig = len(p.frame)
            s.items.append(p)
        cap.sections.append(s)
    return cap


# --- structural mutations: the file stays a capture -----------------------------------------


def _mutate_frame(r: random.Random, f: bytes, link: int) -> bytes:
    """Change one header field the decision reads, found with the twin's own parser (a tunnel
    header's, SPEC §10, when the frame holds tunnels: lengths, flags, versions, types)."""
    net = naive.network(f, link)
    if net is not None and net.tunnels and r.random() < 0.5:
        return tunnelgen.mutate_tunnel_header(r, f, link)
    b = bytearray(f)
    if net is None or r.random() < 0.15:  # the link header: EtherType, tags, family
        at = {1: 12, 113: 14, 276: 0}.get(link)
        if at is not None and at + 2 <= len(b):
            etype = r.choice((0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x0806))
            b[at : at + 2] = struct.pack("!H", etype)
        elif link in (0, 108) and len(b) >= 4:
            b[0:4] = struct.pack("<I", r.choice((2, 10, 24, 28, 30, 7)))
        return bytes(b)
    ip = net.ip
    pick = r.random()
    if net.version == 4 and pick < 0.3 and ip + 20 <= len(b):
        what = r.choice(("ihl", "total", "frag", "proto"))
        if what == "ihl":
            b[ip] = 0x40 | r.randrange(0, 16)
        elif what == "total":
            b[ip + 2 : ip + 4] = struct.pack("!H", r.randrange(0, len(b) - ip + 40))
        elif what == "frag":
            b[ip + 6 : ip + 8] = struct.pack("!H", r.choice((0, 0x4000, 0x2000, 0x0010)))
        else:
            b[ip + 9] = r.choice((6, 17, 1, 50, 132))
    elif net.version == 6 and pick < 0.3 and ip + 40 <= len(b):
        if r.random() < 0.5:
            b[ip + 4 : ip + 6] = struct.pack("!H", r.randrange(0, len(b) - ip))
        else:
            b[ip + 6] = r.choice((6, 17, 0, 43, 44, 60, 51, 50, 59))
    elif net.l4 is not None and pick < 0.6 and net.l4 + 4 <= len(b):
        l4 = net.l4
        b[l4 + r.choice((0, 2)) : l4 + r.choice((0, 2)) + 2] = struct.pack("!H", r.choice(PORTS))
        if net.proto == 6 and r.random() < 0.2 and l4 + 13 <= len(b):
            b[l4 + 12] = r.randrange(0, 16) << 4  # data offset
    else:
        pay = naive.payload_start(f, net)
        if pay is not None and pay < len(b):
            first = r.choice(FIRST_BYTES)
            b[pay : pay + len(first)] = first
    return bytes(b[: len(f)])


def _extra_block(r: random.Random, cap: Capture, s: Section) -> Block:
    kind = r.choice(("spb", "opb", "custom", "nrb", "isb", "unknown", "dsb"))
    if kind in ("spb", "opb"):
        link = s.interfaces[0][0] if s.interfaces else 1
        f = randframes.frame(r, link)
        if kind == "spb":
            return Block(3, f, ("I", (len(f),)))
        iface = r.randrange(len(s.interfaces) + 1)
        return Block(2, f + b"\0" * (-len(f) % 4), ("HHIIII", (iface, 0, 0, 1, len(f), len(f))))
    btype = {"custom": r.choice((0x00000BAD, 0x40000BAD)), "nrb": 4, "isb": 5, "dsb": 10,
             "unknown": r.choice((0x0000ABCD, 0x80001234, 0x7))}[kind]  # fmt: skip
    return Block(btype, r.randbytes(r.randrange(0, 80)))


def _options(r: random.Random, le: bool) -> bytes:
    opts = b"".join(
        synth.pcapng_option(
            r.choice((1, 2, 3, 9, 0x0BAD, 2988)), r.randbytes(r.randrange(0, 12)), le
        )
        for _ in range(r.randrange(1, 4))
    )
    return opts + (synth.pcapng_option(0, b"", le) if r.random() < 0.7 else b"")


def mutate(r: random.Random, cap: Capture) -> None:
    """One mutation that keeps the file a capture (the twin still takes it)."""
    packets = cap.all_packets()
    op = r.choice(("frame", "frame", "frame", "snap", "grow", "dup", "drop", "swap", "link",
                   "snaplen", "block", "options", "section", "order", "iface"))  # fmt: skip
    if op in ("frame", "snap", "grow") and packets:
        p = r.choice(packets)
        if op == "frame":
            p.frame = _mutate_frame(r, p.frame, cap.link_of(p))
        elif op == "snap":
            p.frame = p.frame[: r.randrange(0, len(p.frame) + 1)]
        else:
            p.frame += r.randbytes(r.randrange(1, 100))
    elif op in ("dup", "drop", "swap"):
        items = cap.packets if not cap.pcapng else r.choice(cap.sections).items
        if len(items) >= 2:
            i, j = r.randrange(len(items)), r.randrange(len(items))
            if op == "dup":
                items.insert(j, items[i])
            elif op == "drop":
                del items[i]
            else:
                items[i], items[j] = items[j], items[i]
    elif not cap.pcapng:
        if op == "link":
            cap.link = r.choice(randframes.ALL_LINKS + (r.randrange(0, 300),))
        elif op == "snaplen":
            cap.snaplen = r.choice((0, 64, 65535, 262144))
    else:
        s = r.choice(cap.sections)
        if op == "link" and s.interfaces:
            k = r.randrange(len(s.interfaces))
            s.interfaces[k] = (r.choice(randframes.ALL_LINKS), *s.interfaces[k][1:])
        elif op == "snaplen" and s.interfaces:
            k = r.randrange(len(s.interfaces))
            link, _, opts = s.interfaces[k]
            s.interfaces[k] = (link, r.choice((0, 64, 128, 262144)), opts)
        elif op == "block":
            s.items.insert(r.randrange(len(s.items) + 1), _extra_block(r, cap, s))
        elif op == "options":
            pkts = [p for p in s.items if isinstance(p, Packet)]
            if pkts and r.random() < 0.6:
                r.choice(pkts).options = _options(r, s.le)
            elif s.interfaces and r.random() < 0.5:
                k = r.randrange(len(s.interfaces))
                tsresol = synth.pcapng_option(9, bytes([r.choice((6, 9, 0x86))]), s.le)
                s.interfaces[k] = (*s.interfaces[k][:2], tsresol + _options(r, s.le))
            else:
                s.options = _options(r, s.le)
        elif op == "section" and len(s.items) > 2:  # split: the rest in a section of its own
            at = r.randrange(1, len(s.items))
            new = Section(r.random() < 0.5, list(s.interfaces), s.items[at:])
            del s.items[at:]
            cap.sections.insert(cap.sections.index(s) + 1, new)
        elif op == "order":
            s.le = not s.le
            s.known_length = not s.known_length
        elif op == "iface":
            pkts = [p for p in s.items if isinstance(p, Packet)]
            if pkts:
                r.choice(pkts).iface = r.randrange(len(s.interfaces) + 2)  # maybe undescribed


# --- mutations that break the format --------------------------------------------------------


def break_format(r: random.Random, data: bytes, cap: Capture) -> bytes:
    b = bytearray(data)
    pick = r.choice(("caplen", "blocklen", "flip", "magic"))
    if pick == "caplen" and not cap.pcapng and len(b) > 40:
        o = "<" if cap.le else ">"
        b[24 + 8 : 24 + 12] = struct.pack(o + "I", r.choice((262145, 0x7FFFFFFF, 0xFFFFFFFF)))
        if cap.snaplen > 262144:
            b[16:20] = struct.pack(o + "I", 65535)
    elif pick == "blocklen" and cap.pcapng and len(b) > 40:
        o = "<" if cap.sections[0].le else ">"
        b[4:8] = struct.pack(o + "I", r.choice((8, 30, 27, 0x7FFFFFFD)))
    elif pick == "magic":
        b[0:4] = r.randbytes(4)
    elif b:
        at = r.randrange(len(b))
        b[at] ^= 1 << r.randrange(8)
    return bytes(b)


@st.composite
def hostile_captures(draw: st.DrawFn) -> bytes:
    r = random.Random(draw(st.integers(0, 2**32)))
    cap = base_capture(r)
    for _ in range(draw(st.integers(0, 8))):
        mutate(r, cap)
    data = cap.to_bytes()
    # drawn from the seeded generator, not by Hypothesis (whose integers favour the bounds)
    if r.random() < 0.05:
        data = break_format(r, data, cap)
    if r.random() < 0.1 and len(data) > 1:  # killed while writing
        data = data[: len(data) - r.randrange(1, min(len(data), 300))]
    return data


# --- the test -------------------------------------------------------------------------------

TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One directory, every example overwrites its files; the counts are checked at the end."""
    yield tmp_path_factory.mktemp("fuzz")
    print(
        f"\nfuzz: {TALLY['inputs']} inputs, {TALLY['accepted']} accepted by the twin "
        f"({TALLY['accepted'] / max(TALLY['inputs'], 1):.1%}), {TALLY['rejected']} refused by "
        f"both; {TALLY['packets']} packets and {TALLY['cut']} cut packets compared; "
        f"{TALLY['forensic']} inputs with the forensic rules, {TALLY['aot']} on the compiled "
        f"kernels, {TALLY['compressed']} compressed"
    )
    if TALLY["inputs"] >= 200:  # a whole run (not one selected example)
        assert TALLY["accepted"] >= MIN_ACCEPTED_SHARE * TALLY["inputs"], TALLY
        assert TALLY["packets"] >= MIN_PACKETS_COMPARED, TALLY


def _refused_input_writes_nothing(tmp_path: Path, data: bytes) -> None:
    src, dst = tmp_path / "refused.pcap", tmp_path / "refused.out"
    src.write_bytes(data)
    with pytest.raises(PcapslimError):
        slim_file(src, dst)
    assert not dst.exists()
    result = co.slim_in_place(src, co.Job())
    assert result.status == co.STATUS_FAIL and result.error
    assert src.read_bytes() == data
    assert not co.tmp_path(src).exists() and not co.marker_path(src).exists()


def _compress(data: bytes, codec: str | None) -> bytes:
    if codec == "gzip":
        from zlib_ng import gzip_ng

        return bytes(gzip_ng.compress(data, 1))
    if codec == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=1).compress(data))
    return data


def _decompress(data: bytes, codec: str | None) -> bytes:
    if codec == "gzip":
        from zlib_ng import gzip_ng

        return bytes(gzip_ng.decompress(data))
    if codec == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


@given(
    data=hostile_captures(),
    codec=st.sampled_from([None] * 8 + ["gzip", "zstd"]),  # one in five inputs compressed
    window=st.sampled_from([64, 1000, 1 << 20]),
    budget=st.sampled_from([1, 5, 1 << 14]),
    use_mmap=st.booleans(),
    kernels=st.sampled_from([kernelset.AOT, kernelset.JIT]),
    rules=st.sampled_from(["compatible", "forensic", "forensic-small-table"]),
)
def test_hostile_captures_either_fail_cleanly_or_match_the_twin(
    fuzz_dir, data, codec, window, budget, use_mmap, kernels, rules
):  # type: ignore[no-untyped-def]
    slots, probes = (64, 4) if rules == "forensic-small-table" else (1 << 18, 16)
    twin = Forensic(slots, probes).decide if rules != "compatible" else None
    TALLY["inputs"] += 1
    TALLY[kernels] += 1
    TALLY["forensic"] += rules != "compatible"
    TALLY["compressed"] += codec is not None
    try:
        expected = naive.slim_bytes(data, twin)
    except naive.NaiveError:
        expected = None
    saved = os.environ.get(kernelset.ENV)
    os.environ[kernelset.ENV] = kernels
    try:
        if expected is None:
            TALLY["rejected"] += 1
            _refused_input_writes_nothing(fuzz_dir, _compress(data, codec))
            return
        src, dst = fuzz_dir / "in", fuzz_dir / "out"
        src.write_bytes(_compress(data, codec))
        try:
            stats = slim_with_engine(
                src, dst, window_bytes=window, max_records=budget, use_mmap=use_mmap,
                rules="compatible" if twin is None else "forensic", flow_slots=slots,
                flow_probes=probes,
            )  # fmt: skip
        except PcapslimError as e:
            raise AssertionError(f"pcapslim refused what the twin slims: {e}") from e
        assert _decompress(dst.read_bytes(), codec) == expected.data
        assert stats.in_pkts == expected.packets
        assert {k: v for k, v in stats.truncated_by.items() if v} == expected.categories
        assert stats.tail_bytes == expected.tail
        assert stats.out_bytes_uncompressed == len(expected.data)
        assert stats.out_bytes == dst.stat().st_size
        TALLY["accepted"] += 1
        TALLY["packets"] += expected.packets
        TALLY["cut"] += sum(expected.categories.values())
    finally:
        if saved is None:
            os.environ.pop(kernelset.ENV, None)
        else:
            os.environ[kernelset.ENV] = saved
