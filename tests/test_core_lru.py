"""The byte-bounded LRU (hapax._core.lru): one suite over both twins, plus a model-based
property test of each against a plain reference implementation."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from core_twins import twins
from hypothesis import given, settings
from hypothesis import strategies as st

impl = twins("lru")


def test_get_put_and_counters(impl: ModuleType) -> None:
    lru = impl.LRU(100)
    assert lru.get(b"a", 0.0) is None
    assert lru.put(b"a", "A", 40, 10.0) is True
    assert lru.get(b"a", 1.0) == "A"
    assert (lru.hits, lru.misses, lru.evictions, lru.bytes, len(lru)) == (1, 1, 0, 40, 1)
    assert lru.max_bytes == 100


def test_least_recently_used_is_evicted_first(impl: ModuleType) -> None:
    lru = impl.LRU(100)
    for key in (b"a", b"b", b"c"):
        lru.put(key, key.decode(), 30, 10.0)
    lru.get(b"a", 0.0)  # b is now the least recently used
    assert lru.put(b"d", "d", 30, 10.0)
    assert b"b" not in lru
    assert [k in lru for k in (b"a", b"c", b"d")] == [True, True, True]
    assert lru.evictions == 1 and lru.bytes == 90
    assert lru.put(b"e", "e", 100, 10.0)  # everything else makes room
    assert len(lru) == 1 and lru.bytes == 100 and lru.evictions == 4


def test_an_entry_bigger_than_the_bound_is_refused(impl: ModuleType) -> None:
    lru = impl.LRU(100)
    lru.put(b"a", "a", 10, 10.0)
    assert lru.put(b"big", "x", 101, 10.0) is False
    assert b"big" not in lru and lru.get(b"a", 0.0) == "a" and lru.evictions == 0
    # Refusing a new value for a held key drops the old one (it is no longer current).
    assert lru.put(b"a", "a2", 101, 10.0) is False
    assert b"a" not in lru and lru.bytes == 0


def test_expired_entries_miss_and_leave(impl: ModuleType) -> None:
    lru = impl.LRU(100)
    lru.put(b"a", "a", 10, 5.0)
    assert lru.get(b"a", 4.999) == "a"
    assert lru.get(b"a", 5.0) is None
    assert b"a" not in lru and lru.bytes == 0 and lru.misses == 1 and lru.evictions == 0


def test_replace_delete_clear(impl: ModuleType) -> None:
    lru = impl.LRU(100)
    lru.put(b"a", "a", 10, 5.0)
    lru.put(b"a", "a2", 30, 50.0)
    assert lru.get(b"a", 10.0) == "a2" and lru.bytes == 30 and len(lru) == 1
    assert lru.delete(b"a") is True and lru.delete(b"a") is False
    assert lru.bytes == 0
    for i in range(5):
        lru.put(i, i, 1, 1.0)
    lru.clear()
    assert len(lru) == 0 and lru.bytes == 0 and lru.get(0, 0.0) is None
    lru.put(b"z", "z", 1, 1.0)  # usable after clear
    assert lru.get(b"z", 0.0) == "z"


def test_bad_arguments(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.LRU(-1)
    lru = impl.LRU(0)
    assert lru.put(b"a", "a", 0, 1.0) is True  # a zero-size entry fits a zero bound
    with pytest.raises(ValueError):
        lru.put(b"b", "b", -1, 1.0)


class Reference:
    """The obvious O(n) implementation: a list in recency order."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: list[list[Any]] = []  # [key, value, size, expires_at], last = newest
        self.hits = self.misses = self.evictions = 0

    @property
    def bytes(self) -> int:
        return sum(item[2] for item in self.items)

    def _find(self, key: Any) -> int | None:
        return next((i for i, item in enumerate(self.items) if item[0] == key), None)

    def get(self, key: Any, now: float) -> Any:
        i = self._find(key)
        if i is None or now >= self.items[i][3]:
            if i is not None:
                del self.items[i]
            self.misses += 1
            return None
        item = self.items.pop(i)
        self.items.append(item)
        self.hits += 1
        return item[1]

    def put(self, key: Any, value: Any, size: int, expires_at: float) -> bool:
        i = self._find(key)
        if i is not None:
            del self.items[i]
        if size > self.max_bytes:
            return False
        while self.bytes + size > self.max_bytes:
            del self.items[0]
            self.evictions += 1
        self.items.append([key, value, size, expires_at])
        return True

    def delete(self, key: Any) -> bool:
        i = self._find(key)
        if i is None:
            return False
        del self.items[i]
        return True


KEY_LIST = [b"a", b"b", b"c", b"d", b"e", b"f"]
KEYS = st.sampled_from(KEY_LIST)
OPS = st.lists(st.one_of(
    st.tuples(st.just("get"), KEYS, st.integers(0, 20)),
    st.tuples(st.just("put"), KEYS, st.integers(0, 60), st.integers(0, 20)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("clear")),
), max_size=60)


@settings(max_examples=300)
@given(max_bytes=st.integers(0, 100), ops=OPS)
def test_behaves_like_the_reference(impl: ModuleType, max_bytes: int,
                                    ops: list[tuple[Any, ...]]) -> None:
    lru, ref = impl.LRU(max_bytes), Reference(max_bytes)
    for n, op in enumerate(ops):
        if op[0] == "get":
            assert lru.get(op[1], float(op[2])) == ref.get(op[1], float(op[2]))
        elif op[0] == "put":
            value = (op[1], n)
            assert lru.put(op[1], value, op[2], float(op[3])) == ref.put(op[1], value, op[2],
                                                                           float(op[3]))
        elif op[0] == "delete":
            assert lru.delete(op[1]) == ref.delete(op[1])
        else:
            lru.clear()
            ref.items.clear()
        assert (lru.hits, lru.misses, lru.evictions) == (ref.hits, ref.misses, ref.evictions)
        assert lru.bytes == ref.bytes <= max_bytes
        assert len(lru) == len(ref.items)
        assert all((key in lru) == (ref._find(key) is not None) for key in KEY_LIST)
