"""The ranges of the run's options: what `Options` checks and what the command's flags declare,
in a module light enough for `pcap-slim --help` to import at start-up."""

from __future__ import annotations

RULES = ("compatible", "forensic")
MMAP_MAX_WORKERS = 2  # default reads: mapped with up to this many workers, buffered above
# the ranges of the numeric options: (lowest, highest), None where unbounded
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "workers": (1, 256),
    "age_minutes": (0, None),
    "max_io_mbps": (0.001, None),
    "max_cpu_percent": (1, 100),
    "cpu_backoff_above": (0, 100),
    "cpu_backoff_strength": (0.0, 1.0),
    "compress_level": (1, 19),
    "rescan_seconds": (1, None),
}
