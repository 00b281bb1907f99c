"""Running the command: in this process through typer's CliRunner (fast; the run layer, the
report and the exit code exactly as the command makes them), or as a real subprocess where a
process is what is tested (signals, start-up, exit codes and stdout as a shell sees them, other
accounts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

CLI = [sys.executable, "-m", "pcapslim"]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(x) for x in self.stdout.splitlines()]


def invoke(*args: object, check_rc: int | None = None, env: dict[str, str] | None = None) -> Ran:
    """pcap-slim ARGS in this process."""
    from pcapslim.cli import app

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ran = Ran(result.exit_code, result.stdout, result.stderr)
    if check_rc is not None:
        assert ran.returncode == check_rc, (ran.returncode, ran.stdout, ran.stderr)
    return ran


def run(
    *args: object,
    check_rc: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    prefix: list[str] | None = None,
) -> Ran:
    """pcap-slim ARGS as a subprocess (after `prefix`, e.g. setpriv)."""
    p = subprocess.run(
        [*(prefix or []), *CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    ran = Ran(p.returncode, p.stdout, p.stderr)
    if check_rc is not None:
        assert ran.returncode == check_rc, (ran.returncode, ran.stdout, ran.stderr)
    return ran
