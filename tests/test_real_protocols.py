"""SPEC §9 on real traffic: the captures in fixtures/captures/, made by real programs
(wireguard-go, OpenVPN, Samba, OpenSSL, aiortc, ffmpeg, aioquic, aiosmtpd, Dovecot,
PostgreSQL; ESP by scapy's IPsec from real captured packets) with the scripts beside them,
slimmed under the forensic rules and read back by tshark.

For every capture: each frame tshark calls encrypted data is cut (into the protocol's
category), each handshake, control and cleartext frame comes out byte for byte the same, what
tshark reads of the handshakes reads the same after, the slim copy is what the naive twin makes,
and tshark finds no bad checksum in it and no packet kept whole malformed.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import naive
import pytest
from capfile import Rec, read_records
from naive_forensic import Forensic

from pcapslim import slim_file
from pcapslim.kernelset import KernelSet
from pcapslim.stats import SlimStats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import capture_smb_dtls  # noqa: E402
import capture_starttls_esp  # noqa: E402
import capture_vpn  # noqa: E402
import capture_webrtc_quic  # noqa: E402
from netcap import CAPTURES, Truth  # noqa: E402

# slow: left out of the JIT-off pass, whose kernels the differential tests cover
pytestmark = [pytest.mark.dissector, pytest.mark.slow, pytest.mark.usefixtures("kernels")]

TRUTHS: list[Truth] = [
    *capture_vpn.TRUTHS,
    *capture_smb_dtls.TRUTHS,
    *capture_webrtc_quic.TRUTHS,
    *capture_starttls_esp.TRUTHS,
]
# cleartext made by real programs: nothing in them may be cut under the forensic rules
CLEARTEXT = ("smb_plain.pcap", "rtp_plain.pcap")
CHECKSUMS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
             "-o", "tcp.check_checksum:TRUE")  # fmt: skip


@functools.cache  # the originals are read for both kernel sets: once is enough
def tshark(path: Path, *args: str) -> list[str]:
    p = subprocess.run(["tshark", "-n", "-r", str(path), *args], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()  # (a slim copy's path is new for every test)


def frames_matching(path: Path, truth: Truth, display_filter: str) -> set[int]:
    decode = [a for d in truth.decode for a in ("-d", d)]
    out = tshark(path, *decode, "-Y", display_filter, "-T", "fields", "-e", "frame.number")
    return {int(line) for line in out if line.strip()}


def payload_len(rec: Rec) -> int:
    """The captured bytes after the TCP/UDP header (after the IP header for ESP), as the spec's
    own reading (tests/naive.py) finds them."""
    net = naive.network(rec.frame, rec.link)
    assert net is not None
    pay = net.esp if net.esp is not None else naive.payload_start(rec.frame, net)
    assert pay is not None
    return min(net.dgram_end, len(rec.frame)) - pay


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(file name, kernel set) -> (original, slim copy, its stats), made once per module."""
    cache: dict[tuple[str, str], tuple[Path, Path, SlimStats]] = {}

    def get(name: str, kernels: KernelSet) -> tuple[Path, Path, SlimStats]:
        kernel_set = kernels.kind
        if (name, kernel_set) not in cache:
            src = CAPTURES / name
            dst = tmp_path_factory.mktemp("real") / f"{kernel_set}-{name}"
            stats = slim_file(src, dst, rules="forensic")
            cache[name, kernel_set] = (src, dst, stats)
        return cache[name, kernel_set]

    return get


def test_every_capture_has_its_truth() -> None:
    """Each committed capture is described, and each description names a committed capture."""
    described = {t.file for t in TRUTHS}
    on_disk = {p.name for p in CAPTURES.glob("*.pcap")}
    assert described == on_disk
    for t in TRUTHS:
        assert (CAPTURES / t.file).stat().st_size < 400_000, t.file


@pytest.mark.parametrize("truth", TRUTHS, ids=[f"{t.file}-{t.category}" for t in TRUTHS])
def test_encrypted_frames_are_cut_and_the_rest_kept(truth, slimmed, kernels):  # type: ignore[no-untyped-def]
    src, dst, stats = slimmed(truth.file, kernels)
    encrypted = frames_matching(src, truth, truth.encrypted)
    clear = frames_matching(src, truth, truth.clear)
    assert clear and not encrypted & clear
    if truth.file in CLEARTEXT:
        assert not encrypted
    else:
        assert len(encrypted) >= 5, (truth.file, len(encrypted))
    before = read_records(src.read_bytes())
    after = read_records(dst.read_bytes())
    assert len(before) == len(after)
    cut = {i + 1 for i, (b, a) in enumerate(zip(before, after)) if b.frame != a.frame}
    # a payload of 24 bytes or fewer has nothing to cut (SPEC §1): such frames stay whole
    short = {n for n in encrypted if payload_len(before[n - 1]) <= 24}
    assert encrypted - short <= cut, sorted(encrypted - short - cut)[:10]
    assert not short & cut
    assert not cut & clear, sorted(cut & clear)[:10]
    for n in encrypted - short:  # cut: shorter, the same up to where the cut payload ends
        b, a = before[n - 1].frame, after[n - 1].frame
        assert len(a) < len(b) and a[-24:] == b[len(a) - 24 : len(a)]
        assert after[n - 1].orig_len == before[n - 1].orig_len
    # every frame cut in this file counts under one of its truths' categories
    categories = {t.category for t in TRUTHS if t.file == truth.file}
    assert stats.truncated == len(cut)
    assert stats.truncated_by[truth.category] >= len(encrypted - short)
    assert sum(stats.truncated_by[c] for c in categories) == len(cut)


