"""Build the Cython core (hapax/_core/*_c.pyx).

A normal build needs a C compiler and the Python headers, and fails loudly without
them.  Every compiled unit has a pure-Python twin: HAPAX_NO_EXTENSIONS=1 at build time
skips the compilation (a pure-Python install), and at run time selects the twins.
HAPAX_CYTHON_TRACE=1 builds with line tracing for coverage.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
TRACE = os.environ.get("HAPAX_CYTHON_TRACE") == "1"


def extensions() -> list[Extension]:
    if os.environ.get("HAPAX_NO_EXTENSIONS", "") not in ("", "0"):
        return []
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
