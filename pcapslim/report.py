"""The reports of SPEC §6: human lines for stderr and the one-line JSON document for stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .constants import RULES_FORENSIC
from .results import (
    STATUS_ABANDONED,
    STATUS_BUSY,
    STATUS_FAIL,
    STATUS_MARKED,
    STATUS_OK,
    STATUS_WOULD_SLIM,
    FileResult,
    counts,
)


def human_line(r: FileResult) -> str:
    """The native tool's line (SPEC §6); under the forensic rules, which it does not have, the
    categories that cut something follow it (`tls=12 wireguard=3`), and the tunnels packets
    were found inside when there were any (`tunnels: vxlan=40`)."""
    if r.status == STATUS_OK and r.stats is not None:
        s = r.stats
        line = (
            f"ok {r.path} pkts={s.in_pkts} truncated={s.truncated} in={s.in_bytes} "
            f"out={s.out_bytes} ({s.elapsed_ms}ms)"
        )
        if s.rules == RULES_FORENSIC:
            line += "".join(f" {k}={n}" for k, n in s.truncated_by.items() if n)
        if any(s.tunnels.values()):  # packets found inside tunnels (SPEC §10), by kind
            line += " tunnels:" + "".join(f" {k}={n}" for k, n in s.tunnels.items() if n)
        return line
    if r.status == STATUS_MARKED:
        return f"skip (marked): {r.path}"
    if r.status == STATUS_BUSY:
        return f"skip (busy): {r.path}"
    if r.status == STATUS_ABANDONED:
        return f"skip (stopped): {r.path}"
    if r.status == STATUS_WOULD_SLIM:
        return f"would slim: {r.path}"
    reason = r.error or "failed"
    if reason.startswith(f"{r.path}: "):  # the message names the file already
        reason = reason[len(r.path) + 2 :]
    return f"FAIL {r.path}: {reason}"


def human_summary(results: Sequence[FileResult], elapsed_s: float, check_only: bool) -> str:
    c = counts(results)
    word = "check" if check_only else "done"
    return f"{word}: ok={c['ok']} skip={c['skip']} fail={c['fail']} elapsed={elapsed_s:.1f}s"


def file_entry(r: FileResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": r.path, "status": r.status}
    if r.stats is not None and r.status in (STATUS_OK, STATUS_FAIL):
        entry.update(r.stats.report_fields())
    if r.error is not None:
        entry["error"] = r.error
    if r.worker:
        entry["worker"] = r.worker
    return entry


def summary(
    results: Sequence[FileResult], elapsed_ms: int, check_only: bool, rules: str
) -> dict[str, Any]:
    doc: dict[str, Any] = dict(counts(results))
    doc.update({"elapsed_ms": elapsed_ms, "check_only": check_only, "rules": rules})
    return doc


def json_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def json_report(
    results: Sequence[FileResult],
    elapsed_ms: int,
    check_only: bool,
    rules: str,
    error: str | None = None,
) -> str:
    doc: dict[str, Any] = {
        "summary": summary(results, elapsed_ms, check_only, rules),
        "files": [file_entry(r) for r in results],
    }
    if error is not None:
        doc["error"] = error
    return json_line(doc)
