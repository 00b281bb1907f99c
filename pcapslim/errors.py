"""The exception hierarchy. Messages say which file, which record, which byte offset, and what
to do about it."""

from __future__ import annotations


class PcapslimError(Exception):
    """Base class of every error pcapslim raises on purpose."""


class UnknownFormatError(PcapslimError):
    """The file is neither classic pcap nor pcapng, or too short to tell."""


class CorruptCaptureError(PcapslimError):
    """A record or block breaks the format; the file is not slimmed."""

    def __init__(self, path: str, record: int, offset: int, what: str) -> None:
        self.path = path
        self.record = record
        self.offset = offset
        self.what = what
        super().__init__(
            f"{path}: record {record} at byte offset {offset}: {what}; the file is corrupt "
            "and was not slimmed (repair it, e.g. with pcapfix, or move it out of the way)"
        )


class VerificationError(PcapslimError):
    """The slim copy did not re-read as the same number of records; the original is kept."""


class SourceChangedError(PcapslimError):
    """The original changed while it was being read; it is left as it is now."""


class PlantedPathError(PcapslimError):
    """Something that is not a regular file stands where the tmp file or marker must go."""


class Abandoned(PcapslimError):
    """The run was asked to stop (SIGTERM, SIGINT) before this file was finished; its tmp was
    removed and the original is untouched."""
