"""Latency histograms: the core's log-linear histogram (compiled and pure) against the
bisect-over-bounds histogram it replaced.

* ``core-histogram-record``: record 10,000 latencies (a log-uniform spread from 20 µs to
  60 s, fixed seed) — the compiled ``LogHistogram.record``, the pure twin, and the old
  implementation (``bisect_left`` over the 15 exported bounds, one list per series:
  the baseline);
* ``core-histogram-observe``: the same through ``hapax.metrics.Histogram.observe`` (a
  label-set lookup, then the record), as the after-response stage calls it, against
  the old ``observe``;
* ``core-histogram-export``: the cumulative counts at the 15 exported bounds, and a merge
  of another worker's exported counts (what a node-wide /metrics scrape does per series).

Run: ``pytest benchmarks/test_bench_core_histogram.py --benchmark-only``.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin

from hapax.metrics import LATENCY_BUCKETS, Histogram

N = 10_000
_rng = random.Random(3)
VALUES = [20e-6 * (3e6 ** _rng.random()) for _ in range(N)]  # 20 µs .. 60 s


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    return twin("histogram", request.param)


class BisectHistogram:
    """The implementation before the core histogram (hapax/metrics.py at v0.1)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value


def test_record(core: ModuleType, measure: Any) -> None:
    h = core.LogHistogram()
    record = h.record

    def run() -> None:
        for v in VALUES:
            record(v)

    measure(run, ops=N)
    assert h.count >= N


def test_record_bisect(measure: Any) -> None:
    bounds = LATENCY_BUCKETS
    s = [0.0] * (len(bounds) + 2)

    def run() -> None:
        for v in VALUES:
            s[bisect_left(bounds, v)] += 1
            s[-1] += v

    measure(run, ops=N, baseline=True)
    assert sum(s[:-1]) >= N


@pytest.mark.parametrize("kind", ["core", "bisect"])
def test_observe(kind: str, measure: Any, benchmark: Any) -> None:
    benchmark.group = "core-histogram-observe"
    h: Any = Histogram("x_seconds", "x", ("route",)) if kind == "core" else BisectHistogram()
    observe = h.observe
    key = ("chat",)

    def run() -> None:
        for v in VALUES:
            observe(key, v)

    measure(run, ops=N, baseline=kind == "bisect")


def test_export_and_merge(core: ModuleType, measure: Any, benchmark: Any) -> None:
    benchmark.group = "core-histogram-export"
    a, b = core.LogHistogram(), core.LogHistogram()
    for v in VALUES:
        a.record(v)
        b.record(v / 2)
    bounds = (*LATENCY_BUCKETS, float("inf"))
    exported = b.counts()

    def run() -> None:
        for _ in range(100):
            m = core.LogHistogram()
            m.merge(a)
            m.add_counts(exported, b.sum)
            m.cumulative(bounds)

    measure(run, ops=100)


@pytest.fixture(autouse=True)
def _group(request: pytest.FixtureRequest, benchmark: Any) -> None:
    if request.node.originalname in ("test_record", "test_record_bisect"):
        benchmark.group = "core-histogram-record"
