"""What every core test file shares: the unit's compiled and pure twins as one fixture."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from hapax._core import NO_EXTENSIONS

__all__ = ["needs_c", "twins"]

#: The compiled twin is skipped only when HAPAX_NO_EXTENSIONS is set: otherwise a missing
#: compiled unit is a failure, not a skip.
needs_c = pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")


def twins(unit: str) -> Any:
    """A fixture named ``impl`` giving ``hapax._core._<unit>_c``, then ``_<unit>_py``.

    Module scope: hypothesis refuses function-scoped fixtures.
    """

    @pytest.fixture(scope="module", params=[pytest.param("c", marks=needs_c), "py"],
                    ids=["c", "py"], name="impl")
    def impl(request: pytest.FixtureRequest) -> ModuleType:
        return importlib.import_module(f"hapax._core._{unit}_{request.param}")

    return impl
