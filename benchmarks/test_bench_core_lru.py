"""The response cache's LRU (hapax._core.lru), compiled against pure-Python, side by side.

Keys are 16-byte fingerprints, as the cache uses them; the store holds 10 000 entries of
~1 KiB each (a 10 MiB bound), so every operation works on a full, realistic table:

* ``core-lru-get-hit``: ``get`` of held keys (a hit moves the entry to the front);
* ``core-lru-get-miss``: ``get`` of unknown keys;
* ``core-lru-put-evict``: ``put`` of new keys into the full store (each evicts the least
  recently used entry);
* ``core-lru-put-replace``: ``put`` of held keys (replacing their value).

Each round performs 1 000 operations; the per-operation table at the end gives µs/op
and the C/py ratio.  Run: ``pytest benchmarks/test_bench_core_lru.py --benchmark-only``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest

from hapax._core import NO_EXTENSIONS

IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS")),
    "py",
]
ENTRIES = 10_000
SIZE = 1024
OPS = 1_000
KEYS = [os.urandom(16) for _ in range(ENTRIES)]
NEW_KEYS = [os.urandom(16) for _ in range(OPS)]
VALUE = (200, ((b"content-type", b"application/json"),), b"x" * 900, None, False)


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"hapax._core._lru_{request.param}")


def full(impl: ModuleType) -> Any:
    lru = impl.LRU(ENTRIES * SIZE)
    for key in KEYS:
        lru.put(key, VALUE, SIZE, 1e12)
    assert len(lru) == ENTRIES
    return lru


def is_baseline(impl: ModuleType) -> bool:
    return impl.__name__.endswith("_py")


@pytest.mark.benchmark(group="core-lru-get-hit: 1000 hits in a 10 000-entry store")
def test_lru_get_hit(measure: Any, impl: ModuleType) -> None:
    lru = full(impl)
    keys = KEYS[::ENTRIES // OPS]
    get = lru.get

    def run() -> None:
        for key in keys:
            get(key, 1.0)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert lru.misses == 0


@pytest.mark.benchmark(group="core-lru-get-miss: 1000 misses in a 10 000-entry store")
def test_lru_get_miss(measure: Any, impl: ModuleType) -> None:
    lru = full(impl)
    get = lru.get

    def run() -> None:
        for key in NEW_KEYS:
            get(key, 1.0)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert lru.hits == 0


@pytest.mark.benchmark(group="core-lru-put-evict: 1000 inserts into a full store")
def test_lru_put_evict(measure: Any, impl: ModuleType) -> None:
    lru = full(impl)
    put = lru.put
    batches = [[os.urandom(16) for _ in range(OPS)] for _ in range(20)]
    it = iter(batches)

    def run() -> None:
        for key in next(it):  # fresh keys every round: each put evicts one entry
            put(key, VALUE, SIZE, 1e12)

    measure(run, ops=OPS, rounds=15, warmup_rounds=2, baseline=is_baseline(impl))
    assert len(lru) == ENTRIES and lru.evictions >= OPS


@pytest.mark.benchmark(group="core-lru-put-replace: 1000 replacements")
def test_lru_put_replace(measure: Any, impl: ModuleType) -> None:
    lru = full(impl)
    put = lru.put
    keys = KEYS[::ENTRIES // OPS]

    def run() -> None:
        for key in keys:
            put(key, VALUE, SIZE, 1e12)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert len(lru) == ENTRIES and lru.evictions == 0
