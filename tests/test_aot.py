"""The kernels compiled ahead of time: used when installed and current, never numba at run time,
a stale module refused, and an install that cannot compile them still working on the JIT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT, SAMPLE

import pcapslim
from pcapslim import kernelset

PACKAGE = ROOT / "pcapslim"

# Runs the command in-process, then says which of numba and llvmlite were ever imported.
COMMAND_THEN_MODULES = """
import sys
from pcapslim.cli import main
sys.argv = ["pcap-slim", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    rc = e.code
print("RC", rc, "numba" in sys.modules, "llvmlite" in sys.modules, file=sys.stderr)
"""


def _modules_after(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    return p.stderr.strip().splitlines()[-1]


def test_the_compiled_module_is_installed_and_current():  # type: ignore[no-untyped-def]
    """CI installs through the README line: a build that fails must not hide behind the JIT."""
    assert kernelset.aot_problem() is None, kernelset.aot_problem()
    assert kernelset.load(kernelset.AUTO).kind == kernelset.AOT
    assert kernelset.describe() == "ahead-of-time"


def test_check_only_never_imports_numba(tmp_path):  # type: ignore[no-untyped-def]
    line = _modules_after(COMMAND_THEN_MODULES, "--single", str(SAMPLE), "--check-only")
    assert line == "RC 0 False False"


def test_slimming_in_place_never_imports_numba(tmp_path):  # type: ignore[no-untyped-def]
    target = tmp_path / "sample.pcap"
    shutil.copyfile(SAMPLE, target)
    line = _modules_after(COMMAND_THEN_MODULES, "--single", str(target), "--output", "json")
    assert line == "RC 0 False False"
    assert target.stat().st_size < SAMPLE.stat().st_size  # it was slimmed
    assert (tmp_path / ".slim_markers" / "sample.pcap").exists()


def test_the_flow_table_never_imports_numba():  # type: ignore[no-untyped-def]
    code = textwrap.dedent(
        """
        import sys
        from pcapslim.flows import flow_table
        flows, stats = flow_table(sys.argv[1])
        assert len(flows) > 0 and stats.in_pkts == flows["packets"].sum()
        print("numba" in sys.modules, "llvmlite" in sys.modules, file=sys.stderr)
        """
    )
    assert _modules_after(code, str(SAMPLE)) == "False False"


def test_jit_when_asked_loads_numba():  # type: ignore[no-untyped-def]
    """The check above can fail: the same probe sees numba when the JIT runs."""
    env = dict(os.environ, PCAPSLIM_KERNELS="jit")
    line = _modules_after(COMMAND_THEN_MODULES, "--single", str(SAMPLE), "--check-only", env=env)
    assert line == "RC 0 True True"


def _copy_package(tmp_path: Path) -> Path:
    """The installed package, compiled module and stamp included, under tmp_path/pcapslim."""
    shutil.copytree(PACKAGE, tmp_path / "pcapslim", ignore=shutil.ignore_patterns("__pycache__"))
    assert kernelset.module_file() is not None
    return tmp_path


def _in_copy(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(root), **env),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


VERSION = "import sys\nsys.argv = ['pcap-slim', '--version']\nfrom pcapslim.cli import main\nmain()"
CHOICE = textwrap.dedent(
    """
    import os
    import pcapslim
    from pcapslim import kernelset
    assert pcapslim.__file__.startswith(os.getcwd()), pcapslim.__file__
    ks = kernelset.active()
    print(ks.kind, "|", ks.fallback)
    """
)


def test_a_stale_compiled_module_is_not_used_and_version_says_so(tmp_path):  # type: ignore[no-untyped-def]
    root = _copy_package(tmp_path)
    fresh = _in_copy(root, VERSION)
    assert fresh.stdout.strip() == f"pcap-slim {pcapslim.__version__} (kernels: ahead-of-time)"
    assert _in_copy(root, CHOICE).stdout.strip() == "aot |"

    constants = root / "pcapslim" / "constants.py"
    constants.write_text(constants.read_text().replace("KEEP_BYTES = 24 ", "KEEP_BYTES = 16 "))
    stale = _in_copy(root, VERSION)
    assert stale.stdout.strip() == (
        f"pcap-slim {pcapslim.__version__} "
        "(kernels: jit — compiled module stale: built from other kernel sources)"
    )
    assert _in_copy(root, CHOICE).stdout.strip() == (
        "jit | compiled module stale: built from other kernel sources"
    )
    forced = _in_copy(root, VERSION, PCAPSLIM_KERNELS="aot")
    assert "none — PCAPSLIM_KERNELS=aot, but compiled module stale" in forced.stdout
    refused = _in_copy(root, CHOICE, PCAPSLIM_KERNELS="aot")
    assert refused.returncode != 0
    assert (
        "PCAPSLIM_KERNELS=aot, but the compiled kernels cannot be used (compiled module stale"
        in refused.stderr
    )


def test_a_module_whose_own_stamp_differs_is_not_used(tmp_path):  # type: ignore[no-untyped-def]
    """The stamp file is what --version reads; the stamp compiled into the module decides."""
    root = _copy_package(tmp_path)
    constants = root / "pcapslim" / "constants.py"
    constants.write_text(constants.read_text() + "\n# an edit after the build\n")
    stamp_of_edited = _in_copy(
        root, "from pcapslim import kernelset\nprint(kernelset.sources_digest().hex())"
    ).stdout.strip()
    (root / "pcapslim" / "kernels" / kernelset.STAMP_FILE).write_text(stamp_of_edited + "\n")
    assert _in_copy(root, CHOICE).stdout.strip() == (
        "jit | compiled module stale: its stamp differs from the kernel sources"
    )


def test_a_missing_module_means_the_jit_and_a_notice(tmp_path):  # type: ignore[no-untyped-def]
    root = _copy_package(tmp_path)
    for f in (root / "pcapslim" / "kernels").glob("_aot*"):
        f.unlink()
    version = _in_copy(root, VERSION).stdout.strip()
    assert version == f"pcap-slim {pcapslim.__version__} (kernels: jit — compiled module missing)"
    target = tmp_path / "a.pcap"
    shutil.copyfile(SAMPLE, target)
    run = _in_copy(
        root,
        f"import sys\nsys.argv = ['pcap-slim', '--single', {str(target)!r}, '--check-only']\n"
        "from pcapslim.cli import main\nmain()",
    )
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stderr.splitlines() if line.startswith("note: kernels: jit")]
    assert len(notes) == 1 and "compiled module missing" in notes[0]


# --- the install-time build -----------------------------------------------------------------


def _build(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """setup.py's build_ext into a scratch build directory, as pip's build runs it."""
    lib = tmp_path / "lib"
    p = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(tmp_path / "temp"),
        ],  # fmt: skip
        cwd=ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return p, lib / "pcapslim" / "kernels"


@pytest.mark.slow  # a whole ahead-of-time compile before the C compiler is called
def test_without_a_c_compiler_the_build_succeeds_and_says_so(tmp_path):  # type: ignore[no-untyped-def]
    p, out = _build(tmp_path, CC="false", LDSHARED="false")
    assert p.returncode == 0, p.stderr
    assert "the kernels were not compiled ahead of time" in p.stderr
    assert not (out.exists() and list(out.glob("_aot*")))


def test_without_numba_pycc_the_build_succeeds_and_says_so(tmp_path):  # type: ignore[no-untyped-def]
    """A numba that has dropped its AOT compiler: numba.pycc does not import."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['numba.pycc'] = None\n")
    p, out = _build(tmp_path, PYTHONPATH=str(hide))
    assert p.returncode == 0, p.stderr
    assert "the kernels were not compiled ahead of time (ModuleNotFoundError" in p.stderr
    assert "numba.pycc" in p.stderr
    assert not (out.exists() and list(out.glob("_aot*")))


