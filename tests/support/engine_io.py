"""Run the engine between two real files with the window and record budget a test wants."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pcapslim.engine import process
from pcapslim.sinks import FdSink
from pcapslim.stats import SlimStats


def slim_with_engine(src: Path, dst: Path, **kw: Any) -> SlimStats:
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            return process(str(src), fd_in, FdSink(fd_out), **kw)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
