"""The prefetching stream source: windows filled ahead on a helper thread.

Checked against the bytes themselves under random window requests and random short reads:
every window holds exactly the capture bytes it says, a short window is only ever short once
at a place, the window before the current one stays intact until the engine is told (the
copy stage may still read it), errors arrive where they happened, and closing ends the
helper."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import naive
import numpy as np
import pytest
import randframes
import zstandard
from support.engine_io import slim_with_engine
from test_compressed import gzip_cli, zstd_frames

from pcapslim import synth
from pcapslim.engine import process
from pcapslim.source import PrefetchSource, open_source


class SmallSource(PrefetchSource):
    SEGMENT = 4096
    HEADROOM = 512


def _reader(data: bytes, r: random.Random, fail_at: int | None = None):  # type: ignore[no-untyped-def]
    """read_into over `data` giving random short counts; an OSError at `fail_at`."""

    def read_into(view: memoryview, offset: int) -> int:
        if fail_at is not None and offset >= fail_at:
            raise OSError(5, "the disk failed here")
        n = min(len(view), len(data) - offset, r.randint(1, 3000))
        if fail_at is not None:
            n = min(n, fail_at - offset)
        view[:n] = data[offset : offset + n]
        return n

    return read_into


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pcapslim-read" and t.is_alive()]


@pytest.mark.parametrize("seed", range(12))
def test_windows_hold_the_stream_under_random_requests(seed):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    data = r.randbytes(r.choice([0, 1, 100, 4096, 50_000, 300_000]))
    recycled: list[int] = []
    src = SmallSource(_reader(data, random.Random(seed + 1)), 4096, len(data))
    src.before_refill = lambda buf: recycled.append(id(buf))
    shown: list[tuple[np.ndarray, int, int, bytes]] = []  # windows handed out, in order
    pos, short_at, calls = 0, None, 0
    try:
        while not src.at_end(pos):
            calls += 1
            assert calls < 100_000
            want = r.choice([1, 24, 500, 4096, 9000, 20_000])
            buf, base, lo, hi = src.window(pos, want)
            assert lo == pos - base and lo <= hi <= buf.shape[0]
            got = bytes(buf[lo:hi])
            assert got == data[pos : pos + want][: hi - lo]
            if hi - lo < want and pos + hi - lo < len(data):  # short of what was asked
                assert short_at != (pos, want), "short twice at the same place"
                short_at = (pos, want)
            if not shown or shown[-1][0] is not buf:
                if len(shown) >= 2:  # the window before this one's predecessor may be reused
                    assert id(shown[-2][0]) in recycled or shown[-2][0] is buf
                shown.append((buf, base, lo, got))
            for old, _, old_lo, old_bytes in shown[-2:]:  # current and previous stay intact
                assert bytes(old[old_lo : old_lo + len(old_bytes)]) == old_bytes
            step = r.choice([0, 0, 1, hi - lo, max(0, hi - lo - r.randint(0, 600))])
            pos += min(step, hi - lo)
        assert pos == len(data)
    finally:
        src.close()
    assert not _helpers()


def test_a_record_larger_than_a_segment_comes_whole():  # type: ignore[no-untyped-def]
    data = random.Random(7).randbytes(40_000)
    src = SmallSource(_reader(data, random.Random(8)), 4096, len(data))
    try:
        buf, base, lo, hi = src.window(0, 100)
        assert bytes(buf[lo:hi]) == data[:100]
        buf, base, lo, hi = src.window(100, 30_000)  # asked twice at most, then whole
        if hi - lo < 30_000:
            buf, base, lo, hi = src.window(100, 30_000)
        assert bytes(buf[lo:hi]) == data[100:30_100]
        buf, base, lo, hi = src.window(30_100, 20_000)
        if hi - lo < 9_900:
            buf, base, lo, hi = src.window(30_100, 20_000)
        assert bytes(buf[lo:hi]) == data[30_100:] and src.at_end(40_000)
    finally:
        src.close()


def test_an_error_arrives_after_the_bytes_before_it():  # type: ignore[no-untyped-def]
    data = random.Random(3).randbytes(20_000)
    src = SmallSource(_reader(data, random.Random(4), fail_at=10_000), 4096, len(data))
    pos = 0
    try:
        with pytest.raises(OSError, match="the disk failed here"):
            while True:
                buf, base, lo, hi = src.window(pos, 1000)
                assert bytes(buf[lo:hi]) == data[pos : hi + base]
                pos = base + hi
        # the two whole segments before the failing one were handed out, to the last window
        # that fitted in them
        assert 8192 - 1000 < pos <= 8192
    finally:
        src.close()
    assert not _helpers()


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_closing_a_compressed_source_early_ends_its_helper(tmp_path, codec):  # type: ignore[no-untyped-def]
    data = random.Random(5).randbytes(16 << 20)  # more than the helper reads ahead
    raw = synth.pcap_bytes([synth.Record(data[i : i + 1400]) for i in range(0, len(data), 1400)])
    packed = gzip_cli(raw) if codec == "gzip" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"c.pcap.{codec}"
    path.write_bytes(packed)
    fd = os.open(path, os.O_RDONLY)
    try:
        src = open_source(fd, True, 1 << 16, str(path))
        buf, _, lo, hi = src.window(0, 24)
        assert bytes(buf[lo:hi]) == raw[:24]
        src.close()  # most of the file still unread
        assert not _helpers()
    finally:
        os.close(fd)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("window,budget", [(64, 1), (1000, 3), (4096, 7), (1 << 20, 1 << 16)])
def test_compressed_window_and_budget_never_change_the_output(tmp_path, codec, window, budget):  # type: ignore[no-untyped-def]
    r = random.Random(window + budget)
    recs = [synth.Record(randframes.frame(r, 1), ts=i) for i in range(300)]
    recs.append(synth.Record(bytes(14) + bytes(20_000)))  # larger than small windows
    data = synth.pcap_bytes(recs)
    expected = naive.slim_bytes(data)
    src: Path = tmp_path / f"a.pcap.{codec}"
    src.write_bytes(gzip_cli(data, 2) if codec == "gzip" else zstd_frames(data, 3))
    dst = tmp_path / "out"
    st = slim_with_engine(src, dst, window_bytes=window, max_records=budget)
    unpacked = (
        zstandard.ZstdDecompressor().stream_reader(dst.read_bytes(), read_across_frames=True).read()
        if codec == "zstd"  # fmt: skip
        else __import__("gzip").decompress(dst.read_bytes())
    )
    assert unpacked == expected.data
    assert st.in_pkts == expected.packets and st.tail_bytes == expected.tail


@pytest.mark.parametrize("spare_core", [True, False])
@pytest.mark.parametrize("window,budget", [(64, 1), (1000, 3), (4096, 7), (1 << 20, 1 << 16)])
def test_buffered_reads_ahead_or_not_never_change_the_output(tmp_path, spare_core, window, budget):  # type: ignore[no-untyped-def]
    """A plain file read without mapping: on a helper thread ahead of the index pass (a core to
    spare, a file of more than two segments) or in the pass's own thread; records across
    segments and one larger than a window, slimmed and only checked."""
    r = random.Random(window + budget)
    recs = [synth.Record(randframes.frame(r, 1), ts=i) for i in range(300)]
    recs.insert(150, synth.Record(bytes(14) + bytes(20_000)))  # larger than small windows
    data = synth.pcap_bytes(recs) + b"\x01" * 7  # and a tail cut inside a record header
    expected = naive.slim_bytes(data)
    src = tmp_path / "a.pcap"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:  # read ahead only with a core to spare, and a file of more than two segments
        with open_source(fd, False, window, spare_core=spare_core) as source:
            ahead = spare_core and len(data) > 2 * min(window, 4 << 20)
            assert isinstance(source, PrefetchSource) == ahead, (len(data), window)
    finally:
        os.close(fd)
    dst = tmp_path / "out"
    kw = dict(use_mmap=False, spare_core=spare_core, window_bytes=window, max_records=budget)
    st = slim_with_engine(src, dst, **kw)
    assert dst.read_bytes() == expected.data
    assert st.in_pkts == expected.packets and st.tail_bytes == expected.tail == 7
    fd = os.open(src, os.O_RDONLY)
    try:
        checked = process(str(src), fd, None, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    assert (checked.out_bytes, checked.truncated) == (len(expected.data), st.truncated)
    assert not _helpers()


def _mapped_rss(address: int) -> int:
    """Resident bytes of the mapping that holds `address` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the address")


def test_a_mapped_file_keeps_only_a_few_windows_resident(tmp_path):  # type: ignore[no-untyped-def]
    """Read window by window to the end of a 96 MiB file, the mapping holds no more than the
    window before the current one, the current one and the one mapped ahead: the pages behind
    are unmapped (still in the page cache), and reading them again gives the same bytes."""
    window = 4 << 20
    f = tmp_path / "big"
    data = np.random.default_rng(5).integers(0, 256, 96 << 20, dtype=np.uint8)
    f.write_bytes(data.tobytes())
    fd = os.open(f, os.O_RDONLY)
    try:
        with open_source(fd, True, window) as src:
            pos, peak = 0, 0
            while not src.at_end(pos):
                buf, base, start, end = src.window(pos, window)
                assert np.array_equal(buf[start:end], data[base + start : base + end])
                peak = max(peak, _mapped_rss(buf.ctypes.data))
                pos = base + end
            print(f"peak resident of the mapping: {peak / 2**20:.1f} MiB of 96 MiB")
            assert peak <= 3 * window + (1 << 20), peak
            buf, base, start, end = src.window(0, window)  # behind: mapped back in on reading
            assert np.array_equal(buf[:window], data[:window])
    finally:
        os.close(fd)
