"""pcapslim: cut encrypted payloads out of packet captures, keep everything else."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import analyze_file, slim_file
from .errors import CorruptCaptureError, PcapslimError, UnknownFormatError
from .stats import SlimStats

__all__ = [
    "CorruptCaptureError",
    "PcapslimError",
    "SlimStats",
    "UnknownFormatError",
    "__version__",
    "analyze_file",
    "slim_file",
]
