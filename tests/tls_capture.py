"""Real TLS conversations made in-process (Python's ssl with memory BIOs) over a generated
certificate chain, and framed into TCP segments with correct sequence numbers."""

from __future__ import annotations

import datetime
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MSS = 1448
SUBJECTS = ("pcapslim test root", "pcapslim test intermediate", "www.pcapslim.test")


def _cert(name: str, key, issuer_name: str, issuer_key, ca: bool, sans: int = 0):  # type: ignore[no-untyped-def]
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
         .public_key(key.public_key()).serial_number(abs(hash(name)) + 1)
         .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
    if sans:
        names = [x509.DNSName(name)] + [x509.DNSName(f"host{i}.{name}") for i in range(sans)]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Chain:
    dir: Path
    ca_file: Path
    chain_file: Path
    key_file: Path


def make_chain(directory: Path) -> Chain:
    """Root, intermediate and a leaf with many names: the chain spans several segments."""
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
    root = _cert(SUBJECTS[0], keys[0], SUBJECTS[0], keys[0], True)
    inter = _cert(SUBJECTS[1], keys[1], SUBJECTS[0], keys[0], True)
    leaf = _cert(SUBJECTS[2], keys[2], SUBJECTS[1], keys[1], False, sans=150)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(root.public_bytes(pem))
    (directory / "chain.pem").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    (directory / "key.pem").write_bytes(keys[2].private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return Chain(directory, directory / "ca.pem", directory / "chain.pem", directory / "key.pem")


def converse(
    chain: Chain, version: ssl.TLSVersion, response: int = 20000
) -> list[tuple[str, bytes]]:
    """A full TLS conversation: [(side, bytes sent)] in the order the bytes were sent."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = server_ctx.maximum_version = version
    server_ctx.load_cert_chain(chain.chain_file, chain.key_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = client_ctx.maximum_version = version
    client_ctx.load_verify_locations(chain.ca_file)
    bios = {s: (ssl.MemoryBIO(), ssl.MemoryBIO()) for s in ("client", "server")}
    client = client_ctx.wrap_bio(*bios["client"], server_hostname=SUBJECTS[2])
    server = server_ctx.wrap_bio(*bios["server"], server_side=True)
    sent: list[tuple[str, bytes]] = []

    def pump() -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            data = bios[side][1].read()
            if data:
                sent.append((side, data))
                bios[peer][0].write(data)

    done = {"client": False, "server": False}
    for _ in range(50):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            pump()
        if all(done.values()):
            break
    client.write(b"GET / HTTP/1.1\r\nHost: www.pcapslim.test\r\n\r\n")
    pump()
    server.read(4096)
    server.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"s" * response)
    pump()
    client.read(response + 100)
    return sent


def tcp_frames(sent: list[tuple[str, bytes]], server_port: int) -> list[tuple[str, bytes]]:
    """(side, Ethernet frame) per segment of at most MSS bytes, sequence numbers counted."""
    from proto_capture import tcp_frames as frames

    return frames(sent, server_port, MSS)


def records(stream: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of each TLS record of a byte stream."""
    out, at = [], 0
    while at + 5 <= len(stream):
        n = int.from_bytes(stream[at + 3 : at + 5], "big")
        out.append((stream[at], at, at + 5 + n))
        at += 5 + n
    return out


def with_temp_chain():  # type: ignore[no-untyped-def]
    d = tempfile.mkdtemp(prefix="pcapslim-tls-")
    return make_chain(Path(d))
