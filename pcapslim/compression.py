"""Compressed captures: gzip and zstd, told by their magic bytes whatever the file's name.

Reading decompresses as a stream (several gzip members, several zstd frames, frames with or
without a content size) into the engine's windows; writing compresses the slim bytes as they
come, with the same codec. Nothing is ever decompressed whole, to memory or to disk.

Libraries, chosen by measurement on capture data (README, "Compressed captures"): zstandard
for zstd; zlib-ng (its gzip module) for gzip, the fastest at gzip's own levels 1-9 — 1.6 x the
standard library's decompression and 1.8 x its compression at level 6, same ratio.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .errors import CompressionError, PcapslimError, require_extra
from .follow import Growing

GZIP = "gzip"
ZSTD = "zstd"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = 0x184D2A50  # skippable frames: magic 0x184D2A50 to 0x184D2A5F (little-endian)
DEFAULT_LEVEL = {GZIP: 6, ZSTD: 3}  # each codec's usual default
LEVELS = {GZIP: (1, 9), ZSTD: (1, 19)}
CODEC_MODULES = {GZIP: "zlib_ng", ZSTD: "zstandard"}  # the libraries of the [compressed] extra
MAX_EXPANSION = 1000  # more decompressed bytes than this times the file's size: refused
ZSTD_MAX_WINDOW = 1 << 27  # 128 MiB: what a frame may ask the decoder to keep


def detect(head: bytes) -> str | None:
    """The codec of a file by its first bytes, or None for an uncompressed one."""
    if head[:2] == GZIP_MAGIC:
        return GZIP
    if head[:4] == ZSTD_MAGIC or (
        len(head) >= 4 and int.from_bytes(head[:4], "little") & ~0xF == ZSTD_SKIPPABLE
    ):
        return ZSTD
    return None


def require(codec: str) -> None:
    """Fail with what to install where the codec's library is missing."""
    require_extra(CODEC_MODULES[codec], "compressed", f"a {codec} capture")


