"""numba's on-disk cache of the kernels follows every source they are built from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support import ROOT, TLS

from pcapslim import synth

PACKAGE = ROOT / "pcapslim"

PROBE = """
import sys
import pcapslim
assert pcapslim.__file__.startswith(sys.argv[2]), pcapslim.__file__
print(pcapslim.analyze_file(sys.argv[1]).out_bytes)
"""


@pytest.mark.slow  # two cold compiles; without the JIT there is no cache to check
def test_an_edit_outside_a_kernels_own_file_recompiles_it(tmp_path):  # type: ignore[no-untyped-def]
    """index_pcap lives in kernels/index.py and takes the number of payload bytes a cut keeps
    from constants.py. numba alone stamps the cache with index.py only, so after an edit of
    constants.py it would keep running the old machine code. The cache is kept where
    NUMBA_CACHE_DIR says (else in the user's cache directory), never in the package's tree."""
    root = tmp_path / "copy"
    shutil.copytree(PACKAGE, root / "pcapslim", ignore=shutil.ignore_patterns("__pycache__"))
    cap = tmp_path / "one_tls.pcap"
    cap.write_bytes(synth.pcap_bytes([synth.Record(TLS, ts=1)]))
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, PYTHONPATH=str(root), PCAPSLIM_KERNELS="jit",
               NUMBA_CACHE_DIR=str(cache))  # fmt: skip

    def out_bytes() -> int:
        p = subprocess.run(
            [sys.executable, "-c", PROBE, str(cap), str(root)],
            env=env,
            cwd=tmp_path,  # not the checkout, whose package would come first
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    before = out_bytes()
    assert list(cache.rglob("index.index_pcap*.nbi"))  # cached, and not beside the sources
    assert not list((root / "pcapslim").rglob("*.nb[ic]"))
    constants = root / "pcapslim" / "constants.py"
    text = constants.read_text()
    assert "KEEP_BYTES = 24 " in text
    constants.write_text(text.replace("KEEP_BYTES = 24 ", "KEEP_BYTES = 16 "))
    assert out_bytes() == before - 8  # the one cut packet keeps 8 bytes fewer
