"""Rate-limit arithmetic (hapax._core.gcra), compiled against pure-Python, side by side.

Each implementation runs on its own shared counters twin (as ``hapax._core`` pairs them:
compiled GCRA on atomic instructions, the pure one on the lock-protected twin):

* ``core-gcra-acquire``: ``acquire`` that passes (a limit that never runs out);
* ``core-gcra-refuse``: ``acquire`` refused (an exhausted limit: the path of a 429);
* ``core-gcra-adjust``: ``adjust`` (the token correction after a response);
* ``core-gcra-peek``: ``peek`` (remaining quota for headers).

Each round performs 1 000 operations; the per-operation table at the end gives µs/op
and the C/py ratio.  Run: ``pytest benchmarks/test_bench_core_gcra.py --benchmark-only``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from hapax._core import NO_EXTENSIONS

IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS")),
    "py",
]
OPS = 1_000
MINUTE = 60_000_000_000
T0 = 10**15


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    return (importlib.import_module(f"hapax._core._gcra_{request.param}"),
            importlib.import_module(f"hapax._core._shm_{request.param}"))


def make(impl: tuple[ModuleType, ModuleType], limit: int) -> Any:
    gcra, shm = impl
    return gcra.GCRA(shm.SharedCounters(8), 3, limit, MINUTE)


def is_baseline(impl: tuple[ModuleType, ModuleType]) -> bool:
    return impl[0].__name__.endswith("_py")


@pytest.mark.benchmark(group="core-gcra-acquire: 1000 acquisitions that pass")
def test_gcra_acquire(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make(impl, 1_000_000_000)  # 60 ns per unit: never runs out here
    acquire = g.acquire

    def run() -> None:
        for _ in range(OPS):
            acquire(T0, 1)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert g.acquire(T0, 1)[0]


@pytest.mark.benchmark(group="core-gcra-refuse: 1000 refused acquisitions")
def test_gcra_refuse(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make(impl, 100)
    g.acquire(T0, 100)
    acquire = g.acquire

    def run() -> None:
        for _ in range(OPS):
            acquire(T0, 1)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert not g.acquire(T0, 1)[0]


@pytest.mark.benchmark(group="core-gcra-adjust: 1000 corrections")
def test_gcra_adjust(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make(impl, 1_000_000)
    g.acquire(T0, 500_000)
    adjust = g.adjust

    def run() -> None:
        for _ in range(OPS // 2):  # a charge and its refund: the state stays put
            adjust(T0, 7)
            adjust(T0, -7)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert g.peek(T0)[0] == 500_000


@pytest.mark.benchmark(group="core-gcra-peek: 1000 peeks")
def test_gcra_peek(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make(impl, 1000)
    g.acquire(T0, 10)
    peek = g.peek

    def run() -> None:
        for _ in range(OPS):
            peek(T0)

    measure(run, ops=OPS, baseline=is_baseline(impl))
