"""The selector modules load the compiled core by default and the pure twins on request."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import hapax
import hapax._core
from hapax._core import fingerprint as core_fingerprint
from hapax._core import flight as core_flight
from hapax._core import gcra as core_gcra
from hapax._core import histogram as core_histogram
from hapax._core import http1 as core_http1
from hapax._core import json as core_json
from hapax._core import ring as core_ring
from hapax._core import shm as core_shm
from hapax._core import shmcache as core_shmcache
from hapax._core import sse as core_sse

ROOT = Path(hapax.__file__).resolve().parent.parent

# What each selector module re-exports, and from which unit.
UNITS = {
    core_sse: ("sse", ["SSEDecoder", "event_data"]),
    core_json: ("json", ["find_value", "replace_string_value"]),
    core_ring: ("ring", ["Ring", "FairQueue", "Entry"]),
    core_shm: ("shm", ["SharedCounters"]),
    core_shmcache: ("shmcache", ["SharedLRU"]),
    core_fingerprint: ("fingerprint", ["fingerprint"]),
    core_flight: ("flight", ["ReplayLog"]),
    core_gcra: ("gcra", ["GCRA", "GCRAGroup", "duration"]),
    core_histogram: ("histogram", ["LogHistogram", "bucket_index", "upper_bound",
                                   "nearest_bound"]),
    core_http1: ("http1", ["RequestHead", "BODY_TOO_LARGE", "EXPECT_CONTINUE", "BODY_FRAMED",
                           "status_line", "response_head", "chunk"]),
}


@pytest.mark.skipif(hapax._core.NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
def test_compiled_units_are_loaded_by_default() -> None:
    assert hapax._core.IMPLEMENTATION == "c"
    for selector, (unit, names) in UNITS.items():
        compiled = importlib.import_module(f"hapax._core._{unit}_c")
        assert compiled.__file__ is not None
        assert compiled.__file__.endswith(tuple(EXTENSION_SUFFIXES)), compiled.__file__
        for name in names:
            assert getattr(selector, name) is getattr(compiled, name), name


@pytest.mark.skipif(not hapax._core.NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is not set")
def test_pure_twins_are_loaded_on_request() -> None:
    assert hapax._core.IMPLEMENTATION == "py"
    for selector, (unit, names) in UNITS.items():
        pure = importlib.import_module(f"hapax._core._{unit}_py")
        for name in names:
            assert getattr(selector, name) is getattr(pure, name), name


PROBE = (
    "import hapax._core, hapax._core.sse as s, hapax._core.json as j; "
    "print(hapax._core.IMPLEMENTATION, s.SSEDecoder.__module__, j.find_value.__module__)"
)


def probe(no_extensions: str | None) -> list[str]:
    """What a fresh interpreter selects, with HAPAX_NO_EXTENSIONS set as given."""
    env = {k: v for k, v in os.environ.items() if k != "HAPAX_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["HAPAX_NO_EXTENSIONS"] = no_extensions
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=60,
    )
    return out.stdout.split()


def test_no_extensions_selects_the_pure_twins() -> None:
    assert probe("1") == ["py", "hapax._core._sse_py", "hapax._core._json_py"]


@pytest.mark.skipif(hapax._core.NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
@pytest.mark.parametrize("value", [None, "", "0"], ids=["unset", "empty", "zero"])
def test_extensions_are_the_default(value: str | None) -> None:
    assert probe(value) == ["c", "hapax._core._sse_c", "hapax._core._json_c"]
