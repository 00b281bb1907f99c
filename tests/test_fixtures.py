"""The committed fixtures (fixtures/README.md): rebuilt identically, and slimmed by pcapslim to
exactly the expected outputs that the naive twin produced and the README checks by hand."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from capfile import read_records

from pcapslim import slim_file

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike

CASES = Path(__file__).parent.parent / "fixtures" / "cases"
MANIFEST = json.loads((CASES / "manifest.json").read_text())


def test_fixture_script_rebuilds_the_committed_files(tmp_path):  # type: ignore[no-untyped-def]
    script = Path(__file__).parent.parent / "fixtures" / "make_fixtures.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    committed = sorted(p.name for p in CASES.iterdir() if p.name != "README.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (CASES / name).read_bytes(), name


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_slims_to_its_expected_output(tmp_path, name):  # type: ignore[no-untyped-def]
    case = MANIFEST[name]
    src = CASES / case["file"]
    expected = CASES / case["file"].replace(".", ".expected.", 1)
    stats = slim_file(src, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == expected.read_bytes()
    assert stats.in_pkts == case["packets"]
    assert {k: v for k, v in stats.truncated_by.items() if v} == case["truncated_by"]
    assert stats.tail_bytes == case["tail_bytes"]
    assert (stats.in_bytes, stats.out_bytes) == (case["in_bytes"], case["out_bytes"])


def _out_frames(name: str) -> list[bytes]:
    return [r.frame for r in read_records((CASES / f"{name}.expected.pcap").read_bytes())]


def test_hand_checked_tls_cut():
    (frame,) = _out_frames("tls_appdata_443")
    # Ethernet 14 + IPv4 20 + TCP 20 + 24 payload bytes; IP total length 20 + 20 + 24
    assert len(frame) == 78
    assert struct.unpack("!H", frame[16:18])[0] == 64
    assert frame[54:59] == b"\x17\x03\x03\x00\x5f"


def test_hand_checked_udp_zero_checksum_is_written_as_ffff():
    (frame,) = _out_frames("udp_zero_checksum")
    udp = frame[34:42]
    assert struct.unpack("!HHHH", udp)[2:] == (32, 0xFFFF)


def test_hand_checked_trailer_is_not_payload():
    cut, kept = _out_frames("ethernet_trailer")
    assert len(cut) == 14 + 20 + 20 + 24 and b"\xaa" not in cut
    assert kept.endswith(b"\xbb" * 30)
