"""A plain reader of classic pcap and pcapng files for the tests (independent of pcapslim)."""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass
class Rec:
    header: bytes  # pcap record header, or the EPB fields before the packet data
    frame: bytes
    link: int
    ts: tuple[int, int]
    orig_len: int
    options: bytes = b""


def read_records(data: bytes) -> list[Rec]:
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", data[:4])
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            link = struct.unpack(order + "I", data[20:24])[0] & 0xFFFF
            out, pos = [], 24
            while pos + 16 <= len(data):
                s, f, incl, orig = struct.unpack(order + "IIII", data[pos : pos + 16])
                if pos + 16 + incl > len(data):
                    break
                out.append(
                    Rec(data[pos : pos + 16], data[pos + 16 : pos + 16 + incl], link, (s, f), orig)
                )
                pos += 16 + incl
            return out
    out, pos, order, links = [], 0, "<", []
    while pos + 12 <= len(data):
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        btype, blen = struct.unpack(order + "II", data[pos : pos + 8])
        if blen < 12 or pos + blen > len(data):
            break
        block = data[pos : pos + blen]
        if btype == 1:
            links.append(struct.unpack(order + "H", block[8:10])[0])
        elif btype == 6:
            iface, hi, lo, cap, orig = struct.unpack(order + "IIIII", block[8:28])
            if iface < len(links):
                opts = block[28 + cap + (-cap % 4) : -4]
                out.append(
                    Rec(block[8:28], block[28 : 28 + cap], links[iface], (hi, lo), orig, opts)
                )
        pos += blen
    return out


@dataclass
class Block:
    btype: int
    data: bytes  # the whole block
    little_endian: bool


def read_blocks(data: bytes) -> list[Block]:
    """Every complete block of a pcapng file, in order."""
    out, pos, order = [], 0, "<"
    while pos + 12 <= len(data):
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack(order + "II", data[pos : pos + 8])
        if blen < 12 or pos + blen > len(data):
            break
        out.append(Block(btype, data[pos : pos + blen], order == "<"))
        pos += blen
    return out


def record_starts(data: bytes) -> list[int]:
    """The byte offset of every complete record: classic pcap record headers, or pcapng
    blocks of every kind."""
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D):
            out, pos = [], 24
            while pos + 16 <= len(data):
                incl = struct.unpack(order + "I", data[pos + 8 : pos + 12])[0]
                if pos + 16 + incl > len(data):
                    break
                out.append(pos)
                pos += 16 + incl
            return out
    starts, pos = [], 0
    for b in read_blocks(data):
        starts.append(pos)
        pos += len(b.data)
    return starts