def test_the_compiled_kernels_release_the_gil():  # type: ignore[no-untyped-def]
    """The copy stage and the workers are threads: while a compiled kernel runs, Python code in
    another thread runs too. The main thread stamps the time of every turn of its loop; with
    the GIL held for the call, none of those times could fall inside the call."""
    import threading
    import time

    import numpy as np

    from pcapslim import synth
    from pcapslim.constants import N_FIELDS

    frame = synth.eth_ip(synth.ipv4(synth.tcp(443, 50000, b"\x17\x03\x03" + bytes(1400)), 6))
    data = synth.pcap_bytes([synth.Record(frame, ts=1)] * 60_000)
    buf = np.frombuffer(data, dtype=np.uint8)
    rec = np.zeros((1 << 16, N_FIELDS), dtype=np.int64)
    ks = kernelset.load(kernelset.AOT)
    call: list[int] = []

    def kernel() -> None:
        call.append(time.perf_counter_ns())
        n = ks.index_pcap(buf, 24, len(data), 1, 262144, 1, rec, True)[0]
        call.append(time.perf_counter_ns())
        assert n == 60_000

    turns: list[int] = []
    t = threading.Thread(target=kernel)
    t.start()
    while t.is_alive():
        turns.append(time.perf_counter_ns())
    t.join()
    inside = sum(call[0] < x < call[1] for x in turns)
    assert inside > 100, (inside, len(turns), (call[1] - call[0]) / 1e6)


THREADS_AFTER = """
import os, sys
if sys.argv[1] == "numpy-first":
    import numpy  # noqa: F401  (as a program that imports NumPy itself before the command)
from pcapslim.cli import main
sys.argv = ["pcap-slim", *sys.argv[2:]]
try:
    main()
except SystemExit as e:
    rc = e.code
# a joined thread's OS task can outlive its join by a moment on a loaded machine: wait for it
# (bounded); a thread still running stays counted
import time
for _ in range(200):
    if len(os.listdir("/proc/self/task")) == 1:
        break
    time.sleep(0.01)
print("RC", rc, len(os.listdir("/proc/self/task")), file=sys.stderr)
"""


def test_the_command_starts_no_blas_threads():  # type: ignore[no-untyped-def]
    """NumPy's OpenBLAS would start a thread per core that spins at start-up; the command
    does no linear algebra and keeps to its own threads (all ended after a check-only run)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    args = ["--single", str(SAMPLE), "--check-only"]
    assert _modules_after(THREADS_AFTER, "command", *args, env=env) == "RC 0 1"
    control = _modules_after(THREADS_AFTER, "numpy-first", *args, env=env).split()
    if (os.cpu_count() or 1) > 1:  # NumPy imported first starts them: the check can fail
        assert control[:2] == ["RC", "0"] and int(control[2]) > 1, control
