"""Real QUIC and SSH conversations made in-process (aioquic, paramiko) and hand-built IKE
messages, framed into UDP/TCP packets."""

from __future__ import annotations

import socket
import struct
import threading

from pcapslim import synth

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"


def udp_frame(side: str, payload: bytes, port: int, peer_port: int = 50123) -> bytes:
    src, dst = (CLIENT, SERVER) if side == "client" else (SERVER, CLIENT)
    sport, dport = (peer_port, port) if side == "client" else (port, peer_port)
    return synth.eth_ip(synth.ipv4(synth.udp(sport, dport, payload), 17, src, dst))


def quic_conversation(cert_file: str, key_file: str, sni: str) -> list[tuple[str, bytes]]:
    """Datagrams of a QUIC v1 handshake and some stream data: [(side, datagram)]."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    now = 1000.0
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=sni)
    ccfg.verify_mode = 0  # ssl.CERT_NONE: the test chain is not the point here
    scfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    scfg.load_cert_chain(cert_file, key_file)
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    client = QuicConnection(configuration=ccfg)
    client.connect(("10.0.0.2", 443), now=now)
    first = client.datagrams_to_send(now=now)
    dcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
    server = QuicConnection(configuration=scfg, original_destination_connection_id=dcid)
    sent: list[tuple[str, bytes]] = []
    for data, _ in first:
        sent.append(("client", data))
        server.receive_datagram(data, ("10.0.0.1", 50123), now=now)
    server_addr, client_addr = ("10.0.0.2", 443), ("10.0.0.1", 50123)
    for step in range(40):
        moved = False
        for side, conn, peer, addr in (("client", client, server, client_addr),
                                       ("server", server, client, server_addr)):  # fmt: skip
            for data, _ in conn.datagrams_to_send(now=now):
                sent.append((side, data))
                peer.receive_datagram(data, addr, now=now)
                moved = True
        if step == 6:
            sid = client.get_next_available_stream_id()
            client.send_stream_data(sid, b"GET /" + b"x" * 3000, end_stream=True)
        now += 0.01
        if not moved and step > 8:
            break
    return sent


def _recv_at_least(chan, n: int) -> bytes:  # type: ignore[no-untyped-def]
    """Read from a paramiko channel until n bytes came or it closed."""
    data = b""
    while len(data) < n:
        chunk = chan.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ssh_conversation(port_label: str = "ssh") -> list[tuple[str, bytes]]:
    """Bytes of a paramiko SSH session (key exchange, password login, a channel with data),
    recorded per direction in the order they crossed: [(side, bytes)]."""
    import paramiko

    a_client, a_relay = socket.socketpair()
    b_relay, b_server = socket.socketpair()
    sent: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def relay(src: socket.socket, dst: socket.socket, side: str) -> None:
        banner = True  # the version line goes in a segment of its own, as OpenSSH sends it
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            with lock:
                end = data.find(b"\r\n") + 2 if banner else 0
                if banner and 2 <= end < len(data):  # a loaded machine joined it to KEXINIT
                    sent.append((side, data[:end]))
                    sent.append((side, data[end:]))
                else:
                    sent.append((side, data))
                banner = banner and end < 2
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threads = [
        threading.Thread(target=relay, args=(a_relay, b_relay, "client"), daemon=True),
        threading.Thread(target=relay, args=(b_relay, a_relay, "server"), daemon=True),
    ]
    for t in threads:
        t.start()
    host_key = paramiko.RSAKey.generate(2048)
    received = []

    class Server(paramiko.ServerInterface):
        def check_auth_password(self, username, password):  # type: ignore[no-untyped-def]
            return paramiko.AUTH_SUCCESSFUL if password == "secret" else paramiko.AUTH_FAILED

        def get_allowed_auths(self, username):  # type: ignore[no-untyped-def]
            return "password"

        def check_channel_request(self, kind, chanid):  # type: ignore[no-untyped-def]
            return paramiko.OPEN_SUCCEEDED

    server_t = paramiko.Transport(b_server)
    server_t.add_server_key(host_key)

    def serve() -> None:
        server_t.start_server(server=Server())
        chan = server_t.accept(20)
        if chan is not None:
            received.append(_recv_at_least(chan, 20000))
            chan.sendall(b"ok" * 5000)
            chan.close()

    st = threading.Thread(target=serve, daemon=True)
    st.start()
    client_t = paramiko.Transport(a_client)
    client_t.connect(username="sensor", password="secret")
    chan = client_t.open_session()
    chan.sendall(b"d" * 20000)
    got = _recv_at_least(chan, 10000)
    st.join(20)
    client_t.close()
    server_t.close()
    for t in threads:
        t.join(5)
    for sock in (a_client, a_relay, b_relay, b_server):
        sock.close()
    assert received and received[0] == b"d" * 20000 and got == b"ok" * 5000
    return sent


def tcp_frames(
    sent: list[tuple[str, bytes]], server_port: int, mss: int = 1448
) -> list[tuple[str, bytes]]:
    seq = {"client": 7000, "server": 3_000_000}
    ports = {"client": (51000, server_port), "server": (server_port, 51000)}
    addrs = {"client": (CLIENT, SERVER), "server": (SERVER, CLIENT)}
    frames = []
    for side, data in sent:
        for off in range(0, len(data), mss):
            seg = data[off : off + mss]
            tcp = synth.tcp(*ports[side], seg, seq=seq[side])
            frames.append((side, synth.eth_ip(synth.ipv4(tcp, 6, *addrs[side]))))
            seq[side] += len(seg)
    return frames


def ike_v2(exchange: int, msg_id: int, payload: bytes, responder: bool = False) -> bytes:
    """An IKEv2 message: header (RFC 7296 §3.1) and the given payload chain (first: SA = 33)."""
    flags = 0x20 if responder else 0x08
    spi_r = b"\x22" * 8 if responder or exchange != 34 else bytes(8)
    body = payload
    hdr = (
        b"\x11" * 8
        + spi_r
        + bytes([33, 0x20, exchange, flags])
        + struct.pack("!II", msg_id, 28 + len(body))
    )
    return hdr + body


def ike_v1(exchange: int, flags: int, payload: bytes) -> bytes:
    """An IKEv1 (ISAKMP) message: exchange 2 is Identity Protection (main mode); flag 0x01 says
    the payloads are encrypted."""
    hdr = b"\x33" * 8 + bytes(8) + bytes([1, 0x10, exchange, flags])
    return hdr + struct.pack("!II", 0, 28 + len(payload)) + payload


def ike_sa_payload() -> bytes:
    """An SA payload with one proposal of four transforms (AES-CBC-256, SHA2-256 PRF and
    integrity, DH group 14), then no next payload."""
    transforms = b""
    specs = [(1, 12, struct.pack("!HH", 0x800E, 256)), (2, 5, b""), (3, 12, b""), (4, 14, b"")]
    for i, (ttype, tid, attr) in enumerate(specs):
        last = 0 if i == len(specs) - 1 else 3
        transforms += struct.pack("!BBHBBH", last, 0, 8 + len(attr), ttype, 0, tid) + attr
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(transforms), 1, 1, 0, len(specs)) + transforms
    return struct.pack("!BBH", 0, 0, 4 + len(proposal)) + proposal
