"""The streaming filter, `pcap-slim -` and `pcap-slim IN -w OUT`, as real processes on real
pipes: the slim capture is the twin's (pcapng section lengths written -1), a packet comes out
while the input is still open, a killed producer's cut-short tail is kept, a stop ends on a
record boundary, a reader that goes away ends the run quietly, and what is not a capture writes
nothing."""

from __future__ import annotations

import gzip
import os
import select
import signal
import struct
import subprocess
import sys
import time

import naive
import pytest
from naive_forensic import Forensic
from support import SAMPLE

from pcapslim import synth

CMD = [sys.executable, "-m", "pcapslim"]


def stream(data: bytes, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run([*CMD, "-", *args], input=data, capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def pcapng_with_section_lengths() -> bytes:
    """Two sections whose headers give their real lengths, TLS records to cut in both."""
    recs = [synth.Record(synth.eth_ip(synth.ipv4(synth.tcp(50000, 443, b"\x17\x03\x03" + bytes(
        200), seq=1 + 203 * i), 6)), ts=i) for i in range(5)]  # fmt: skip
    out = b""
    for le in (True, False):
        body = synth.pcapng_bytes(recs, [1], little_endian=le)
        shb_len = struct.unpack("<I" if le else ">I", body[4:8])[0]
        section = len(body) - shb_len
        out += synth.pcapng_bytes(recs, [1], little_endian=le, section_len=section)
    return out


def unspecified_sections(data: bytes) -> bytes:
    """`data` with every pcapng section header's length set to -1."""
    b = bytearray(data)
    pos, order = 0, "<"
    while pos + 12 <= len(b):
        shb = b[pos : pos + 4] == b"\x0a\x0d\x0d\x0a"
        if shb:
            order = "<" if b[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            b[pos + 16 : pos + 24] = b"\xff" * 8
        pos += struct.unpack(order + "I", b[pos + 4 : pos + 8])[0]
    return bytes(b)


@pytest.mark.parametrize("rules", ["compatible", "forensic"])
@pytest.mark.parametrize("codec", [None, "gzip", "zstd"])
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_stdin_to_stdout_is_the_twins_slim_copy(kind, codec, rules):  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes() if kind == "pcap" else pcapng_with_section_lengths()
    raw = data
    if codec == "gzip":
        raw = gzip.compress(data)
    elif codec == "zstd":
        import zstandard

        raw = zstandard.ZstdCompressor(level=3).compress(data)
    p = stream(raw, "--rules", rules)
    assert p.returncode == 0, p.stderr
    twin = naive.slim_bytes(data, Forensic().decide if rules == "forensic" else None)
    expected = unspecified_sections(twin.data) if kind == "pcapng" else twin.data
    assert p.stdout == expected
    assert p.stderr.decode().startswith(f"ok - pkts={twin.packets} ")


def test_a_packet_comes_out_while_the_input_is_still_open():  # type: ignore[no-untyped-def]
    """As behind `tcpdump -U` on a quiet link: each record written is slimmed and written on
    before the next comes, the pipe still open."""
    payload = b"\x17\x03\x03" + bytes(300)
    frames = [synth.eth_ip(synth.ipv4(synth.tcp(50000, 443, payload, seq=1 + 303 * i), 6))
              for i in range(3)]  # fmt: skip
    whole = synth.pcap_bytes([synth.Record(f, ts=i) for i, f in enumerate(frames)])
    expected = naive.slim_bytes(whole).data
    header, rest = whole[:24], whole[24:]
    recs = [rest[i * (16 + len(frames[0])) : (i + 1) * (16 + len(frames[0]))] for i in range(3)]
    with subprocess.Popen([*CMD, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as p:  # fmt: skip
        assert p.stdin is not None and p.stdout is not None
        _feed_record_by_record(p, header, recs, expected)


def _feed_record_by_record(p, header, recs, expected):  # type: ignore[no-untyped-def]
    got = b""
    try:
        p.stdin.write(header)
        p.stdin.flush()
        for i, r in enumerate(recs):
            p.stdin.write(r)
            p.stdin.flush()
            want = len(expected) - (2 - i) * (len(expected) - 24) // 3
            deadline = time.monotonic() + 30
            while len(got) < want and time.monotonic() < deadline:
                if select.select([p.stdout], [], [], 1)[0]:
                    got += os.read(p.stdout.fileno(), 65536)
            assert got == expected[:want], f"record {i} did not come out with the input open"
        p.stdin.close()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_killed_producers_tail_is_kept_and_a_stop_ends_on_a_record_boundary():  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes()
    cut = data[: len(data) - 37]  # the capture process died inside a record
    p = stream(cut)
    assert p.returncode == 0 and p.stdout == naive.slim_bytes(cut).data
    assert naive.slim_bytes(cut).tail > 0
    # SIGTERM with half a record in the pipe: the whole records before it, and an exit 0
    first = 24 + 16 + struct.unpack("<I", data[32:36])[0]
    with subprocess.Popen([*CMD, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(data[: first + 10])
        proc.stdin.flush()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # the input still open
        out = proc.stdout.read()
        proc.stdin.close()
    assert out == naive.slim_bytes(data[:first]).data


def test_a_reader_that_goes_away_ends_the_run_quietly():  # type: ignore[no-untyped-def]
    sample = SAMPLE.read_bytes()
    data = sample[:24] + sample[24:] * 20  # 44 MB: far more than a pipe holds
    shell = f"{sys.executable} -m pcapslim - | head -c 100 > /dev/null"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", shell], input=data, capture_output=True,
                       timeout=120)  # fmt: skip
    assert b"Traceback" not in p.stderr and p.returncode == 0, p.stderr


@pytest.mark.parametrize("junk", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3, bytes(100)])
def test_what_is_not_a_capture_writes_nothing_and_fails(junk):  # type: ignore[no-untyped-def]
    p = stream(junk)
    assert p.returncode == 1 and p.stdout == b""
    assert b"FAIL -:" in p.stderr and b"Traceback" not in p.stderr


@pytest.mark.parametrize("suffix", [".pcap", ".pcap.gz", ".pcap.zst"])
def test_write_to_a_file_from_stdin_and_from_a_file(tmp_path, suffix):  # type: ignore[no-untyped-def]
    out = tmp_path / f"slim{suffix}"
    p = stream(SAMPLE.read_bytes(), "-w", str(out), "--output", "json")
    assert p.returncode == 0, p.stderr
    expected = naive.slim_bytes(SAMPLE.read_bytes()).data
    if suffix.endswith(".gz"):
        got = gzip.decompress(out.read_bytes())
    elif suffix.endswith(".zst"):
        import zstandard

        got = zstandard.ZstdDecompressor().stream_reader(out.read_bytes()).read()
    else:
        got = out.read_bytes()
    assert got == expected and p.stdout == b""
    assert sorted(x.name for x in tmp_path.iterdir()) == [out.name]  # no tmp left
    copy = tmp_path / "copy.pcap"
    q = subprocess.run([*CMD, str(SAMPLE), "-w", str(copy)], capture_output=True, timeout=120)
    assert q.returncode == 0 and copy.read_bytes() == expected
    assert SAMPLE.exists()


def test_an_input_or_output_that_cannot_be_opened_fails_cleanly(tmp_path):  # type: ignore[no-untyped-def]
    missing = stream(SAMPLE.read_bytes(), "-w", str(tmp_path / "no" / "such" / "dir.pcap"))
    assert missing.returncode == 1 and missing.stdout == b""
    assert b"FAIL -:" in missing.stderr and b"Traceback" not in missing.stderr
    p = subprocess.run([*CMD, str(tmp_path / "gone.pcap"), "-w", str(tmp_path / "o.pcap")],
                       capture_output=True, timeout=60)  # fmt: skip
    assert p.returncode == 1 and b"No such file" in p.stderr and b"Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["-", "x.pcap"], ["a.pcap", "b.pcap", "-w", "o.pcap"],
                                  ["-", "--check-only"],
                                  ["--dir", ".", "-w", "o.pcap"]])  # fmt: skip
def test_stream_usage_errors(tmp_path, args):  # type: ignore[no-untyped-def]
    p = subprocess.run([*CMD, *args], capture_output=True, timeout=60, cwd=tmp_path, input=b"")
    assert p.returncode == 2 and p.stdout == b""
    assert list(tmp_path.iterdir()) == []


def test_memory_stays_bounded_whatever_the_streams_length(tmp_path):  # type: ignore[no-untyped-def]
    """150 MB through the pipe: the process's peak resident size (which would hold the stream
    if it were gathered) stays far below it (55 MiB measured on 1 GiB)."""
    sample = SAMPLE.read_bytes()
    src = tmp_path / "long.pcap"
    with open(src, "wb") as f:
        f.write(sample)
        for _ in range(70):
            f.write(sample[24:])
    assert src.stat().st_size > 150_000_000
    # measured by a small parent of its own: a child's peak counts the memory of the process
    # it was forked from (this one holds the test session)
    probe = ("import os, subprocess, sys\n"
             "with open(sys.argv[1], 'rb') as i, open(os.devnull, 'wb') as o:\n"
             "    p = subprocess.Popen([sys.executable, '-m', 'pcapslim', '-'], stdin=i, "
             "stdout=o, stderr=subprocess.DEVNULL)\n"
             "    _, status, usage = os.wait4(p.pid, 0)\n"
             "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", probe, str(src)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    rc, maxrss_kib = map(int, ran.stdout.split())
    assert rc == 0, ran.stderr
    assert maxrss_kib < 100 * 1024, maxrss_kib
