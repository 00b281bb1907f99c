"""Prometheus metrics in node_exporter's textfile-collector format (`--metrics-file PATH`).

Rendered by prometheus_client and written atomically (a tmp file renamed over PATH) after every
file and when the run ends. The counters count since the process started: for a timer's
one-shot run that is the last run, for the watcher its whole life.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from .constants import CATEGORY_NAMES
from .errors import require_extra
from .results import STATUS_OK, STATUSES

if TYPE_CHECKING:
    from .results import FileResult


class Metrics:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        require_extra("prometheus_client", "sensor", "--metrics-file")
        from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.path = os.fspath(path)
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        r = self.registry
        self.files = Counter("pcapslim_files", "Files handled, by outcome", ["status"], registry=r)
        for status in STATUSES:
            self.files.labels(status)  # every series present from the start, at 0
        self.bytes_in = Counter("pcapslim_bytes_in", "Bytes of the files slimmed", registry=r)
        self.bytes_out = Counter("pcapslim_bytes_out", "Bytes they have now", registry=r)
        self.bytes_saved = Counter("pcapslim_bytes_saved", "Bytes freed by slimming", registry=r)
        self.packets = Counter("pcapslim_packets", "Packets in the files slimmed", registry=r)
        self.truncated = Counter(
            "pcapslim_packets_truncated", "Packets cut, by category", ["category"], registry=r
        )
        for name in CATEGORY_NAMES:
            self.truncated.labels(name)
        self.seconds = Counter(
            "pcapslim_seconds", "Seconds spent slimming the files slimmed", registry=r
        )
        self.last_success = Gauge(
            "pcapslim_last_success_timestamp_seconds",
            "When a file was last slimmed (Unix time; 0 before the first)",
            registry=r,
        )
        self.watcher_up = Gauge(
            "pcapslim_watcher_up", "1 while `pcap-slim --watch` is watching", registry=r
        )

    def record(self, result: FileResult) -> None:
        """Count one file's outcome and write the file."""
        with self._lock:
            self.files.labels(result.status).inc()
            s = result.stats
            if result.status == STATUS_OK and s is not None:
                self.bytes_in.inc(s.in_bytes)
                self.bytes_out.inc(s.out_bytes)
                self.bytes_saved.inc(max(s.in_bytes - s.out_bytes, 0))
                self.packets.inc(s.in_pkts)
                for name, n in s.truncated_by.items():
                    self.truncated.labels(name).inc(n)
                self.seconds.inc(s.elapsed_ms / 1000)
                self.last_success.set(time.time())
        self.write()

    def set_watching(self, up: bool) -> None:
        self.watcher_up.set(1 if up else 0)
        self.write()

    def write(self) -> None:
        from prometheus_client import write_to_textfile

        with self._lock:
            write_to_textfile(self.path, self.registry)