class _Raw:
    """The compressed file as a file object over a borrowed descriptor, counting what it
    reads (progress and throttles go by bytes on disk); with `follow`, a file still being
    written, whose end is waited at."""

    def __init__(self, fd: int, follow: Growing | None = None) -> None:
        self.fd = fd
        self.pos = 0
        self.follow = follow

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = 1 << 20 if n is None or n < 0 else n

        def read() -> bytes:
            return os.pread(self.fd, size, self.pos)

        data = read() if self.follow is None else self.follow.read_at(read, self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        def read() -> int:
            return os.preadv(self.fd, [buf], self.pos)

        n = read() if self.follow is None else self.follow.read_at(read, self.pos)
        self.pos += n
        return n


class Decompressor:
    """readinto() gives the decompressed stream; `consumed` is how far into the file."""

    def __init__(self, fd: int, codec: str, path: str, follow: Growing | None = None) -> None:
        require(codec)
        self.codec = codec
        self.path = path
        self._raw = _Raw(fd, follow)
        self.disk_size = os.fstat(fd).st_size
        self.produced = 0
        # pcapslim's own output, read while it is written, has no size to judge by yet
        self._limit = MAX_EXPANSION * max(self.disk_size, 1 << 16) if follow is None else 1 << 62
        if codec == GZIP:
            from zlib_ng import gzip_ng

            gzip_file: Any = gzip_ng.GzipFile
            self._stream: Any = gzip_file(fileobj=self._raw, mode="rb")
        else:
            import zstandard

            problem = zstd_frames_problem(fd, self.disk_size) if follow is None else None
            if problem:
                raise CompressionError(f"{path}: {problem}; the file was left untouched")
            dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
            raw: Any = self._raw
            self._stream = dctx.stream_reader(
                raw, read_size=1 << 20, read_across_frames=True, closefd=False
            )

    @property
    def consumed(self) -> int:
        return self._raw.pos

    def readinto(self, view: memoryview) -> int:
        try:
            n = int(self._stream.readinto(view))
        except EOFError:
            raise CompressionError(
                f"{self.path}: the gzip data ends early (the file is cut short, or what follows "
                "its last member is not gzip); the file was left untouched"
            ) from None
        except PcapslimError:
            raise
        except Exception as e:  # the codecs' own errors (BadGzipFile, ZstdError): damaged data
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a real I/O error, reported as such
            raise CompressionError(
                f"{self.path}: the {self.codec} data is damaged ({_reason(e)}); the file was "
                "left untouched"
            ) from None
        self.produced += n
        if self.produced > self._limit:
            raise CompressionError(
                f"{self.path}: decompresses to more than {MAX_EXPANSION} x its {self.disk_size} "
                "bytes; refused rather than fill the disk (the file was left untouched)"
            )
        return n

    def close(self) -> None:
        self._stream.close()


def zstd_frames_problem(fd: int, size: int) -> str | None:
    """Walk the frame and block headers of a zstd file (RFC 8878) without decompressing: what
    is wrong with its structure, or None. The decoder itself would end a cut-short frame
    quietly; this says so."""
    pos = 0
    while pos < size:
        head = os.pread(fd, 18, pos)
        if len(head) < 4:
            return f"the zstd data ends early, inside a frame header at byte {pos}"
        magic = int.from_bytes(head[:4], "little")
        if magic & ~0xF == ZSTD_SKIPPABLE:
            if len(head) < 8:
                return f"the zstd data ends early, inside a skippable frame at byte {pos}"
            pos += 8 + int.from_bytes(head[4:8], "little")
            if pos > size:
                return "the zstd data ends early, inside a skippable frame"
            continue
        if head[:4] != ZSTD_MAGIC:
            return f"byte {pos} does not start a zstd frame (magic {head[:4].hex()})"
        if len(head) < 5:
            return f"the zstd data ends early, inside a frame header at byte {pos}"
        fhd = head[4]
        single = (fhd >> 5) & 1
        fcs = (0, 2, 4, 8)[fhd >> 6] or single
        header = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        pos += header
        while True:
            block = os.pread(fd, 3, pos)
            if len(block) < 3:
                return f"the zstd data ends early (cut short), inside the frame before {pos}"
            b = int.from_bytes(block, "little")
            kind, length = (b >> 1) & 3, b >> 3
            if kind == 3:
                return f"a zstd block of a reserved type at byte {pos}"
            pos += 3 + (1 if kind == 1 else length)
            if pos > size:
                return "the zstd data ends early (cut short), inside a block"
            if b & 1:
                break
        if fhd & 4:
            pos += 4  # the content checksum
            if pos > size:
                return "the zstd data ends early (cut short), inside a frame checksum"
    return None


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text[0].lower() + text[1:] if text else text


class Compressor:
    """A stream of slim bytes in, compressed bytes out to `emit` (called with each chunk)."""

    def __init__(self, codec: str, emit: Callable[[bytes], None], level: int | None = None) -> None:
        require(codec)
        self.codec = codec
        level = DEFAULT_LEVEL[codec] if level is None else level
        lo, hi = LEVELS[codec]
        if not lo <= level <= hi:
            raise ValueError(f"{codec} levels run from {lo} to {hi}, not {level}")
        self._out = _Emitter(emit)
        if codec == GZIP:
            from zlib_ng import gzip_ng

            gzip_file: Any = gzip_ng.GzipFile
            self._stream: Any = gzip_file(
                fileobj=self._out, mode="wb", compresslevel=level, mtime=0, filename=""
            )
        else:
            import zstandard

            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
            out: Any = self._out
            self._stream = cctx.stream_writer(out, closefd=False)

    def write(self, data: Any) -> None:
        self._stream.write(data)

    def finish(self) -> None:
        """End the stream (trailer, checksum): everything has been emitted after this."""
        self._stream.close()


class _Emitter:
    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.emit = emit

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.emit(b)
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
