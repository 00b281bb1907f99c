"""Format detection: classic pcap (both magics, both byte orders) or pcapng."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import (
    PCAP_GLOBAL_HDR_LEN,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_SHB,
)
from .errors import UnknownFormatError

MIN_FILE_LEN = 24  # shorter files cannot be told apart and fail


@dataclass(frozen=True)
class CaptureFormat:
    """What the first bytes of a capture say about the rest of it."""

    name: str  # "pcap" or "pcapng"
    little_endian: bool  # classic pcap only: byte order of the headers
    nanosecond: bool  # classic pcap only
    snaplen: int  # classic pcap only
    linktype: int  # classic pcap only: low 16 bits of the link-type field
    header_len: int  # bytes copied verbatim before the first record (24 or 0)


def detect_format(head: bytes, path: str, codec: str | None = None) -> CaptureFormat:
    """Classify a capture by its first 24 bytes (of what a compressed file holds, with
    `codec`); raise UnknownFormatError otherwise."""
    holds = f"a {codec} file, but what it holds " if codec else ""
    if len(head) < MIN_FILE_LEN:
        raise UnknownFormatError(
            f"{path}: {holds}{len(head)} bytes is too short to be a pcap or pcapng capture "
            f"(at least {MIN_FILE_LEN} are needed); the file was left untouched"
        )
    for order, le in (("<", True), (">", False)):
        (magic,) = struct.unpack(order + "I", head[:4])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            snaplen, link = struct.unpack(order + "II", head[16:PCAP_GLOBAL_HDR_LEN])
            return CaptureFormat(
                name="pcap",
                little_endian=le,
                nanosecond=magic == PCAP_MAGIC_NS,
                snaplen=snaplen,
                linktype=link & 0xFFFF,
                header_len=PCAP_GLOBAL_HDR_LEN,
            )
    if struct.unpack("<I", head[:4])[0] == PCAPNG_SHB:
        return CaptureFormat("pcapng", True, False, 0, -1, 0)
    if codec:
        raise UnknownFormatError(
            f"{path}: a {codec} file, but what it holds is not a pcap or pcapng capture (magic "
            f"{head[:4].hex()}); the file was left untouched"
        )
    raise UnknownFormatError(
        f"{path}: unknown file format (magic {head[:4].hex()}); only classic pcap and pcapng "
        "captures (also gzip- or zstd-compressed) are slimmed, and the file was left untouched"
    )
