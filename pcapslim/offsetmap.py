"""Where every record went: old byte offsets to new ones (`--offset-map`).

Indexers store byte offsets into capture files: Arkime keeps, for every session, the position
of each of its packets in the file (`packetPos`). Slimming moves every record after the first cut
packet to a smaller offset, so an index made before slimming points into the wrong bytes. The map
written beside the marker (`.slim_markers/NAME.offsets`) says, for every record, where it is now,
and `remap` turns a list of old offsets into new ones.

The map holds the breakpoints where the cumulative shift changes: a record that starts at old
offset `x` is now at `x - shift`, where `shift` belongs to the last breakpoint at or before `x`
(0 before the first). Only record starts (a pcap record header, a pcapng block) are mapped: a
cut record keeps its start, but the bytes it lost have no new place.

File format (little-endian): the 16 bytes `PCAPSLIM-OFFSETS`, a uint32 version (1), then a zlib
stream of int64 pairs, one per breakpoint in file order: the old offset and the shift, each as
the difference from the previous breakpoint's (the first from 0).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import IO, TYPE_CHECKING

import numpy as np

from .errors import OffsetMapError

if TYPE_CHECKING:
    import numpy.typing as npt

MAGIC = b"PCAPSLIM-OFFSETS"
VERSION = 1
HEADER = MAGIC + struct.pack("<I", VERSION)
SUFFIX = ".offsets"


class OffsetMapWriter:
    """Fed each window's record starts, old and new, in file order; streams the breakpoints
    compressed into `out` (memory stays bounded by one window)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._z = zlib.compressobj(6)
        self._shift = 0  # the shift of the last record seen
        self._last = (0, 0)  # the last breakpoint (old offset, shift)
        self.breakpoints = 0
        out.write(HEADER)

    def add(self, old: npt.NDArray[np.int64], new: npt.NDArray[np.int64]) -> None:
        if old.shape[0] == 0:
            return
        shift = old - new
        before = np.empty_like(shift)
        before[0] = self._shift
        before[1:] = shift[:-1]
        at = np.flatnonzero(shift != before)
        self._shift = int(shift[-1])
        if at.size == 0:
            return
        points = np.empty((at.size, 2), dtype="<i8")
        points[:, 0] = old[at]
        points[:, 1] = shift[at]
        deltas = points.copy()
        deltas[1:] -= points[:-1]
        deltas[0] -= self._last
        self._last = (int(points[-1, 0]), int(points[-1, 1]))
        self.breakpoints += at.size
        self.out.write(self._z.compress(deltas.tobytes()))

    def finish(self) -> None:
        self.out.write(self._z.flush())


def load(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(breakpoint offsets, shifts) of a map file."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(HEADER):
        raise OffsetMapError(f"{os.fspath(path)}: not a pcapslim offset map (version {VERSION})")
    try:
        raw = zlib.decompress(data[len(HEADER) :])
    except zlib.error as e:
        raise OffsetMapError(f"{os.fspath(path)}: the offset map is damaged ({e})") from None
    if len(raw) % 16:
        raise OffsetMapError(f"{os.fspath(path)}: the offset map is cut short")
    points = np.cumsum(np.frombuffer(raw, dtype="<i8").reshape(-1, 2), axis=0)
    return points[:, 0].astype(np.int64), points[:, 1].astype(np.int64)


def remap(path: str | os.PathLike[str], old_offsets: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The new offsets of records that started at `old_offsets` (any order) before slimming."""
    breaks, shifts = load(path)
    x = np.asarray(old_offsets, dtype=np.int64)
    if breaks.size == 0:  # nothing was cut, nothing moved
        return x.copy()
    i = np.searchsorted(breaks, x, side="right") - 1
    return x - np.where(i >= 0, shifts[np.maximum(i, 0)], 0)


def map_path(marker: str | os.PathLike[str]) -> str:
    """Where the map of a capture lives: beside its marker."""
    return os.fspath(marker) + SUFFIX