@pytest.mark.parametrize("truth", TRUTHS, ids=[f"{t.file}-{t.category}" for t in TRUTHS])
def test_what_tshark_reads_of_the_handshakes_is_unchanged(truth, slimmed, kernels):  # type: ignore[no-untyped-def]
    src, dst, _ = slimmed(truth.file, kernels)
    decode = [a for d in truth.decode for a in ("-d", d)]
    fields = [a for f in truth.readable for a in ("-e", f)]
    before = tshark(src, *decode, "-T", "fields", *fields)
    after = tshark(dst, *decode, "-T", "fields", *fields)
    assert any(line.strip() for line in before), "the readable fields read nothing"
    assert before == after


@pytest.mark.parametrize("name", sorted({t.file for t in TRUTHS}))
def test_slim_copy_is_the_twins_and_checks(name, slimmed, kernels):  # type: ignore[no-untyped-def]
    src, dst, stats = slimmed(name, kernels)
    twin = naive.slim_bytes(src.read_bytes(), Forensic().decide)
    assert dst.read_bytes() == twin.data
    assert {k: v for k, v in stats.truncated_by.items() if v} == twin.categories

    # loopback captures hold the partial checksums of offload: a frame kept whole keeps its
    # checksum as it was; every cut frame's checksums are right. A cut frame may be malformed
    # to tshark where the protocol inside states a longer length (an SRTCP report cut to 24
    # bytes); a frame kept whole is malformed after only if it was before.
    def frames(path: Path, display_filter: str) -> set[int]:
        out = tshark(path, *CHECKSUMS, "-Y", display_filter, "-T", "fields", "-e", "frame.number")
        return {int(n) for n in out if n.strip()}

    bad = "ip.checksum.status == 0 or udp.checksum.status == 0 or tcp.checksum.status == 0"
    before, after = read_records(src.read_bytes()), read_records(dst.read_bytes())
    cut = {i + 1 for i, (b, a) in enumerate(zip(before, after)) if b.frame != a.frame}
    assert not frames(dst, bad) & cut
    assert frames(dst, bad) <= frames(src, bad)
    assert frames(dst, "_ws.malformed") - cut <= frames(src, "_ws.malformed")


def test_the_command_reports_the_new_categories(tmp_path, kernels):  # type: ignore[no-untyped-def]
    """The human line under the forensic rules names what cut, the JSON lists every category and
    the metrics count them: a real process on copies of the WireGuard and SMB 3 captures."""
    import json
    import shutil

    for name in ("wireguard.pcap", "smb3_encrypted.pcap"):
        shutil.copy(CAPTURES / name, tmp_path / name)
    expected = {}
    for t in TRUTHS:
        if t.file in ("wireguard.pcap", "smb3_encrypted.pcap"):
            expected[t.category] = len(frames_matching(CAPTURES / t.file, t, t.encrypted))
    metrics = tmp_path / "m.prom"
    cmd = [sys.executable, "-m", "pcapslim", "--dir", str(tmp_path), "--check-only",
           "--rules", "forensic", "--metrics-file", str(metrics)]  # fmt: skip
    human = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert human.returncode == 0, human.stderr
    lines = {line.split()[1]: line for line in human.stderr.splitlines() if line.startswith("ok ")}
    assert lines[str(tmp_path / "wireguard.pcap")].endswith(f" wireguard={expected['wireguard']}")
    assert lines[str(tmp_path / "smb3_encrypted.pcap")].endswith(f" smb3={expected['smb3']}")
    prom = metrics.read_text()
    for category, n in expected.items():
        assert f'pcapslim_packets_truncated_total{{category="{category}"}} {n}.0' in prom
    out = subprocess.run([*cmd[:-2], "--output", "json"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    files = {f["file"]: f for f in json.loads(out.stdout)["files"]}
    wg = files[str(tmp_path / "wireguard.pcap")]["truncated_by"]
    assert wg == {"tls": 0, "tls_other_port": 0, "ssh": 0, "quic": 0, "ipsec": 0,
                  "wireguard": expected["wireguard"], "openvpn": 0, "dtls": 0, "srtp": 0,
                  "smb3": 0}  # fmt: skip


def test_cleartext_corpus_loses_no_byte(tmp_path, kernels):  # type: ignore[no-untyped-def]
    """Cleartext made by real programs — plain SMB whose segments start with 17 03 03, plain
    RTP and RTCP, and the bundled sample's HTTP and DNS — comes out whole under the forensic
    rules (the default rules cut the SMB segments that start with 0x17, as §1 says)."""
    from support import SAMPLE

    for name in CLEARTEXT:
        out = tmp_path / name
        stats = slim_file(CAPTURES / name, out, rules="forensic")
        assert stats.truncated == 0 and out.read_bytes() == (CAPTURES / name).read_bytes()
    assert slim_file(CAPTURES / "smb_plain.pcap", tmp_path / "c", fsync=False).truncated > 0
    out = tmp_path / "sample.pcap"
    slim_file(SAMPLE, out, rules="forensic")
    clear = frames_matching(SAMPLE, Truth("", "", "", "", ()), "http or dns")
    before, after = read_records(SAMPLE.read_bytes()), read_records(out.read_bytes())
    assert len(clear) > 20
    assert all(before[n - 1].frame == after[n - 1].frame for n in clear)
