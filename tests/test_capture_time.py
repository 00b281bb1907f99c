"""Slimming at capture time with the real capture tools, inside a network namespace this test
creates (fixtures/netcap.py: traffic on its loopback only, every process stopped by its PID,
the namespace deleted at the end): `tcpdump -U -w -`, `dumpcap -w -` (pcapng) and tcpdump
through `zstd`, each piped through `tee` (the full capture) into `pcap-slim -`, while real TLS,
SSH (paramiko), HTTP and DNS conversations run. The slim file is what slimming the full
capture gives, under both rule sets (pcapng section lengths -1)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capfile import read_records
from test_stream import unspecified_sections

from pcapslim import slim_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from netcap import Lab, self_signed  # noqa: E402

pytestmark = pytest.mark.slow  # real tools and traffic: the JIT-off pass leaves it out

TRAFFIC = r"""
import socket, ssl, sys, urllib.request
for _ in range(3):
    urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5).read()
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
for _ in range(2):
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=5)) as s:
        s.sendall(b"x" * 20000)
        got = 0
        while got < 20000:
            got += len(s.recv(65536))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(4):
    query = bytes([i, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]) + b"\x07example\x03com\x00\x00\x01\x00\x01"
    u.sendto(query, ("127.0.0.1", 53))
"""

SSH_TALK = r"""
import socket, threading, paramiko
key = paramiko.RSAKey.generate(1024)
class Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username): return "password"
    def check_auth_password(self, username, password): return paramiko.AUTH_SUCCESSFUL
    def check_channel_request(self, kind, chanid): return paramiko.OPEN_SUCCEEDED
    def check_channel_exec_request(self, channel, command): return True
srv = socket.create_server(("127.0.0.1", 22))
srv.settimeout(30)
def serve():
    conn, _ = srv.accept()
    t = paramiko.Transport(conn)
    t.add_server_key(key)
    t.start_server(server=Server())
    ch = t.accept(20)
    data = b""
    while len(data) < 30000:
        data += ch.recv(65536)
    ch.sendall(data)
    ch.send_exit_status(0)
    ch.close()
th = threading.Thread(target=serve, daemon=True)
th.start()
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", 22, username="sensor", password="x", look_for_keys=False,
               allow_agent=False, timeout=20)
ch = client.get_transport().open_session()
ch.exec_command("cat")
ch.sendall(b"y" * 30000)
got = b""
while len(got) < 30000:
    got += ch.recv(65536)
client.close()
th.join(10)
"""

TLS_ECHO = r"""
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + "/cert.pem", sys.argv[1] + "/key.pem")
srv = socket.create_server(("127.0.0.1", 443))
srv.settimeout(60)
for _ in range(2):
    conn, _ = srv.accept()
    with ctx.wrap_socket(conn, server_side=True) as s:
        got = 0
        while got < 20000:
            data = s.recv(65536)
            got += len(data)
            s.sendall(data)
