"""pcapslim: cut encrypted payloads out of packet captures, keep everything else.

The engine (and numba with it) loads on first use, so `pcap-slim --help` and `--version` stay
instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from .api import analyze_file, slim_file
    from .errors import CorruptCaptureError, PcapslimError, UnknownFormatError
    from .results import FileResult
    from .run import Options, slim_dir, slim_files, watch_dir
    from .stats import SlimStats

_LAZY = {
    "analyze_file": "api",
    "slim_file": "api",
    "slim_dir": "run",
    "slim_files": "run",
    "watch_dir": "run",
    "Options": "run",
    "FileResult": "results",
    "CorruptCaptureError": "errors",
    "PcapslimError": "errors",
    "UnknownFormatError": "errors",
    "SlimStats": "stats",
}

__all__ = [
    "CorruptCaptureError",
    "FileResult",
    "Options",
    "PcapslimError",
    "SlimStats",
    "UnknownFormatError",
    "__version__",
    "analyze_file",
    "slim_dir",
    "slim_file",
    "slim_files",
    "watch_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pcapslim' has no attribute {name!r}")
