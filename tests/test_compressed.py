"""Compressed captures: gzip and zstd, slimmed in place in the same compression.

The expected bytes come from the naive twin on the decompressed capture; the compressed inputs
are made by the command-line tools (gzip, zstd) and by zstandard for what they do not make
(frames without a content size, several frames)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import naive
import pytest
import randframes
import zstandard
from capfile import read_records
from support import ROOT, SAMPLE
from support.cli import CLI
from test_differential import _pcapng_section

from pcapslim import analyze_file, slim_file, synth
from pcapslim import coordinator as co


def gzip_cli(data: bytes, members: int = 1) -> bytes:
    """gzip's own output; several members when asked (as `cat a.gz b.gz` makes)."""
    cuts = sorted({0, len(data), *(len(data) * k // members for k in range(1, members))})
    out = b""
    for a, b in zip(cuts, cuts[1:]):
        out += subprocess.run(["gzip", "-c", "-6"], input=data[a:b], capture_output=True,
                              check=True).stdout  # fmt: skip
    return out


def zstd_cli(data: bytes) -> bytes:
    """zstd's own output from a pipe: one frame, no content size, a checksum."""
    return subprocess.run(["zstd", "-q", "-c", "--check"], input=data, capture_output=True,
                          check=True).stdout  # fmt: skip


def zstd_frames(data: bytes, frames: int) -> bytes:
    """Several frames, alternately with and without a content size."""
    cuts = sorted({0, len(data), *(len(data) * k // frames for k in range(1, frames))})
    out = b""
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        cctx = zstandard.ZstdCompressor(level=3, write_content_size=i % 2 == 0,
                                        write_checksum=i % 3 != 1)  # fmt: skip
        out += cctx.compress(data[a:b])
    return out


def decompress(path: Path) -> bytes:
    tool = ["gzip", "-dc"] if path.name.endswith(".gz") else ["zstd", "-dqc"]
    return subprocess.run([*tool, str(path)], capture_output=True, check=True).stdout


def codec_check(path: Path) -> None:
    tool = ["gzip", "-t"] if path.name.endswith(".gz") else ["zstd", "-tq"]
    subprocess.run([*tool, str(path)], check=True, capture_output=True)


WAYS = {
    "gzip": lambda d: gzip_cli(d),
    "gzip-3-members": lambda d: gzip_cli(d, 3),
    "zstd": zstd_cli,
    "zstd-4-frames": lambda d: zstd_frames(d, 4),
}


def _captures() -> list[tuple[str, bytes]]:
    cases = [(p.stem, p.read_bytes()) for p in sorted((ROOT / "fixtures" / "cases").glob("*"))
             if p.suffix in (".pcap", ".pcapng") and ".expected" not in p.name]  # fmt: skip
    for seed in range(3):
        r = random.Random(300 + seed)
        link = r.choice(randframes.ALL_LINKS)
        recs = [synth.Record(randframes.frame(r, link), ts=i) for i in range(1500)]
        cases.append((f"random{seed}", synth.pcap_bytes(recs, link, little_endian=seed != 1)))
        ng = b"".join(_pcapng_section(r, []) for _ in range(r.randrange(1, 4)))
        cases.append((f"random{seed}-ng", ng))
    cases.append(("sample", SAMPLE.read_bytes()))
    return cases


@pytest.mark.parametrize("way", sorted(WAYS))
def test_decompressed_slim_of_compressed_equals_slim_of_plain(tmp_path, way):  # type: ignore[no-untyped-def]
    """decompress(slim(compress(x))) == slim(x), by the twin, for every fixture and random
    captures in pcap and pcapng; check-only says what the plain file's check-only says."""
    suffix = ".gz" if way.startswith("gzip") else ".zst"
    done = refused = 0
    for name, data in _captures():
        try:
            expected = naive.slim_bytes(data)
        except naive.NaiveError:
            expected = None
        f = tmp_path / f"{name}.cap{suffix}"
        compressed = WAYS[way](data)
        f.write_bytes(compressed)
        if expected is None:  # a corrupt fixture: refused as the plain file is
            result = co.slim_in_place(f, co.Job())
            assert result.status == co.STATUS_FAIL and f.read_bytes() == compressed
            assert not co.tmp_path(f).exists()
            refused += 1
            continue
        plain = tmp_path / f"{name}.plain"
        plain.write_bytes(data)
        check, plain_check = analyze_file(f), analyze_file(plain)
        result = co.slim_in_place(f, co.Job())
        assert result.status == co.STATUS_OK, (name, result.error)
        assert decompress(f) == expected.data, name
        codec_check(f)
        same = ("in_pkts", "truncated", "truncated_by", "linktypes", "format", "tail_bytes")
        s = result.stats
        assert s is not None
        for key in same:
            assert getattr(check, key) == getattr(plain_check, key) == getattr(s, key), key
        assert (check.in_bytes, s.in_bytes) == (len(compressed), len(compressed))
        assert check.in_bytes_uncompressed == s.in_bytes_uncompressed == len(data)
        assert check.out_bytes_uncompressed == s.out_bytes_uncompressed == len(expected.data)
        assert check.out_bytes == s.out_bytes == f.stat().st_size
        assert check.compression == s.compression == ("gzip" if suffix == ".gz" else "zstd")
        done += 1
    print(f"{way}: {done} captures slimmed compressed, {refused} refused as their plain files")
    assert done >= 40


def test_a_pcapng_with_section_lengths_is_compressed_right(tmp_path):  # type: ignore[no-untyped-def]
    """A section length that must become -1 lies behind the compressed stream's end by the
    time it is known: the file is written again with it set (the plain file gets a patch)."""
    r = random.Random(5)
    recs = [synth.Record(randframes.frame(r, 1), ts=i) for i in range(400)]
    body = synth.pcapng_idb(1) + b"".join(synth.pcapng_epb(x) for x in recs)
    data = synth.pcapng_shb(section_len=len(body)) + body  # a specified section length
    expected = naive.slim_bytes(data).data
    assert expected[16:24] == b"\xff" * 8 and data[16:24] != b"\xff" * 8
    for way in ("gzip", "zstd"):
        f = tmp_path / f"s.pcapng.{way}"
        f.write_bytes(WAYS[way](data))
        assert co.slim_in_place(f, co.Job()).status == co.STATUS_OK
        assert decompress(f) == expected


def test_tshark_reads_the_slim_files_with_every_packet(tmp_path):  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes()
    for way in ("gzip", "zstd"):
        f = tmp_path / f"sample.pcap.{'gz' if way == 'gzip' else 'zst'}"
        f.write_bytes(WAYS[way](data))
        assert co.slim_in_place(f, co.Job()).status == co.STATUS_OK
        if way == "gzip":  # tshark reads gzip itself
            p = subprocess.run(["tshark", "-r", str(f)], capture_output=True, text=True,
                               timeout=120)  # fmt: skip
        else:  # through the decompressor
            p = subprocess.run(f"zstd -dqc {f} | tshark -r -", shell=True, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.splitlines()) == len(read_records(data)) == 2065


@pytest.mark.parametrize(
    "damage,words",
    [
        ("cut", "ends early"),
        ("checksum", "damaged"),
        ("not-a-capture", "what it holds is not a pcap or pcapng capture"),
        ("garbage-after", ""),
    ],
)
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_bad_compressed_files_fail_and_stay_untouched(tmp_path, codec, damage, words):  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes()
    blob = WAYS[codec](b"these are not the packets you are looking for " * 2000
                       if damage == "not-a-capture" else data)  # fmt: skip
    if damage == "cut":
        blob = blob[: len(blob) * 2 // 3]
    elif damage == "checksum":
        b = bytearray(blob)
        b[-6 if codec == "gzip" else -2] ^= 0x40  # the CRC32 / the frame checksum
        blob = bytes(b)
    elif damage == "garbage-after":
        blob += b"\x00garbage after the last frame"
    f = tmp_path / f"bad.pcap.{'gz' if codec == 'gzip' else 'zst'}"
    f.write_bytes(blob)
    p = subprocess.run([*CLI, "--dir", str(tmp_path), "--output", "json"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1, p.stderr
    (entry,) = json.loads(p.stdout)["files"]
    assert entry["status"] == "fail" and entry["error"].startswith(str(f))
    assert words in entry["error"] and "left untouched" in entry["error"], entry["error"]
    assert f.read_bytes() == blob
    assert not co.tmp_path(f).exists() and not co.marker_path(f).exists()


def test_a_decompression_bomb_is_refused(tmp_path):  # type: ignore[no-untyped-def]
    """A valid capture header, then 300 MB of zeros: 1,000 x past its compressed size."""
    head = synth.pcap_bytes([])
    cctx = zstandard.ZstdCompressor(level=19)
    bomb = cctx.compress(head + bytes(300_000_000))
    assert len(bomb) * 1000 < 300_000_000
    f = tmp_path / "bomb.pcap.zst"
    f.write_bytes(bomb)
    result = co.slim_in_place(f, co.Job())
    assert result.status == co.STATUS_FAIL
    assert "more than 1000 x" in (result.error or "") and f.read_bytes() == bomb
    assert not co.tmp_path(f).exists()


def test_dir_takes_compressed_names_and_keeps_the_naming_contract(tmp_path):  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes()
    names = {"a.pcap.gz": WAYS["gzip"], "b.pcap.zst": WAYS["zstd"],
             "c.pcapng.gz": WAYS["gzip"], "d.pcapng.zst": WAYS["zstd"]}  # fmt: skip
    ng = synth.pcapng_bytes([synth.Record(r.frame) for r in read_records(data)[:300]])
    for name, way in names.items():
        (tmp_path / name).write_bytes(way(ng if "pcapng" in name else data))
    (tmp_path / "e.pcap.bz2").write_bytes(b"not ours")
    dry = subprocess.run([*CLI, "--dir", str(tmp_path), "--dry-run", "--output", "json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sorted(json.loads(x)["file"] for x in dry.stdout.splitlines()) == [
        str(tmp_path / n) for n in sorted(names)
    ]
    p = subprocess.run([*CLI, "--dir", str(tmp_path), "--output", "json"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    files = {Path(e["file"]).name: e for e in json.loads(p.stdout)["files"]}
    assert set(files) == set(names)
    for name, e in files.items():
        assert e["compression"] == ("gzip" if name.endswith(".gz") else "zstd")
        slim_size = len(decompress(tmp_path / name))
        assert e["in_bytes_uncompressed"] > e["out_bytes_uncompressed"] == slim_size
        assert e["out_bytes"] == (tmp_path / name).stat().st_size
        assert (tmp_path / ".slim_markers" / name).is_file()
    # a stale tmp of the compressed naming is cleaned up, a fresh one means busy
    (tmp_path / "f.pcap.zst").write_bytes(WAYS["zstd"](data))
    (tmp_path / "f.pcap.zst.tmp").write_bytes(b"another worker")
    old = tmp_path / "g.pcap.gz.tmp"
    old.write_bytes(b"dead worker")
    os.utime(old, (time.time() - 600, time.time() - 600))
    again = subprocess.run([*CLI, "--dir", str(tmp_path), "--output", "json"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert [e["status"] for e in json.loads(again.stdout)["files"]] == ["skipped_busy"]
    assert not old.exists() and (tmp_path / "f.pcap.zst.tmp").exists()


def test_nothing_to_cut_leaves_the_compressed_file_as_it_is(tmp_path):  # type: ignore[no-untyped-def]
    plain = synth.eth_ip(synth.ipv4(synth.tcp(80, 5000, b"GET / HTTP/1.1\r\n" * 20), 6))
    f = tmp_path / "plain.pcap.zst"
    f.write_bytes(WAYS["zstd"](synth.pcap_bytes([synth.Record(plain)] * 50)))
    before = f.stat()
    assert co.slim_in_place(f, co.Job()).status == co.STATUS_OK
    after = f.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert co.marker_path(f).exists()


def test_the_library_writes_the_same_compression_at_the_level_asked(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "s.pcap.zst"
    src.write_bytes(WAYS["zstd"](SAMPLE.read_bytes()))
    sizes = {}
    for level in (1, 19):
        dst = tmp_path / f"out{level}.pcap.zst"
        stats = slim_file(src, dst, compress_level=level)
        assert decompress(dst) == naive.slim_bytes(SAMPLE.read_bytes()).data
        assert stats.out_bytes == dst.stat().st_size
        sizes[level] = stats.out_bytes
    assert sizes[19] < sizes[1]
    with pytest.raises(ValueError, match="levels run from 1 to 9"):
        g = tmp_path / "s.pcap.gz"
        g.write_bytes(WAYS["gzip"](SAMPLE.read_bytes()))
        slim_file(g, tmp_path / "x.gz", compress_level=12)


@pytest.mark.slow
def test_sigkill_on_compressed_files_leaves_the_original_or_the_complete_slim(tmp_path):  # type: ignore[no-untyped-def]
    from benches.gen_capture import generate

    plain = tmp_path / "src.pcap"
    generate(plain, 30, seed=4)
    r = random.Random(int(os.environ.get("PCAPSLIM_KILL_SEED", "12")))
    for way, suffix in (("zstd", ".zst"), ("gzip", ".gz")):
        orig = WAYS[way](plain.read_bytes())
        slim = naive.slim_bytes(plain.read_bytes()).data
        f = tmp_path / f"k.pcap{suffix}"
        states = []
        rate = f"{len(orig) * 1.5 / 2.0 / 1e6:.3f}"  # about two seconds a run: kills land in it
        for _ in range(5):
            f.write_bytes(orig)
            co.marker_path(f).unlink(missing_ok=True)
            p = subprocess.Popen([*CLI, "--single", str(f), "--max-io-mbps", rate],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(r.uniform(0.1, 3.0))
            p.kill()
            p.wait()
            if f.read_bytes() == orig:
                states.append("original")
            else:  # the complete slim copy, whole (the codec's own test) and exact
                codec_check(f)
                assert decompress(f) == slim, "a partial file after SIGKILL"
                states.append("slim")
            tmp = co.tmp_path(f)
            if tmp.exists():  # the next timer run comes after the stale rule's 5 minutes
                os.utime(tmp, (time.time() - 600, time.time() - 600))
            done = subprocess.run([*CLI, "--single", str(f)], capture_output=True, timeout=300)
            assert done.returncode == 0
            assert decompress(f) == slim and not tmp.exists()
        print(f"{way}: after SIGKILL {states}")


def _in_thread(fn):  # type: ignore[no-untyped-def]
    """fn() on a thread given 10 s: what it returned, or a failure when it never returns."""
    import threading

    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(fn()), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the follower never returned"
    return got[0]


def test_a_follower_waits_for_the_writer_and_stops_at_its_end(tmp_path):  # type: ignore[no-untyped-def]
    from pcapslim.compression import _Raw
    from pcapslim.follow import Growing

    path = tmp_path / "growing"
    path.write_bytes(b"")
    follow = Growing()
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = _Raw(fd, follow)

        def writer() -> None:
            time.sleep(0.2)
            with open(path, "ab") as f:
                f.write(b"late bytes")
            follow.grew(10)
            time.sleep(0.2)
            follow.done()

        import threading

        threading.Thread(target=writer, daemon=True).start()
        assert _in_thread(lambda: raw.read(64)) == b"late bytes"  # waited for them
        assert _in_thread(lambda: raw.read(64)) == b""  # the writer is done: the end
    finally:
        os.close(fd)


def test_a_file_that_shrank_under_the_follower_ends_the_read(tmp_path):  # type: ignore[no-untyped-def]
    """The writer said 100 bytes, then cut the file to 10 (as a restarted temporary is):
    the read past 10 finds nothing, re-reads once, and ends instead of spinning."""
    from pcapslim.compression import _Raw
    from pcapslim.follow import Growing
    from pcapslim.source import buffered_source

    path = tmp_path / "shrunk"
    path.write_bytes(bytes(100))
    follow = Growing()
    follow.grew(100)
    os.truncate(path, 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = _Raw(fd, follow)
        assert _in_thread(lambda: raw.read(64)) == bytes(10)
        assert _in_thread(lambda: raw.read(64)) == b""
        buf = bytearray(64)
        assert _in_thread(lambda: raw.readinto(buf)) == 0
        src = buffered_source(fd, 1 << 16, follow)
        buf_, _, lo, hi = _in_thread(lambda: src.window(0, 64))
        assert bytes(buf_[lo:hi]) == bytes(10) and src.at_end(10)
    finally:
        os.close(fd)
