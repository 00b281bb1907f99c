"""Hostile input: mutated and random captures against the naive twin.

For every input either both implementations reject it (pcapslim with a PcapslimError, nothing
written) or pcapslim writes exactly what the twin writes: every kept packet byte identical,
every cut packet cut and patched as SPEC §2 says. Hypothesis drives the mutations; the
profile `campaign` (HYPOTHESIS_PROFILE=campaign, see tests/fuzz_campaign.sh) runs the long one.
"""

from __future__ import annotations

import os
import random
import struct

import naive
import pytest
import randframes
from engine_io import slim_with_engine
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pcapslim import PcapslimError, synth

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(  # the long campaign: generate only, report a failure unshrunk
    "campaign",
    max_examples=2000,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _base_capture(seed: int, kind: str) -> bytes:
    r = random.Random(seed)
    if kind == "pcap":
        link = r.choice(randframes.ALL_LINKS)
        recs = [synth.Record(randframes.frame(r, link), ts=i) for i in range(r.randrange(1, 40))]
        return synth.pcap_bytes(
            recs,
            link,
            little_endian=r.random() < 0.5,
            nanosecond=r.random() < 0.5,
            snaplen=r.choice((65535, 262144, 0)),
        )
    parts = []
    for _ in range(r.randrange(1, 3)):
        le = r.random() < 0.5
        links = [r.choice(randframes.ALL_LINKS) for _ in range(r.randrange(1, 3))]
        blocks = [
            synth.pcapng_shb(
                le,
                r.choice((-1, 100)),
                synth.pcapng_option(2, b"hw", le) if r.random() < 0.5 else b"",
            )
        ]
        blocks += [synth.pcapng_idb(lt, r.choice((0, 128, 262144)), le) for lt in links]
        for i in range(r.randrange(0, 30)):
            iface = r.randrange(len(links))
            opts = (
                synth.pcapng_option(1, r.randbytes(r.randrange(0, 9)), le)
                if r.random() < 0.3
                else b""
            )
            rec = synth.Record(randframes.frame(r, links[iface]), ts=i, iface=iface, options=opts)
            blocks.append(synth.pcapng_epb(rec, le))
            if r.random() < 0.05:
                blocks.append(synth.pcapng_block(r.choice((3, 4, 5, 0x0BAD)), r.randbytes(8), le))
        parts.append(b"".join(blocks))
    return b"".join(parts)


@st.composite
def hostile_captures(draw: st.DrawFn) -> bytes:
    data = bytearray(
        _base_capture(draw(st.integers(0, 2**32)), draw(st.sampled_from(["pcap", "pcapng"])))
    )
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "byte", "u32", "truncate", "insert", "delete", "link"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "u32" and at + 4 <= len(data):
            value = draw(
                st.sampled_from(
                    [
                        0,
                        1,
                        11,
                        12,
                        13,
                        16,
                        27,
                        28,
                        31,
                        32,
                        0xFFFF,
                        262144,
                        262145,
                        0x7FFFFFFF,
                        0xFFFFFFFF,
                    ]
                )
                | st.integers(0, 2**32 - 1)
            )
            data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "link" and len(data) >= 24:
            data[20:24] = struct.pack("<I", draw(st.integers(0, 300)))
    if draw(st.booleans()) and len(data) > 24:
        # hostile frames straight in: random bytes as packet data of a valid record
        frame = draw(st.binary(max_size=200))
        data += struct.pack("<IIII", 1, 2, len(frame), len(frame)) + frame
    return bytes(data)


def _slim(tmp_path, data: bytes, window: int, budget: int, use_mmap: bool) -> bytes:  # type: ignore[no-untyped-def]
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    slim_with_engine(src, dst, window_bytes=window, max_records=budget, use_mmap=use_mmap)
    return dst.read_bytes()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("fuzz")  # one directory; every example overwrites its files


@given(
    data=hostile_captures(),
    window=st.sampled_from([64, 1000, 1 << 20]),
    budget=st.sampled_from([1, 5, 1 << 14]),
    use_mmap=st.booleans(),
)
def test_hostile_captures_either_fail_cleanly_or_match_the_twin(
    fuzz_dir, data, window, budget, use_mmap
):  # type: ignore[no-untyped-def]
    tmp_path = fuzz_dir
    try:
        expected = naive.slim_bytes(data)
    except naive.NaiveError:
        expected = None
    try:
        out = _slim(tmp_path, data, window, budget, use_mmap)
    except PcapslimError as e:
        assert expected is None, f"pcapslim refused what the twin slims: {e}"
        return
    assert expected is not None, "pcapslim slimmed what the twin refuses"
    assert out == expected.data
