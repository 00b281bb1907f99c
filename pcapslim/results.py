"""What became of a file in a run: its status, its numbers and, when it failed, why.

The reports and the metrics read these; nothing here imports the engine or NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stats import SlimStats

STATUS_OK = "ok"
STATUS_MARKED = "skipped_marker"
STATUS_BUSY = "skipped_busy"
STATUS_FAIL = "fail"
STATUS_ABANDONED = "abandoned"  # a stop was requested before it was finished
STATUS_WOULD_SLIM = "would_slim"  # --dry-run: what a run would take
STATUSES = (STATUS_OK, STATUS_MARKED, STATUS_BUSY, STATUS_FAIL, STATUS_ABANDONED)
SKIPS = (STATUS_MARKED, STATUS_BUSY, STATUS_ABANDONED)  # counted as `skip` in the summary


@dataclass
class FileResult:
    path: str
    status: str
    stats: SlimStats | None = None
    error: str | None = None
    worker: str = ""  # the Dask worker that slimmed it (cluster runs)


def counts(results: Sequence[FileResult]) -> dict[str, int]:
    """The summary's counts: ok, skip (marked, busy, abandoned) and fail."""
    return {
        "ok": sum(r.status == STATUS_OK for r in results),
        "skip": sum(r.status in SKIPS for r in results),
        "fail": sum(r.status == STATUS_FAIL for r in results),
    }
