from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # benches/

JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """write(name, data) -> Path: a real file under the test's temporary directory."""

    def _write(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    return _write


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """tshark checks run where it is installed and asked for (CI: PCAPSLIM_DISSECTOR_TESTS=1)."""
    if os.environ.get("PCAPSLIM_DISSECTOR_TESTS") == "1":
        return
    kept = [i for i in items if "dissector" not in i.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if "dissector" in i.keywords])
        items[:] = kept


@pytest.fixture(params=["aot", "jit"])
def kernels(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Run a test on the kernels compiled ahead of time and on numba's JIT kernels. The compiled
    module must be installed and match the sources (pip install -e . builds it): otherwise the
    aot runs fail, naming what is wrong."""
    from pcapslim import kernelset

    monkeypatch.setenv(kernelset.ENV, request.param)
    ks = kernelset.active()
    assert ks.kind == request.param
    return ks
