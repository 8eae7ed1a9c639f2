"""Shared benchmark helpers.

Run: ``pytest benchmarks --benchmark-only`` from the repository root.

Many benchmarks here time a *batch* of operations per round (N requests driven inside one
``loop.run_until_complete``) so the event loop's own start/stop cost is amortised.  The
``measure`` fixture runs such a batch under pytest-benchmark, records the process's CPU
time as well as wall time, and the run ends with a "per operation" table: wall and CPU µs
per op, and the CPU ratio to the baseline of the same group, measured in the same run (on
a shared machine, ratios travel better than absolute numbers, and CPU time better than
wall time, which also counts waiting for the CPU).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# --- per-operation accounting -------------------------------------------------------


@dataclass
class PerOp:
    group: str
    name: str
    ops: int
    wall_us: float  # median round wall time / ops
    wall_min_us: float
    cpu_us: float  # median round process CPU time / ops
    baseline: bool


_RESULTS: list[PerOp] = []


class Measure:
    """``measure(fn, ops=N)`` — benchmark ``fn`` (which performs N operations)."""

    def __init__(self, benchmark: Any) -> None:
        self.benchmark = benchmark

    def __call__(self, fn: Callable[[], Any], *, ops: int, rounds: int = 15,
                 warmup_rounds: int = 2, baseline: bool = False) -> PerOp | None:
        cpu: list[float] = []

        def timed() -> None:
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)

        bench = self.benchmark
        bench.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        stats = getattr(bench, "stats", None)
        if stats is None or not stats:  # --benchmark-disable: ran once, nothing to report
            return None
        measured = cpu[warmup_rounds:] or cpu
        result = PerOp(
            group=bench.group or "",
            name=bench.name,
            ops=ops,
            wall_us=stats.stats.median / ops * 1e6,
            wall_min_us=stats.stats.min / ops * 1e6,
            cpu_us=statistics.median(measured) / ops * 1e6,
            baseline=baseline,
        )
        bench.extra_info.update(ops_per_round=ops, us_per_op_median=round(result.wall_us, 3),
                                cpu_us_per_op_median=round(result.cpu_us, 3))
        _RESULTS.append(result)
        return result


@pytest.fixture
def measure(benchmark: Any) -> Measure:
    return Measure(benchmark)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.write_sep("-", "per operation: wall median and min, process CPU median; ratio = CPU "
                       "vs the group's baseline (CPU time is the cost; wall time also counts "
                       "waiting for a busy machine)")
    groups: dict[str, list[PerOp]] = {}
    for r in _RESULTS:
        groups.setdefault(r.group, []).append(r)
    width = max(len(r.name) for r in _RESULTS)
    for group, rows in groups.items():
        base = next((r for r in rows if r.baseline), None)
        tr.write_line(f"[{group}]")
        for r in rows:
            ratio = f"{r.cpu_us / base.cpu_us:7.2f}x" if base and base.cpu_us else "      -"
            tr.write_line(f"  {r.name:<{width}}  median {r.wall_us:9.3f} µs  min "
                          f"{r.wall_min_us:9.3f} µs  cpu {r.cpu_us:9.3f} µs  {ratio}"
                          f"{'  (baseline)' if r.baseline else ''}  [{r.ops} ops/round]")


# --- event loop ------------------------------------------------------------------------


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop the gateway runs on (uvloop where installed)."""
    from hapax.server.worker import new_event_loop

    return new_event_loop()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = new_loop()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        lp.run_until_complete(lp.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        lp.close()
