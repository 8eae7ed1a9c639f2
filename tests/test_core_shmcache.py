"""The shared response-cache store (hapax._core.shmcache): one suite over both twins —
single-process behaviour, a model-based property test against a plain reference LRU,
values crossing forked processes, and concurrent writers that must not corrupt it.

``check`` walks the raw shared memory with the layout documented in ``_shmcache_py``, so
it also proves both twins lay memory out the same way."""

from __future__ import annotations

import importlib
import os
import random
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from core_twins import needs_c, twins
from hypothesis import given, settings
from hypothesis import strategies as st

impl = twins("shmcache")


def key(n: int, prefix: bytes = b"") -> bytes:
    return (prefix + n.to_bytes(8, "little") + b"k" * 16)[:16]


def check(store: Any) -> dict[str, int]:
    """Assert the shared memory is one consistent table; return its header."""
    py = importlib.import_module("hapax._core._shmcache_py")
    (_, _, _, entries_off, buckets_off, links_off, _, _) = py.layout(
        store.max_bytes, store.max_entries, store.block_size, store.nbuckets)
    raw = bytes(store._map)
    q = struct.unpack_from(f"{len(raw) // 8}q", raw)
    h = {name: q[getattr(py, name)] for name in (
        "LOCK", "HITS", "MISSES", "EVICTIONS", "BYTES", "ENTRIES", "HEAD", "TAIL",
        "FREE_BLOCK", "FREE_BLOCKS", "FREE_ENTRY")}
    assert h["LOCK"] == 0

    def field(e: int, f: int) -> int:
        return q[entries_off // 8 + e * py.RECORD_SLOTS + py.KEY_SLOTS + f]

    def entry_key(e: int) -> bytes:
        return raw[entries_off + e * py.RECORD:entries_off + e * py.RECORD + 16]

    used = [e for e in range(store.max_entries) if field(e, py.USED)]
    assert len(used) == h["ENTRIES"]
    # The LRU list links exactly the used entries, both ways.
    order, prev, e = [], -1, h["HEAD"]
    while e >= 0:
        assert field(e, py.PREV) == prev
        order.append(e)
        prev, e = e, field(e, py.NEXT)
    assert prev == h["TAIL"] and sorted(order) == used
    # Every used entry is found through its bucket's chain; chains hold nothing else.
    chained = []
    for b in range(store.nbuckets):
        e = q[buckets_off // 8 + b]
        while e >= 0:
            assert field(e, py.USED)
            assert int.from_bytes(entry_key(e)[:8], "little") % store.nbuckets == b
            chained.append(e)
            e = field(e, py.CHAIN)
    assert sorted(chained) == used
    assert len({entry_key(e) for e in used}) == len(used)
    # Free records: the rest.
    free, e = [], h["FREE_ENTRY"]
    while e >= 0:
        assert not field(e, py.USED)
        free.append(e)
        e = field(e, py.CHAIN)
    assert sorted(free + used) == list(range(store.max_entries))
    # Blocks: each value's chain, then the free list, partition the arena.
    blocks: list[int] = []
    for e in used:
        assert (field(e, py.LEN) + store.block_size - 1) // store.block_size == field(e, py.NBLK)
        b, n = field(e, py.BLOCK), 0
        while b >= 0:
            blocks.append(b)
            b, n = q[links_off // 8 + b], n + 1
        assert n == field(e, py.NBLK)
    b, n = h["FREE_BLOCK"], 0
    while b >= 0:
        blocks.append(b)
        b, n = q[links_off // 8 + b], n + 1
    assert n == h["FREE_BLOCKS"]
    assert sorted(blocks) == list(range(store.nblocks))
    assert h["BYTES"] == sum(field(e, py.LEN) for e in used) <= store.max_bytes
    return h


# -- one process -------------------------------------------------------------------------


def test_get_put_and_counters(impl: ModuleType) -> None:
    s = impl.SharedLRU(4096, block_size=1024)
    assert (s.max_bytes, s.max_entries, s.nblocks) == (4096, 4, 4)
    assert s.get(key(1), 0) is None
    value = os.urandom(2500)  # three blocks
    assert s.put(key(1), value, 10) is True
    assert s.get(key(1), 9) == value and key(1) in s and key(2) not in s
    assert s.put(key(2), b"", 10) is True and s.get(key(2), 0) == b""
    assert (s.hits, s.misses, s.evictions, s.bytes, len(s)) == (2, 1, 0, 2500, 2)
    check(s)


def test_expired_entries_miss_and_leave(impl: ModuleType) -> None:
    s = impl.SharedLRU(1024, block_size=64)
    s.put(key(1), b"a" * 100, 5_000)
    assert s.get(key(1), 4_999) == b"a" * 100
    assert s.get(key(1), 5_000) is None
    assert key(1) not in s and s.bytes == 0 and len(s) == 0
    assert (s.hits, s.misses, s.evictions) == (1, 1, 0)
    check(s)


def test_least_recently_used_is_evicted_first(impl: ModuleType) -> None:
    s = impl.SharedLRU(24, block_size=8)  # three blocks
    for n in (1, 2, 3):
        s.put(key(n), bytes([n]) * 8, 10)
    s.get(key(1), 0)  # 2 is now the least recently used
    assert s.put(key(4), b"d" * 8, 10)
    assert [key(n) in s for n in (1, 2, 3, 4)] == [True, False, True, True]
    assert s.evictions == 1
    assert s.put(key(5), b"e" * 17, 10)  # needs all three blocks: everything else goes
    assert len(s) == 1 and s.evictions == 4 and s.get(key(5), 0) == b"e" * 17
    check(s)


def test_entry_records_bound_the_count(impl: ModuleType) -> None:
    s = impl.SharedLRU(1024, max_entries=2, block_size=8)
    for n in (1, 2, 3):
        assert s.put(key(n), b"x", 10)
    assert [key(n) in s for n in (1, 2, 3)] == [False, True, True]
    assert s.evictions == 1 and len(s) == 2
    check(s)


def test_a_value_bigger_than_the_arena_is_refused(impl: ModuleType) -> None:
    s = impl.SharedLRU(64, block_size=8)
    s.put(key(1), b"a", 10)
    assert s.put(key(2), b"x" * 65, 10) is False
    assert key(2) not in s and s.get(key(1), 0) == b"a" and s.evictions == 0
    # Refusing a new value for a held key drops the old one (it is no longer current).
    assert s.put(key(1), b"x" * 65, 10) is False
    assert key(1) not in s and s.bytes == 0
    assert s.put(key(3), b"x" * 64, 10) is True  # exactly the arena fits
    check(s)


def test_replace_delete_clear(impl: ModuleType) -> None:
    s = impl.SharedLRU(1024, block_size=64)
    s.put(key(1), b"a" * 10, 5)
    s.put(key(1), b"b" * 300, 50)
    assert s.get(key(1), 10) == b"b" * 300 and s.bytes == 300 and len(s) == 1
    assert s.delete(key(1)) is True and s.delete(key(1)) is False
    for n in range(5):
        s.put(key(n), b"v", 1)
    s.clear()
    assert len(s) == 0 and s.bytes == 0 and s.get(key(0), 0) is None
    assert s.hits == 1 and s.misses == 1  # the counters stay
    s.put(key(9), b"z", 1)
    assert s.get(key(9), 0) == b"z"
    check(s)


def test_hash_collisions(impl: ModuleType) -> None:
    s = impl.SharedLRU(8 * 300, max_entries=300, block_size=8, buckets=3)
    keys = [key(n, b"same") for n in range(300)]
    for n, k in enumerate(keys):
        assert s.put(k, str(n).encode(), 10)
    assert all(s.get(k, 0) == str(n).encode() for n, k in enumerate(keys))
    for k in keys[::2]:
        assert s.delete(k)
    assert [k in s for k in keys[:4]] == [False, True, False, True]
    assert len(s) == 150 and s.evictions == 0
    check(s)


def test_bad_arguments(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.SharedLRU(-1)
    with pytest.raises(ValueError):
        impl.SharedLRU(1024, block_size=12)
    with pytest.raises(ValueError):
        impl.SharedLRU(1024, max_entries=0)
    s = impl.SharedLRU(0)
    assert s.max_bytes == 0 and s.put(key(1), b"", 1) is True  # an empty value fits
    assert s.put(key(2), b"x", 1) is False
    for bad in (b"short", b"x" * 17):
        with pytest.raises(ValueError):
            s.get(bad, 0)
        with pytest.raises(ValueError):
            s.put(bad, b"v", 1)


class Reference:
    """The obvious O(n) implementation: a list in recency order, counting blocks."""

    def __init__(self, max_bytes: int, max_entries: int, block_size: int) -> None:
        self.nblocks, self.max_entries, self.bs = max_bytes // block_size, max_entries, block_size
        self.items: list[list[Any]] = []  # [key, value, expires], last = newest
        self.hits = self.misses = self.evictions = 0

    def blocks(self, value: bytes) -> int:
        return (len(value) + self.bs - 1) // self.bs

    def _find(self, k: bytes) -> int | None:
        return next((i for i, item in enumerate(self.items) if item[0] == k), None)

    def get(self, k: bytes, now: int) -> bytes | None:
        i = self._find(k)
        if i is None or now >= self.items[i][2]:
            if i is not None:
                del self.items[i]
            self.misses += 1
            return None
        item = self.items.pop(i)
        self.items.append(item)
        self.hits += 1
        return bytes(item[1])

    def put(self, k: bytes, value: bytes, expires: int) -> bool:
        i = self._find(k)
        if i is not None:
            del self.items[i]
        need = self.blocks(value)
        if need > self.nblocks:
            return False
        while (sum(self.blocks(it[1]) for it in self.items) + need > self.nblocks
               or len(self.items) >= self.max_entries):
            del self.items[0]
            self.evictions += 1
        self.items.append([k, value, expires])
        return True

    def delete(self, k: bytes) -> bool:
        i = self._find(k)
        if i is None:
            return False
        del self.items[i]
        return True


KEY_LIST = [key(n, b"p") for n in range(6)]
KEYS = st.sampled_from(KEY_LIST)
OPS = st.lists(st.one_of(
    st.tuples(st.just("get"), KEYS, st.integers(0, 20)),
    st.tuples(st.just("put"), KEYS, st.integers(0, 40), st.integers(0, 20)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("clear")),
), max_size=50)


@settings(max_examples=200, deadline=None)
@given(max_bytes=st.integers(0, 80), max_entries=st.integers(1, 5),
       buckets=st.integers(1, 3), ops=OPS)
def test_behaves_like_the_reference(impl: ModuleType, max_bytes: int, max_entries: int,
                                    buckets: int, ops: list[tuple[Any, ...]]) -> None:
    s = impl.SharedLRU(max_bytes, max_entries=max_entries, block_size=8, buckets=buckets)
    ref = Reference(max_bytes, max_entries, 8)
    for n, op in enumerate(ops):
        if op[0] == "get":
            assert s.get(op[1], op[2]) == ref.get(op[1], op[2])
        elif op[0] == "put":
            value = (op[1][:1] + n.to_bytes(2, "little") + b"v" * 40)[:op[2]]
            assert s.put(op[1], value, op[3]) == ref.put(op[1], value, op[3])
        elif op[0] == "delete":
            assert s.delete(op[1]) == ref.delete(op[1])
        else:
            s.clear()
            ref.items.clear()
        assert (s.hits, s.misses, s.evictions) == (ref.hits, ref.misses, ref.evictions)
        assert s.bytes == sum(len(it[1]) for it in ref.items) and len(s) == len(ref.items)
        assert all((k in s) == (ref._find(k) is not None) for k in KEY_LIST)
    check(s)


# -- across processes --------------------------------------------------------------------


def in_children(count: int, work: Callable[[int], int]) -> list[int]:
    """Run ``work(child_index)`` in ``count`` forked processes at once; their exit codes."""
    pids = []
    for n in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 255
            try:
                code = work(n)
            finally:
                os._exit(code)
        pids.append(pid)
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        codes.append(os.WEXITSTATUS(status))
    return codes


def test_a_value_crosses_processes_both_ways(impl: ModuleType) -> None:
    s = impl.SharedLRU(64 * 1024, block_size=1024)
    from_child, from_parent = os.urandom(5000), os.urandom(3000)
    s.put(key(2), from_parent, 100)

    def work(_: int) -> int:
        ok = s.get(key(2), 0) == from_parent
        s.put(key(1), from_child, 100)
        return 0 if ok else 1

    assert in_children(1, work) == [0]
    assert s.get(key(1), 0) == from_child
    assert (s.hits, len(s)) == (2, 2)  # the child's hit counts here too
    check(s)


WRITERS = 4
ROUNDS = 1500


def payload(k: int, writer: int, seq: int, length: int) -> bytes:
    """A value that names its key and write: a torn or misplaced value cannot pass."""
    head = b"K%dW%dS%d|" % (k, writer, seq)
    return (head * (length // len(head) + 1))[:max(length, len(head))]


def test_concurrent_writers_keep_the_store_consistent(impl: ModuleType) -> None:
    # A small arena and few records: puts evict all the time, values span many blocks.
    s = impl.SharedLRU(64 * 40, max_entries=10, block_size=64, buckets=4)
    nkeys = 12
    gets = sum(1 for i in range(ROUNDS) if i % 10 < 5)

    def work(writer: int) -> int:
        rng = random.Random(writer)
        for i in range(ROUNDS):
            k = rng.randrange(nkeys)
            if i % 10 < 5:
                got = s.get(key(k), 0)
                if got is not None:
                    fields = got.split(b"|", 1)[0]
                    kk, rest = fields[1:].split(b"W")
                    w, seq = rest.split(b"S")
                    if int(kk) != k or got != payload(k, int(w), int(seq), len(got)):
                        return 1
            elif i % 10 < 9:
                s.put(key(k), payload(k, writer, i, rng.randrange(0, 600)), 1 << 60)
            elif i % 100 == 9:
                s.clear()
            else:
                s.delete(key(k))
        return 0

    assert in_children(WRITERS, work) == [0] * WRITERS
    h = check(s)
    assert s.hits + s.misses == WRITERS * gets
    assert h["EVICTIONS"] == s.evictions > 0


@needs_c
def test_a_lock_held_by_a_dead_process_is_taken_over() -> None:
    impl = importlib.import_module("hapax._core._shmcache_c")
    s = impl.SharedLRU(4096, block_size=64)
    s.put(key(1), b"old", 100)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)  # reaped: kill(pid, 0) now fails with ESRCH
    struct.pack_into("q", s._map, 0, pid)  # as if it died inside an operation
    assert s.put(key(2), b"new", 100) is True
    # The table it may have left half-updated was cleared.
    assert key(1) not in s and s.get(key(2), 0) == b"new" and s.recoveries == 1
    check(s)


@needs_c
def test_a_process_killed_inside_an_operation_does_not_wedge_the_store() -> None:
    # A child stores big values in a loop (it holds the lock nearly all the time) and is
    # killed; the lock word names the child (its own pid after the fork), so the parent
    # takes a lock it left held over instead of waiting forever.
    impl = importlib.import_module("hapax._core._shmcache_c")
    s = impl.SharedLRU(1 << 20, block_size=1024)
    big = os.urandom(256 * 1024)
    for _ in range(50):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(r)
            s.put(key(1), big, 1 << 60)
            os.write(w, b"!")
            while True:
                s.put(key(1), big, 1 << 60)
        os.close(w)
        assert os.read(r, 1) == b"!"
        os.close(r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert s.get(key(1), 0) in (big, None)  # whole or cleared, never torn
        check(s)
        if s.recoveries:
            break
    assert s.recoveries >= 1
