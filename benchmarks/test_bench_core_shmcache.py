"""The shared response-cache store (hapax._core.shmcache), compiled against pure-Python,
next to a per-process LRU baseline (an OrderedDict, as a store that is not shared).

Keys are 16-byte fingerprints; the store holds 10 000 values of 1000 bytes (one 1 KiB
block each; a 10 MiB arena), so every operation works on a full, realistic table:

* ``core-shmcache-get-hit``: ``get`` of held keys (the shared store copies the value out
  under its cross-process lock; the per-worker LRU hands back a reference);
* ``core-shmcache-put-evict``: ``put`` of new keys into the full store (each evicts the
  least recently used entry; the shared store copies the value in).

Each round performs 1 000 operations; the per-operation table at the end gives µs/op and
the ratio to the per-worker LRU (the baseline).  Run:
``pytest benchmarks/test_bench_core_shmcache.py --benchmark-only``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import pytest
from twins import twin

from hapax._core import NO_EXTENSIONS

STORES = [
    pytest.param("shm-c", marks=pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS")),
    "shm-py",
    "lru",
]
ENTRIES = 10_000
BLOCK = 1024
OPS = 1_000
KEYS = [os.urandom(16) for _ in range(ENTRIES)]
VALUE = os.urandom(1000)
FOREVER = 1 << 62


class WorkerLRU:
    """Baseline: a per-process LRU on an OrderedDict, bounded by value bytes — what one
    worker would pay for a store that is not shared."""

    def __init__(self, max_bytes: int) -> None:
        self.entries: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self.max_bytes = max_bytes
        self.bytes = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes, now: int) -> Any:
        found = self.entries.get(key)
        if found is None or found[1] <= now:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, value: bytes, expires: int) -> bool:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[0])
        while self.bytes + len(value) > self.max_bytes and self.entries:
            _, (gone, _) = self.entries.popitem(last=False)
            self.bytes -= len(gone)
            self.evictions += 1
        self.entries[key] = (value, expires)
        self.bytes += len(value)
        return True


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "lru":
        # Bound by the same byte total as the shared store's arena holds values.
        made: Any = WorkerLRU(ENTRIES * len(VALUE))
        made.name = "lru"
    else:
        impl = twin("shmcache", request.param[4:])
        made = impl.SharedLRU(ENTRIES * BLOCK, block_size=BLOCK)
    for key in KEYS:
        made.put(key, VALUE, FOREVER)
    return made


def is_baseline(store: Any) -> bool:
    return isinstance(store, WorkerLRU)


def counters(store: Any) -> Any:
    return store


@pytest.mark.benchmark(group="core-shmcache-get-hit: 1000 hits in a 10 000-entry store")
def test_shmcache_get_hit(measure: Any, store: Any) -> None:
    keys = KEYS[::ENTRIES // OPS]
    get = store.get

    def run() -> None:
        for key in keys:
            get(key, 1)

    measure(run, ops=OPS, baseline=is_baseline(store))
    assert counters(store).misses == 0 and len(counters(store)) == ENTRIES


@pytest.mark.benchmark(group="core-shmcache-put-evict: 1000 inserts into a full store")
def test_shmcache_put_evict(measure: Any, store: Any) -> None:
    put = store.put
    batches = [[os.urandom(16) for _ in range(OPS)] for _ in range(20)]
    it = iter(batches)

    def run() -> None:
        for key in next(it):  # fresh keys every round: each put evicts one entry
            put(key, VALUE, FOREVER)

    measure(run, ops=OPS, rounds=15, warmup_rounds=2, baseline=is_baseline(store))
    assert len(counters(store)) == ENTRIES and counters(store).evictions >= OPS