"""


def _servers(lab: Lab, label: str, tmp: Path) -> str:
    """A namespace with an HTTP server on its loopback (and a certificate in tmp for the TLS
    servers each conversation starts)."""
    self_signed(tmp, "capture.pslim.test")
    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_text("cleartext page\n" * 200)
    ns = lab.ns(label)
    lab.start(ns, [sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1",
                   "--directory", str(tmp / "www")])  # fmt: skip
    lab.wait_port(ns, 8080)
    return ns


def _producer(kind: str, ns: str) -> list[str]:
    if kind == "dumpcap":
        return ["ip", "netns", "exec", ns, "dumpcap", "-q", "-i", "lo", "-w", "-"]
    return ["ip", "netns", "exec", ns, "tcpdump", "-i", "lo", "-U", "-n", "-s", "0",
            "--immediate-mode", "-Z", "root", "-w", "-"]  # fmt: skip


@pytest.mark.parametrize("rules", ["compatible", "forensic"])
@pytest.mark.parametrize("kind", ["tcpdump", "dumpcap", "tcpdump-zstd"])
def test_a_capture_tool_piped_into_pcap_slim(tmp_path, kind, rules):  # type: ignore[no-untyped-def]
    for tool in ("tcpdump", "dumpcap", "zstd", "tee", "ip"):
        assert shutil.which(tool), f"{tool} is needed (scripts/test installs it)"
    full, out = tmp_path / "full.cap", tmp_path / "slim.cap"
    with Lab() as lab:
        ns = _servers(lab, "cap", tmp_path)
        lab.start(ns, [sys.executable, "-c", TLS_ECHO, str(tmp_path)])
        lab.wait_port(ns, 443)
        chain = []
        log = open(tmp_path / "producer.log", "wb")  # noqa: SIM115
        cap = subprocess.Popen(_producer(kind.split("-")[0], ns), stdout=subprocess.PIPE,
                               stderr=log)  # fmt: skip
        log.close()
        chain.append(cap)
        upstream = cap.stdout
        if kind.endswith("zstd"):
            z = subprocess.Popen(["zstd", "-q", "-c"], stdin=upstream, stdout=subprocess.PIPE)
            chain.append(z)
            upstream = z.stdout
        tee = subprocess.Popen(["tee", str(full)], stdin=upstream, stdout=subprocess.PIPE)
        chain.append(tee)
        slim = subprocess.Popen([sys.executable, "-m", "pcapslim", "-", "--rules", rules, "-w",
                                 str(out)], stdin=tee.stdout, stderr=subprocess.PIPE)  # fmt: skip
        for p in chain:  # each pipe's read end now belongs to the next process alone
            if p.stdout is not None:
                p.stdout.close()
        try:
            deadline = time.monotonic() + 20  # the tool says it listens (tcpdump, dumpcap)
            while not any(w in (tmp_path / "producer.log").read_text() for w in (
                    "listening on", "Capturing on")):  # fmt: skip
                assert time.monotonic() < deadline, "the capture tool did not start"
                time.sleep(0.1)
            time.sleep(0.5)
            lab.sh(ns, f"{sys.executable} -c '{TRAFFIC}'", timeout=60)
            lab.sh(ns, f"{sys.executable} -c '{SSH_TALK}'", timeout=60)
            time.sleep(0.5)
        finally:
            cap.send_signal(signal.SIGINT)  # by its PID: the tool ends, the pipe closes
            for p in chain:
                p.wait(30)
            _, err = slim.communicate(timeout=60)
    assert slim.returncode == 0, err
    expected = tmp_path / "expected.cap"
    stats = slim_file(full, expected, rules=rules)  # a zstd file: slimmed to zstd
    if kind.endswith("zstd"):
        import zstandard

        expected.write_bytes(zstandard.ZstdDecompressor().stream_reader(
            expected.read_bytes()).read())  # fmt: skip
    want = expected.read_bytes()
    if kind == "dumpcap":
        want = unspecified_sections(want)
    assert stats.in_pkts > 50 and stats.truncated > 5
    cut = stats.truncated_by
    assert cut["tls"] > 0 and (cut["ssh"] > 0 or rules == "forensic"), cut  # TLS and SSH were on
    assert out.read_bytes() == want


def test_tcpdump_rotating_files_has_each_slimmed_once_as_it_closes(tmp_path):  # type: ignore[no-untyped-def]
    """`tcpdump -G 1 -w 'cap-%...' -z pcap-slim` on real traffic: every file tcpdump rotated
    away from is slimmed and marked (the forensic rules, from the environment), none twice; the
    file tcpdump still wrote when it stopped is left alone."""
    command = Path(sys.executable).parent / "pcap-slim"
    assert command.exists(), "the pcap-slim command is not installed beside this Python"
    captures = tmp_path / "pcap"
    captures.mkdir()
    with Lab() as lab:
        ns = _servers(lab, "rot", tmp_path)
        tcpdump = lab.start(ns, ["env", "PCAP_SLIM_RULES=forensic", "tcpdump", "-i", "lo", "-n",
                                 "-U", "-s", "0", "-Z", "root", "-G", "1", "-w",
                                 str(captures / "cap-%Y%m%d%H%M%S.pcap"), "-z", str(command)],
                            log=tmp_path / "tcpdump.log")  # fmt: skip
        deadline = time.monotonic() + 20
        while "listening on" not in (tmp_path / "tcpdump.log").read_text():
            assert time.monotonic() < deadline, "tcpdump did not start"
            time.sleep(0.1)
        for _ in range(4):  # a rotation happens at the first packet after each second
            lab.start(ns, [sys.executable, "-c", TLS_ECHO, str(tmp_path)])
            lab.wait_port(ns, 443)
            lab.sh(ns, f"{sys.executable} -c '{TRAFFIC}'", timeout=60)
            time.sleep(1.2)
        lab.stop(tcpdump, signal.SIGINT)
    files = sorted(captures.glob("cap-*.pcap"))
    rotated, last = files[:-1], files[-1]
    assert len(rotated) >= 3, files
    markers = captures / ".slim_markers"
    deadline = time.monotonic() + 60  # -z runs pcap-slim in the background of tcpdump
    while not all((markers / f.name).exists() for f in rotated):
        assert time.monotonic() < deadline, "a rotated file was not slimmed"
        time.sleep(0.2)
    assert not (markers / last.name).exists()
    assert all(len(r.frame) == r.orig_len for r in read_records(last.read_bytes()))  # untouched
    assert sorted(m.name for m in markers.iterdir()) == sorted(f.name for f in rotated)
    cut = 0
    for f in rotated:
        for r in read_records(f.read_bytes()):
            cut += len(r.frame) < r.orig_len  # a cut packet keeps its original length
    assert cut > 5
    again = subprocess.run([sys.executable, "-m", "pcapslim", *map(str, rotated), "--output",
                            "json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert {f["status"] for f in json.loads(again.stdout)["files"]} == {"skipped_marker"}
