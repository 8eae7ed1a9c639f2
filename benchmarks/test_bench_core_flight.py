"""The replay log of a shared stream (hapax._core.flight), compiled against pure-Python.

* ``core-flight-fanout``: a 100-event chat stream (~230-byte events) shared by 20
  readers: each event is appended, then every reader reads it (what a coalesced stream
  costs per event; the log never has to drop anything).
* ``core-flight-bounded``: a 1 000-event stream through a 16 KiB log with one reader
  that reads after every event: every append drops the oldest event.

Run: ``pytest benchmarks/test_bench_core_flight.py --benchmark-only``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin

EVENT = (b'data: {"id":"chatcmpl-AZ3kQ8vXyJ0bT1nP5rL2mW7cD9eF4","object":"chat.completion.chunk"'
         b',"created":1732590000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
         b'"delta":{"content":" fox"},"logprobs":null,"finish_reason":null}]}\n\n')


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return twin("flight", request.param)


@pytest.mark.benchmark(group="core-flight-fanout: 100 events, 20 readers (µs per event)")
def test_fanout(measure: Any, impl: ModuleType) -> None:
    def run() -> None:
        log = impl.ReplayLog(4 * 1024 * 1024)
        readers = [log.subscribe() for _ in range(20)]
        append, read = log.append, log.read
        for _ in range(100):
            append(EVENT)
            for sid in readers:
                read(sid)
        log.close()

    measure(run, ops=100, rounds=50, baseline=impl.__name__.endswith("_py"))


@pytest.mark.benchmark(group="core-flight-bounded: append to a full 16 KiB log")
def test_bounded(measure: Any, impl: ModuleType) -> None:
    def run() -> None:
        log = impl.ReplayLog(16 * 1024)
        sid = log.subscribe()
        append, read = log.append, log.read
        for _ in range(1000):
            append(EVENT)
            read(sid)
        assert not log.whole

    measure(run, ops=1000, baseline=impl.__name__.endswith("_py"))
