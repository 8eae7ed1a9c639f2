"""The two twins of a core unit, for the ``core`` benchmarks: ``IMPLS`` parametrises a
fixture (the compiled twin is skipped under HAPAX_NO_EXTENSIONS), ``twin`` imports one."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from hapax._core import NO_EXTENSIONS

IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS")),
    "py",
]


def twin(unit: str, which: str) -> ModuleType:
    """``hapax._core._<unit>_<which>`` (``which``: ``"c"`` or ``"py"``)."""
    return importlib.import_module(f"hapax._core._{unit}_{which}")
