"""Dissector-level checks with tshark: what an analyst reads from a capture (TLS SNI, cipher
suites and certificate subjects, the QUIC Initial SNI, SSH KEXINIT algorithm lists, IKE_SA_INIT
proposals, cleartext HTTP and DNS) reads the same after forensic slimming.

These run where tshark is installed (`apt-get install tshark`): CI sets
PCAPSLIM_DISSECTOR_TESTS=1 after installing it (see tests/conftest.py).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import proto_capture as pc
import pytest
import tls_capture as tc
from support import SAMPLE

from pcapslim import slim_file, synth

pytestmark = pytest.mark.dissector


def tshark(
    path: Path, display_filter: str, *fields: str, decode: tuple[str, ...] = ()
) -> list[str]:
    assert shutil.which("tshark"), "tshark is needed: apt-get install tshark"
    cmd = ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for d in decode:
        cmd += ["-d", d]
    for f in fields:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [line for line in p.stdout.splitlines() if line.strip()]


def slimmed(tmp_path: Path, name: str, frames: list[tuple[str, bytes]]) -> dict[str, Path]:
    src = tmp_path / f"{name}.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, (_, f) in enumerate(frames)]))
    out = {"original": src}
    for rules in ("compatible", "forensic"):
        out[rules] = tmp_path / f"{name}.{rules}.pcap"
        slim_file(src, out[rules], rules=rules)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):  # type: ignore[no-untyped-def]
    return tc.make_chain(tmp_path_factory.mktemp("chain"))


TLS_FIELDS = ("tls.handshake.extensions_server_name", "tls.handshake.ciphersuite",
              "x509sat.uTF8String")  # fmt: skip


@pytest.mark.parametrize("port", [443, 8444])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_handshake_reads_the_same(tmp_path, chain, port, version):  # type: ignore[no-untyped-def]
    files = slimmed(tmp_path, "tls", tc.tcp_frames(tc.converse(chain, version), port))
    decode = (f"tcp.port=={port},tls",)
    read = {k: tshark(p, "tls.handshake", *TLS_FIELDS, decode=decode) for k, p in files.items()}
    assert read["forensic"] == read["original"]
    assert any("www.pcapslim.test" in line for line in read["original"])
    if version == ssl.TLSVersion.TLSv1_2:
        assert any("pcapslim test intermediate" in line for line in read["forensic"])
        if port == 443:  # the default rules lose the certificate chain
            assert read["compatible"] != read["original"]


def test_quic_initial_sni_reads_the_same(tmp_path, chain):  # type: ignore[no-untyped-def]
    sent = pc.quic_conversation(str(chain.chain_file), str(chain.key_file), "www.pcapslim.test")
    files = slimmed(tmp_path, "quic", [(s, pc.udp_frame(s, d, 443)) for s, d in sent])
    sni = {k: tshark(p, "tls.handshake.extensions_server_name",
                     "tls.handshake.extensions_server_name") for k, p in files.items()}  # fmt: skip
    assert sni["original"] == ["www.pcapslim.test"]
    assert sni["forensic"] == sni["original"]
    assert sni["compatible"] == []  # the default rules cut every QUIC datagram


@pytest.mark.parametrize("port", [22, 2222])
def test_ssh_kexinit_reads_the_same(tmp_path, port):  # type: ignore[no-untyped-def]
    files = slimmed(tmp_path, "ssh", pc.tcp_frames(pc.ssh_conversation(), port))
    fields = (
        "ssh.kex_algorithms",
        "ssh.server_host_key_algorithms",
        "ssh.encryption_algorithms_client_to_server",
        "ssh.mac_algorithms_client_to_server",
    )
    decode = (f"tcp.port=={port},ssh",)
    read = {k: tshark(p, "ssh.kex_algorithms", *fields, decode=decode) for k, p in files.items()}
    assert len(read["original"]) == 2  # both sides' KEXINIT
    assert read["forensic"] == read["original"]
    if port == 22:
        assert read["compatible"] == []


def test_ike_sa_init_proposals_read_the_same(tmp_path):  # type: ignore[no-untyped-def]
    sa = pc.ike_sa_payload()
    msgs = [
        ("client", pc.ike_v2(34, 0, sa), 500),
        ("server", pc.ike_v2(34, 0, sa, responder=True), 500),
        ("client", pc.ike_v2(35, 1, bytes(200)), 4500),  # IKE_AUTH: encrypted
        ("server", b"\0\0\0\0" + pc.ike_v2(35, 1, bytes(180), responder=True), 4500),
        ("client", b"\x12\x34\x56\x78" + bytes(120), 4500),  # ESP in UDP
    ]
    frames = [(s, pc.udp_frame(s, p, port, peer_port=port)) for s, p, port in msgs]
    files = slimmed(tmp_path, "ike", frames)
    fields = (
        "isakmp.exchangetype",
        "isakmp.prop.number",
        "isakmp.tf.type",
        "isakmp.tf.id.encr",
        "isakmp.tf.id.integ",
        "isakmp.tf.id.dh",
    )
    read = {k: tshark(p, "isakmp.exchangetype == 34", *fields) for k, p in files.items()}
    assert len(read["original"]) == 2 and read["forensic"] == read["original"]
    assert read["compatible"] == []
    from pcapslim import analyze_file

    assert analyze_file(files["original"], rules="forensic").truncated_by["ipsec"] == 3


def test_ikev1_main_mode_kept_and_its_encrypted_messages_cut(tmp_path):  # type: ignore[no-untyped-def]
    clear = pc.ike_v1(2, 0x00, b"\0\0\0\x38" + bytes(52))  # SA payload header + body
    hidden = pc.ike_v1(2, 0x01, bytes(96))
    frames = [
        ("client", pc.udp_frame("client", clear, 500, peer_port=500)),
        ("server", pc.udp_frame("server", hidden, 500, peer_port=500)),
    ]
    files = slimmed(tmp_path, "ikev1", frames)
    fields = ("isakmp.exchangetype", "isakmp.flags", "isakmp.length", "frame.cap_len")
    read = {k: tshark(p, "frame", *fields) for k, p in files.items()}
    assert read["forensic"][0] == read["original"][0]  # main mode in clear: whole
    assert read["forensic"][1] != read["original"][1]  # encrypted: cut to 24 bytes
    from pcapslim import analyze_file

    assert analyze_file(files["original"], rules="forensic").truncated_by["ipsec"] == 1
    assert analyze_file(files["original"]).truncated_by["ipsec"] == 2


def test_cleartext_http_and_dns_are_untouched(tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "s.forensic.pcap"
    slim_file(SAMPLE, out, rules="forensic")
    fields = (
        "frame.number",
        "frame.len",
        "frame.cap_len",
        "http.request.uri",
        "http.response.code",
        "http.file_data",
        "dns.qry.name",
        "dns.a",
    )
    original = tshark(SAMPLE, "http || dns", *fields)
    assert len(original) > 20
    assert tshark(out, "http || dns", *fields) == original
