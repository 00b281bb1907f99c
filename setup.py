"""Install-time build: compile the kernels ahead of time into pcapslim.kernels._aot.

pyproject.toml holds the project metadata; this file only adds the compiled module (the export
table and the compile step are in pcapslim/kernels/aot.py). Where it cannot be built — no C
compiler, or a numba without its AOT compiler (numba.pycc) — the install still succeeds, says
so once, and pcapslim runs its kernels on numba's JIT.
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "pcapslim.kernels._aot"
STAMP = "_aot.stamp"


class BuildKernels(build_ext):
    """Builds the one extension with numba.pycc instead of from C sources."""

    def build_extension(self, ext: Extension) -> None:
        path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sys.path.insert(0, HERE)  # the kernels of this source tree
        try:
            from pcapslim.kernels import aot
            from pcapslim.kernelsources import sources_digest

            aot.compile_module(path, sources_digest(), verbose=bool(self.verbose))
        except Exception as e:  # noqa: BLE001 - any failure leaves the JIT in charge
            for leftover in (path, os.path.join(os.path.dirname(path), STAMP)):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            sys.stderr.write(
                "WARNING: pcapslim: the kernels were not compiled ahead of time "
                f"({type(e).__name__}: {e}). pcapslim works, on numba's JIT: its first run "
                "compiles the kernels (several seconds) and every run loads numba (about half "
                "a second). Install a C compiler and reinstall for the fast path.\n"
            )
        finally:
            sys.path.remove(HERE)

    def copy_extensions_to_source(self) -> None:
        """Editable installs: the stamp goes with the module into the source tree."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, built = self._get_inplace_equivalent(build_py, ext)
            stamp = os.path.join(os.path.dirname(built), STAMP)
            target = os.path.join(os.path.dirname(inplace), STAMP)
            if os.path.exists(stamp):
                shutil.copyfile(stamp, target)
            elif os.path.exists(target):  # no module was built: no stamp of an older one
                os.unlink(target)


setup(
    ext_modules=[Extension(MODULE, sources=[], optional=True)],
    cmdclass={"build_ext": BuildKernels},
)
