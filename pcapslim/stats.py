"""SlimStats: the numbers one slimmed (or analysed) file yields, as the reports need them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import CATEGORY_NAMES, TUNNEL_NAMES


@dataclass
class SlimStats:
    """Counters for one file. `truncated_by` always has every category, zeros included."""

    path: str
    format: str = ""
    in_pkts: int = 0
    truncated: int = 0
    in_bytes: int = 0  # on disk
    out_bytes: int = 0  # on disk
    records: int = 0  # packets plus every other pcapng block (what verification counts)
    tail_bytes: int = 0
    elapsed_ms: int = 0
    rules: str = "compatible"
    compression: str | None = None  # "gzip" or "zstd" for a compressed file
    in_bytes_uncompressed: int = 0  # the capture's own bytes (in_bytes when not compressed)
    out_bytes_uncompressed: int = 0
    truncated_by: dict[str, int] = field(
        default_factory=lambda: {name: 0 for name in CATEGORY_NAMES}
    )
    tunnels: dict[str, int] = field(default_factory=lambda: {name: 0 for name in TUNNEL_NAMES})
    linktypes: dict[str, int] = field(default_factory=dict)
    unsliced_linktypes: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.in_pkts - self.truncated

    def report_fields(self) -> dict[str, Any]:
        """The per-file fields of the JSON report (SPEC §6) for a file that is ok."""
        return {
            "in_pkts": self.in_pkts,
            "truncated": self.truncated,
            "kept": self.kept,
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
            "elapsed_ms": self.elapsed_ms,
            "truncated_by": dict(self.truncated_by),
            "tunnels": dict(self.tunnels),
            "linktypes": dict(self.linktypes),
            "format": self.format,
            "tail_bytes": self.tail_bytes,
            "rules": self.rules,
            "compression": self.compression,
            "in_bytes_uncompressed": self.in_bytes_uncompressed,
            "out_bytes_uncompressed": self.out_bytes_uncompressed,
        }
