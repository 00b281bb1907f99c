"""Every exception pcapslim raises on purpose, each with the exit code the command gives for it.

Messages say which file, which record, which byte offset, and what to do about it. A failure of
one file becomes that file's `fail` result (and the run's exit code 1); an error of the whole run
(options, installation, the directory, the cluster) ends the command with the class's code.
"""

from __future__ import annotations

EXIT_OK = 0  # success: nothing to do, skips, dry run and check-only included
EXIT_FAIL = 1  # a file failed, or the directory or the cluster could not be used
EXIT_USAGE = 2  # options that cannot be used as given


class PcapslimError(Exception):
    """Base class of every error pcapslim raises on purpose."""

    exit_code = EXIT_FAIL


# --- the run as a whole ----------------------------------------------------------------------


class UsageError(PcapslimError):
    """Options that exclude each other, or values out of range."""

    exit_code = EXIT_USAGE


class MissingExtraError(UsageError):
    """An option or a file needs a library of an optional extra that is not installed."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature, self.module, self.extra = feature, module, extra
        super().__init__(f"{feature} needs the {module} module: pip install 'pcapslim[{extra}]'")


class KernelChoiceError(UsageError):
    """PCAPSLIM_KERNELS names no choice, or asks for compiled kernels that cannot be used."""


class DirectoryError(PcapslimError):
    """The directory of a run cannot be read or watched."""


class SchedulerError(PcapslimError):
    """The Dask scheduler cannot be reached; nothing was touched."""


# --- one file -------------------------------------------------------------------------------


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


class CompressionError(PcapslimError):
    """A compressed capture that ends early, fails its checksum, or expands without bound."""


class NotRegularFileError(PcapslimError):
    """A FIFO, socket, device or directory stands where a capture was expected."""


class VerificationError(PcapslimError):
    """The slim copy did not re-read as the same number of records; the original is kept."""


class SourceChangedError(PcapslimError):
    """The original changed while it was being read; it is left as it is now."""


class PlantedPathError(PcapslimError):
    """Something that is not a regular file stands where the tmp file or marker must go."""


class OffsetMapError(PcapslimError):
    """An offset map file that is not one, or is damaged."""


class Abandoned(PcapslimError):
    """The run was asked to stop (SIGTERM, SIGINT) before this file was finished; its tmp was
    removed and the original is untouched."""


def require_extra(module: str, extra: str, feature: str) -> None:
    """Import `module` or raise MissingExtraError naming the extra that brings it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(feature, module, extra) from None
