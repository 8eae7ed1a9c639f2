"""Rate-limit arithmetic (hapax._core.gcra), compiled against pure-Python, side by side.

Each implementation runs on its own shared counters twin (as ``hapax._core`` pairs them:
compiled GCRA on atomic instructions, the pure one on the lock-protected twin):

* ``core-gcra-acquire``: ``acquire`` that passes (a limit that never runs out);
* ``core-gcra-refuse``: ``acquire`` refused (an exhausted limit: the path of a 429);
* ``core-gcra-adjust``: ``adjust`` (the token correction after a response);
* ``core-gcra-peek``: ``peek`` (remaining quota for headers);
* ``core-gcra-group``: ``GCRAGroup.charge`` of one request against a key's RPM and TPM
  limits that never run out, headers included (the rate-limit plugin's whole admission
  with the in-node limiter), and ``GCRAGroup.adjust`` (its token correction);
* ``core-gcra-group-refuse``: ``GCRAGroup.charge`` refused by the TPM limit (the RPM
  charge given back: the path of a 429);
* ``core-gcra-duration``: ``duration`` (the ``x-ratelimit-reset-*`` values).

Each round performs 1 000 operations; the per-operation table at the end gives µs/op
and the C/py ratio.  Run: ``pytest benchmarks/test_bench_core_gcra.py --benchmark-only``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin

OPS = 1_000
MINUTE = 60_000_000_000
T0 = 10**15


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    return (twin("gcra", request.param),
            twin("shm", request.param))


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


def make_group(impl: tuple[ModuleType, ModuleType], rpm: int, tpm: int) -> Any:
    gcra, shm = impl
    counters = shm.SharedCounters(2)
    return gcra.GCRAGroup([gcra.GCRA(counters, 0, rpm, MINUTE),
                           gcra.GCRA(counters, 1, tpm, MINUTE)],
                          ["requests", "tokens"], lambda: T0)


@pytest.mark.benchmark(group="core-gcra-group: 1000 admissions (rpm + tpm), headers included")
def test_gcra_group_charge(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make_group(impl, 10_000_000, 1_000_000_000)  # the load test's key: never reached
    charge = g.charge

    def run() -> None:
        for _ in range(OPS):
            charge(112, [])

    measure(run, ops=OPS, baseline=is_baseline(impl))
    out: list[tuple[bytes, bytes]] = []
    assert charge(112, out) is None and len(out) == 6


@pytest.mark.benchmark(group="core-gcra-group-adjust: 1000 token corrections")
def test_gcra_group_adjust(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make_group(impl, 10_000_000, 1_000_000_000)
    g.charge(500_000, [])
    adjust = g.adjust

    def run() -> None:
        for _ in range(OPS // 2):  # a correction and its reverse: the state stays put
            adjust(-44)
            adjust(44)

    measure(run, ops=OPS, baseline=is_baseline(impl))


@pytest.mark.benchmark(group="core-gcra-group-refuse: 1000 refused admissions")
def test_gcra_group_refuse(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    g = make_group(impl, 10_000_000, 1000)
    g.charge(1000, [])
    charge = g.charge

    def run() -> None:
        for _ in range(OPS):
            charge(112, [])

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert charge(112, []) == (1, 112 * MINUTE // 1000)
    assert g.cells[0].peek(T0)[0] == 10_000_000 - 1  # only the first charge stayed


@pytest.mark.benchmark(group="core-gcra-duration: 1000 reset-header values")
def test_gcra_duration(measure: Any, impl: tuple[ModuleType, ModuleType]) -> None:
    duration = impl[0].duration
    values = [(i * 7_919_000_003) % (4000 * 10**9) for i in range(OPS)]  # 0 to ~1h

    def run() -> None:
        for ns in values:
            duration(ns)

    measure(run, ops=OPS, baseline=is_baseline(impl))
