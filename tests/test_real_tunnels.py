"""SPEC §10 on real traffic in real tunnels: pairs of captures in fixtures/captures/tunnels/
(fixtures/capture_vxlan.py: the kernel's VXLAN driver between network namespaces, captured on
the underlay and the overlay at once; fixtures/capture_tunnels.py: the kernel's GRE, gretap,
IP-in-IP and VXLAN drivers where it has them, scapy's headers around real captured packets for
the rest), where frame i of the inner file is exactly the byte suffix of frame i of the outer.

Under both rule sets: the slim outer copy, its outer headers taken off, is packet for packet the
slim inner copy (the same packets cut, the same bytes kept); tshark, with checksum validation
on, finds no bad checksum in a cut frame (every enclosing IPv4, UDP and GRE checksum fixed; a
zero UDP checksum over IPv4 left zero) and no frame malformed that was not before; the JSON
counts each packet inside its tunnels.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
from capfile import read_records

from pcapslim import slim_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import capture_tunnels  # noqa: E402
import capture_vxlan  # noqa: E402
from netcap import CAPTURES  # noqa: E402

# slow: left out of the JIT-off pass, whose kernels the differential tests cover
pytestmark = [pytest.mark.dissector, pytest.mark.slow, pytest.mark.usefixtures("kernels")]

PAIRS = [*capture_vxlan.PAIRS, *capture_tunnels.PAIRS]
CHECKSUMS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
             "-o", "tcp.check_checksum:TRUE")  # fmt: skip
BAD = ("ip.checksum.status == 0 or udp.checksum.status == 0 or tcp.checksum.status == 0 "
       "or gre.checksum.status == 0")  # fmt: skip


@functools.cache  # the originals are read for both kernel sets and rule sets: once is enough
def frames_matching(path: Path, display_filter: str, decode: tuple[str, ...] = ()) -> set[int]:
    hints = [a for d in decode for a in ("-d", d)]
    p = subprocess.run(["tshark", "-n", "-r", str(path), *CHECKSUMS, *hints, "-Y",
                        display_filter, "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {int(n) for n in p.stdout.split()}


def test_every_tunnel_capture_is_in_a_pair() -> None:
    named = {name for pair in PAIRS for name in pair}
    assert named == {f"tunnels/{p.name}" for p in (CAPTURES / "tunnels").glob("*.pcap")}


@pytest.mark.parametrize("rules", ["compatible", "forensic"])
@pytest.mark.parametrize("outer,inner", PAIRS, ids=[Path(o).stem for o, _ in PAIRS])
def test_outer_slims_as_its_inner_and_every_header_checks(tmp_path, outer, inner, rules):  # type: ignore[no-untyped-def]
    src_outer, src_inner = CAPTURES / outer, CAPTURES / inner
    out_outer, out_inner = tmp_path / "outer.pcap", tmp_path / "inner.pcap"
    stats = slim_file(src_outer, out_outer, rules=rules)
    slim_file(src_inner, out_inner, rules=rules)
    ob, oa = read_records(src_outer.read_bytes()), read_records(out_outer.read_bytes())
    ib, ia = read_records(src_inner.read_bytes()), read_records(out_inner.read_bytes())
    assert len(ob) == len(oa) == len(ib) == len(ia) > 20
    cut = set()
    for n, (o_b, o_a, i_b, i_a) in enumerate(zip(ob, oa, ib, ia), start=1):
        prefix = len(o_b.frame) - len(i_b.frame)
        assert prefix > 0 and o_b.frame[prefix:] == i_b.frame, f"frame {n} is no pair"
        assert (o_a.frame != o_b.frame) == (i_a.frame != i_b.frame), f"frame {n}"
        assert o_a.frame[prefix:] == i_a.frame, f"frame {n}"
        if o_a.frame != o_b.frame:
            cut.add(n)
            assert o_a.frame[:prefix] != o_b.frame[:prefix]  # the outer lengths changed
    assert cut, "nothing was cut inside the tunnel"
    hints = capture_tunnels.DECODE.get(outer, ())  # VXLAN on 8472: tshark needs to be told
    assert not frames_matching(out_outer, BAD, hints) & cut
    assert frames_matching(out_outer, BAD, hints) <= frames_matching(src_outer, BAD, hints)
    assert frames_matching(out_outer, "_ws.malformed", hints) <= (
        frames_matching(src_outer, "_ws.malformed", hints)
        | frames_matching(out_inner, "_ws.malformed")
    )
    # every outer frame is an encapsulation (its prefix above): all inside the outermost kind
    assert max(stats.tunnels.values()) == len(ob), stats.tunnels
    assert stats.truncated == len(cut)


def test_the_command_reports_what_it_found_inside_tunnels(tmp_path, kernels):  # type: ignore[no-untyped-def]
    """A real process: the JSON's `tunnels` lists every kind, and the human line names the
    kinds the packets were inside (VXLAN in GRE counts under both; ERSPAN under gre too)."""
    import json
    import shutil

    names = {"vxlan_underlay.pcap": {"vxlan"}, "nested2_vxlan_in_gre.pcap": {"vxlan", "gre"},
             "erspan3.pcap": {"gre", "erspan"}, "ipip_6in4.pcap": {"ipip"}}  # fmt: skip
    for name in names:
        shutil.copy(CAPTURES / "tunnels" / name, tmp_path / name)
    cmd = [sys.executable, "-m", "pcapslim", "--dir", str(tmp_path), "--check-only"]
    doc = json.loads(subprocess.run([*cmd, "--output", "json"], capture_output=True, text=True,
                                    timeout=120, check=True).stdout)  # fmt: skip
    human = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stderr
    for f in doc["files"]:
        name = Path(f["file"]).name
        packets = len(read_records((CAPTURES / "tunnels" / name).read_bytes()))
        assert set(f["tunnels"]) == {"vxlan", "geneve", "gre", "erspan", "gtpu", "ipip"}
        inside = {k for k, v in f["tunnels"].items() if v}
        assert inside == names[name]
        assert all(f["tunnels"][k] == packets for k in inside), f
        line = next(x for x in human.splitlines() if x.startswith(f"ok {f['file']} "))
        assert line.endswith(" tunnels: " + " ".join(
            f"{k}={packets}" for k in ("vxlan", "geneve", "gre", "erspan", "gtpu", "ipip")
            if k in inside))  # fmt: skip


@pytest.mark.parametrize("rules", ["compatible", "forensic"])
def test_mutated_tunnel_headers_never_leave_a_header_wrong(tmp_path, rules, kernels):  # type: ignore[no-untyped-def]
    """Random tunnel stacks around random conversations, their tunnel headers mutated (ports,
    flags, versions, protocol types, lengths): whatever is cut, tshark (checksums validated)
    finds every header of it right, and no cut frame malformed that was not before."""
    import random

    import flowgen
    import tunnelgen

    from pcapslim import synth

    r = random.Random(2310)
    frames = []
    for i, pkt in enumerate(flowgen.capture_packets(2310, 40, 80, more_flows=20)):
        f = synth.eth_ip(tunnelgen.wrap(r, pkt, i))
        for _ in range(r.choice((0, 1, 1, 2))):
            f = tunnelgen.mutate_tunnel_header(r, f, 1)
        frames.append(f)
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)]))
    stats = slim_file(src, dst, rules=rules)
    before, after = read_records(src.read_bytes()), read_records(dst.read_bytes())
    cut = {n for n, (b, a) in enumerate(zip(before, after), start=1) if b.frame != a.frame}
    assert len(cut) > 50 and stats.truncated == len(cut)
    assert not frames_matching(dst, BAD) & cut
    # tshark also takes a datagram *from* port 4789, 8472 or 6081 for VXLAN or Geneve; §10
    # reads the destination port only: such a datagram to 443 is QUIC and cut as such, and
    # tshark, reading on as VXLAN, calls the 24 bytes kept malformed
    by_source = frames_matching(src, "udp.srcport#1 in {4789, 8472, 6081} and "
                                "not udp.dstport#1 in {4789, 8472, 6081}")  # fmt: skip
    malformed = frames_matching(dst, "_ws.malformed") & cut - by_source
    assert malformed <= frames_matching(src, "_ws.malformed")
