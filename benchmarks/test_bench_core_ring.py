"""The ring buffer and fair queue (hapax._core.ring), compiled vs pure, side by side.

* ``core-ring-cycle``: push then pop one entry, 1000 times, on a ring of 1024 — a queue
  that never grows (the steady state of a provider queue that keeps up);
* ``core-fairq-drain``: 300 waiters from 30 keys in 3 priority classes queued, then all
  popped in priority / round-robin order (a burst against a saturated provider);
* ``core-fairq-leave``: 300 waiters queued, every other one discarded (clients that
  hang up while waiting), the rest popped.

Run: ``pytest benchmarks/test_bench_core_ring.py --benchmark-only``.  The per-request
cost of admission is one push and one pop (plus a discard for a waiter that leaves):
divide a round by its operation count.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin

WAITERS = [(f"w{i}", f"key{i % 30}", i % 3) for i in range(300)]


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def ring(request: pytest.FixtureRequest) -> ModuleType:
    return twin("ring", request.param)


@pytest.mark.benchmark(group="core-ring-cycle: 1000 x (push, pop)")
def test_ring_push_pop(benchmark: Any, ring: ModuleType) -> None:
    r = ring.Ring(1024)

    def cycle() -> int:
        push, pop = r.push, r.pop
        for i in range(1000):
            push(i)
            pop()
        return len(r)

    assert benchmark(cycle) == 0


@pytest.mark.benchmark(group="core-fairq-drain: 300 waiters, 30 keys, 3 classes")
def test_fair_queue_drain(benchmark: Any, ring: ModuleType) -> None:
    def drain() -> list[Any]:
        q = ring.FairQueue(1000)
        for item, key, cls in WAITERS:
            q.push(item, key, cls)
        return [q.pop() for _ in range(len(q))]

    out = benchmark(drain)
    assert len(out) == 300 and out[0] == "w0" and out[-1] == "w299"


@pytest.mark.benchmark(group="core-fairq-leave: 300 waiters, half leave")
def test_fair_queue_discard(benchmark: Any, ring: ModuleType) -> None:
    def leave() -> int:
        q = ring.FairQueue(1000)
        entries = [q.push(item, key, cls) for item, key, cls in WAITERS]
        for e in entries[::2]:
            q.discard(e)
        n = 0
        while len(q):
            q.pop()
            n += 1
        return n

    assert benchmark(leave) == 150


# -- admission: what a request to a provider with max_concurrent pays --------------------


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def shm(request: pytest.FixtureRequest) -> ModuleType:
    return twin("shm", request.param)


@pytest.mark.benchmark(group="core-admission: 1000 x (acquire a free slot, release)")
def test_admission_fast_path(benchmark: Any, shm: ModuleType, loop: Any) -> None:
    """The common case: a free slot.  Two atomic updates of shared memory (try_acquire,
    add) and a histogram observation; the compiled shm unit does the atomics."""
    from hapax.config import from_dict
    from hapax.metrics import Metrics
    from hapax.node import NodeState
    from hapax.pipeline.admission import build_queues
    from hapax.pipeline.exchange import Exchange

    config = from_dict({"providers": {"p": {"kind": "mock", "max_concurrent": 8}},
                        "models": {"m": {"targets": [{"provider": "p"}]}}})
    node = NodeState(1024)
    node.counters = shm.SharedCounters(1024)
    queue = build_queues(config, node, Metrics())["p"]
    ex = Exchange.__new__(Exchange)

    async def cycle() -> int:
        acquire = queue.acquire
        for _ in range(1000):
            slot = await acquire(ex)
            slot.release()
        return queue.in_flight()

    assert benchmark(lambda: loop.run_until_complete(cycle())) == 0
