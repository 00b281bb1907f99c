"""Forensic rules on real TLS 1.2 and 1.3 conversations (Python's ssl, a generated chain)."""

from __future__ import annotations

import ssl

import pytest
import tls_capture as tc
from capfile import read_records
from cryptography import x509

from pcapslim import slim_file, synth

pytestmark = pytest.mark.usefixtures("kernels")  # ahead-of-time and JIT kernels alike


@pytest.fixture(scope="module")
def chain(tmp_path_factory):  # type: ignore[no-untyped-def]
    return tc.make_chain(tmp_path_factory.mktemp("chain"))


def _slim(tmp_path, frames, rules):  # type: ignore[no-untyped-def]
    src = tmp_path / "conv.pcap"
    src.write_bytes(synth.pcap_bytes([synth.Record(f, ts=i) for i, (_, f) in enumerate(frames)]))
    stats = slim_file(src, tmp_path / f"{rules}.pcap", rules=rules)
    return stats, [r.frame for r in read_records((tmp_path / f"{rules}.pcap").read_bytes())]


def _server_segments(frames):  # type: ignore[no-untyped-def]
    """[(index, stream offset, length)] of the server's segments."""
    out, at = [], 0
    for i, (side, f) in enumerate(frames):
        if side == "server":
            n = len(f) - 54
            out.append((i, at, n))
            at += n
    return out


@pytest.mark.parametrize("port", [443, 8444])
def test_tls12_certificate_chain_survives_and_application_data_is_cut(tmp_path, chain, port):  # type: ignore[no-untyped-def]
    sent = tc.converse(chain, ssl.TLSVersion.TLSv1_2)
    frames = tc.tcp_frames(sent, port)
    server_stream = b"".join(d for side, d in sent if side == "server")
    recs = tc.records(server_stream)
    hs_end = max(end for t, _, end in recs if t != 0x17)
    segs = _server_segments(frames)
    assert sum(1 for _, off, n in segs if off < hs_end) >= 3  # the chain spans several segments
    stats, out = _slim(tmp_path, frames, "forensic")
    for i, off, n in segs:
        covers_handshake = any(t != 0x17 and s < off + n and off < e for t, s, e in recs)
        if covers_handshake:
            assert out[i] == frames[i][1], f"segment {i + 1} carries handshake bytes"
        else:
            assert len(out[i]) == 54 + 24, f"segment {i + 1} is application data only"
    # the certificate chain reads back from the slimmed capture
    kept = b"".join(out[i][54:] for i, off, n in segs if off < hs_end)
    assert kept[:hs_end] == server_stream[:hs_end]
    cert_msg = next(server_stream[s + 5 : e] for t, s, e in recs if t == 0x16 and
                    server_stream[s + 5] == 0x0B)  # fmt: skip
    body, certs, at = cert_msg[7:], [], 0
    while at < len(body):
        n = int.from_bytes(body[at : at + 3], "big")
        certs.append(x509.load_der_x509_certificate(body[at + 3 : at + 3 + n]))
        at += 3 + n
    names = [c.subject.rfc4514_string() for c in certs]
    assert names == ["CN=www.pcapslim.test", "CN=pcapslim test intermediate"]
    assert stats.truncated_by["tls" if port == 443 else "tls_other_port"] == stats.truncated > 10
    _, compat = _slim(tmp_path, frames, "compatible")
    lost_by_default = [i for i, off, n in segs if off < hs_end and compat[i] != frames[i][1]]
    missed_by_default = [i for i, off, n in segs if off >= hs_end and compat[i] == frames[i][1]]
    if port == 443:  # the default rules cut the chain's continuation segments
        assert len(lost_by_default) >= 2
    else:  # off the TLS ports they miss the application data not starting a record
        assert len(missed_by_default) >= 5
    print(
        f"port {port}: {len(segs)} server segments, {stats.truncated} cut by forensic rules; "
        f"default rules cut {len(lost_by_default)} handshake segments and miss "
        f"{len(missed_by_default)} application-data segments"
    )


def test_tls13_keeps_the_cleartext_handshake_and_cuts_the_encrypted_records(tmp_path, chain):  # type: ignore[no-untyped-def]
    sent = tc.converse(chain, ssl.TLSVersion.TLSv1_3)
    frames = tc.tcp_frames(sent, 443)
    stats, out = _slim(tmp_path, frames, "forensic")
    first_server = next(i for i, (side, _) in enumerate(frames) if side == "server")
    assert out[0] == frames[0][1]  # ClientHello, with the SNI
    assert out[first_server] == frames[first_server][1]  # ServerHello (and CCS)
    assert b"www.pcapslim.test" in out[0]
    assert stats.truncated > 10 and stats.truncated == stats.truncated_by["tls"]
