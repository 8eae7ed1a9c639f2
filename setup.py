"""Build the Cython core (hapax/_core/*_c.pyx).

Every compiled unit has a pure-Python twin, so a build without a C compiler still
works (HAPAX_NO_EXTENSIONS=1 selects the twins at run time).  Set HAPAX_CYTHON_TRACE=1
to build with line tracing for coverage.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
TRACE = os.environ.get("HAPAX_CYTHON_TRACE") == "1"


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    exts = [
        Extension(
            f"hapax._core.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            define_macros=macros,
            extra_compile_args=["-O3"],
        )
        for pyx in sorted((HERE / "hapax" / "_core").glob("_*_c.pyx"))
    ]
    directives = {"language_level": "3", "embedsignature": True}
    if TRACE:
        directives["linetrace"] = True
    return cythonize(exts, compiler_directives=directives, quiet=True)


setup(ext_modules=extensions())
