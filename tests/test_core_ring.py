"""Ring buffer and fair queue (hapax._core.ring): one suite over both twins, and
model-based property tests against a plain-Python reference."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from core_twins import twins
from hypothesis import given, settings
from hypothesis import strategies as st

impl = twins("ring")


# -- Ring ---------------------------------------------------------------------------------


def test_ring_is_fifo_and_bounded(impl: ModuleType) -> None:
    r = impl.Ring(3)
    assert (r.capacity, len(r), r.used, r.full) == (3, 0, 0, False)
    for i in range(3):
        r.push(i)
    assert r.full and len(r) == 3
    with pytest.raises(OverflowError):
        r.push(3)
    assert r.peek() == 0
    assert [r.pop() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(IndexError):
        r.pop()
    with pytest.raises(IndexError):
        r.peek()


def test_ring_wraps_around(impl: ModuleType) -> None:
    r = impl.Ring(2)
    out = []
    for i in range(10):
        r.push(i)
        if len(r) == 2:
            out.append(r.pop())
    out += [r.pop()]
    assert out == list(range(10))


@pytest.mark.parametrize("capacity", [0, -1])
def test_ring_needs_a_positive_capacity(impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError):
        impl.Ring(capacity)


def test_discard_marks_and_the_ends_are_reclaimed_at_once(impl: ModuleType) -> None:
    r = impl.Ring(4)
    h = [r.push(x) for x in "abcd"]
    assert r.discard(h[1]) is True  # the middle: a tombstone that keeps its slot
    assert (len(r), r.used, r.full) == (3, 4, True)
    assert r.discard(h[1]) is False  # gone already
    assert r.discard(h[3]) is True  # the newest: its slot is free again at once
    assert (len(r), r.used) == (2, 3)
    assert r.discard(h[0]) is True  # the oldest: the head skips the tombstone behind it
    assert (len(r), r.used, r.peek()) == (1, 1, "c")
    r.push("e")
    assert [r.pop(), r.pop()] == ["c", "e"]
    assert r.discard(h[2]) is False  # popped: the handle is spent
    assert r.discard(10**9) is False and r.discard(-5) is False


# -- FairQueue ----------------------------------------------------------------------------


def test_better_classes_first(impl: ModuleType) -> None:
    q = impl.FairQueue(10)
    for item, cls in [("b1", 2), ("s1", 1), ("b2", 2), ("i1", 0), ("s2", 1)]:
        q.push(item, "k", cls)
    assert (q.count(0), q.count(1), q.count(2), q.ahead(1), len(q)) == (1, 2, 2, 3, 5)
    assert [q.pop() for _ in range(5)] == ["i1", "s1", "s2", "b1", "b2"]
    with pytest.raises(IndexError):
        q.pop()


def test_keys_of_a_class_take_turns(impl: ModuleType) -> None:
    q = impl.FairQueue(100)
    for i in range(10):
        q.push(f"a{i}", "noisy", 1)
    q.push("b0", "quiet", 1)
    q.push("b1", "quiet", 1)
    q.push("c0", "third", 1)
    out = [q.pop() for _ in range(len(q))]
    assert out[:6] == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert out[6:] == [f"a{i}" for i in range(3, 10)]


def test_bounded_in_total(impl: ModuleType) -> None:
    q = impl.FairQueue(3)
    entries = [q.push(i, i, i % 3) for i in range(3)]
    assert q.full
    with pytest.raises(OverflowError):
        q.push(9, "other", 0)
    assert q.discard(entries[1]) is True and not q.full
    q.push(9, "other", 0)
    with pytest.raises(ValueError):
        impl.FairQueue(0)


def test_discard(impl: ModuleType) -> None:
    q = impl.FairQueue(10)
    a = q.push("a", "k1", 1)
    b = q.push("b", "k2", 1)
    c = q.push("c", "k1", 1)
    assert a.alive and a.item == "a" and (a.key, a.cls) == ("k1", 1)
    assert q.discard(a) is True and not a.alive
    assert q.discard(a) is False
    assert q.discard(b) is True  # k2 had nothing else: it leaves the rotation
    assert q.pop() == "c" and not c.alive
    assert q.discard(c) is False
    assert len(q) == 0 and q.count(1) == 0


def test_class_out_of_range(impl: ModuleType) -> None:
    q = impl.FairQueue(10, 2)
    assert q.classes == 2 and q.size == 10
    with pytest.raises(ValueError):
        q.push("x", "k", 2)
    with pytest.raises(ValueError):
        q.push("x", "k", -1)


def test_a_long_line_grows_and_keeps_order(impl: ModuleType) -> None:
    q = impl.FairQueue(1000)
    entries = [q.push(i, "k", 1) for i in range(300)]
    for e in entries[1:299]:
        q.discard(e)  # tombstones in the middle of the key's line
    for i in range(300, 900):
        q.push(i, "k", 1)
    assert q.discard(entries[0]) and len(q) == 601
    assert [q.pop() for _ in range(len(q))] == [299, *range(300, 900)]


def test_rotation_full_of_departed_keys(impl: ModuleType) -> None:
    # Keys that leave from the middle of the turn order leave tombstones in the rotation;
    # new keys still find room, and the turn order is kept.
    q = impl.FairQueue(4)
    q.push("first", "k0", 1)
    for i in range(1, 50):
        while len(q) > 2:
            q.pop()
        e = q.push(f"gone{i}", f"k{i}", 1)
        q.push(f"kept{i}", f"k{i}x", 1)
        assert q.discard(e)
    rest = [q.pop() for _ in range(len(q))]
    assert rest == ["kept47", "kept48", "kept49"]


# -- model-based: both twins against a plain reference --------------------------------------


class RefRing:
    """Slots as a list: live items, or None for a tombstone; both ends trimmed."""

    def __init__(self, capacity: int) -> None:
        self.cap, self.slots, self.base = capacity, [], 0  # base: handle of slots[0]

    def push(self, item: Any) -> int:
        if len(self.slots) == self.cap:
            raise OverflowError
        self.slots.append(item)
        return self.base + len(self.slots) - 1

    def pop(self) -> Any:
        if not self.slots:
            raise IndexError
        item = self.slots.pop(0)
        self.base += 1
        self._trim()
        return item

    def discard(self, h: int) -> bool:
        i = h - self.base
        if not 0 <= i < len(self.slots) or self.slots[i] is None:
            return False
        self.slots[i] = None
        self._trim()
        return True

    def _trim(self) -> None:
        while self.slots and self.slots[0] is None:
            self.slots.pop(0)
            self.base += 1
        while self.slots and self.slots[-1] is None:
            self.slots.pop()

    def __len__(self) -> int:
        return sum(s is not None for s in self.slots)


ring_ops = st.lists(st.one_of(st.tuples(st.just("push")), st.tuples(st.just("pop")),
                              st.tuples(st.just("discard"), st.integers(0, 40))),
                    max_size=120)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 6), ops=ring_ops)
def test_ring_matches_the_reference(impl: ModuleType, capacity: int,
                                    ops: list[tuple[Any, ...]]) -> None:
    ring, ref = impl.Ring(capacity), RefRing(capacity)
    handles: list[int] = []
    for n, op in enumerate(ops):
        if op[0] == "push":
            try:
                h = ring.push(n)
            except OverflowError:
                with pytest.raises(OverflowError):
                    ref.push(n)
            else:
                assert ref.push(n) == h
                handles.append(h)
        elif op[0] == "pop":
            try:
                got = ring.pop()
            except IndexError:
                with pytest.raises(IndexError):
                    ref.pop()
            else:
                assert ref.pop() == got
        elif handles:
            h = handles[op[1] % len(handles)]
            assert ring.discard(h) == ref.discard(h)
        assert (len(ring), ring.used, ring.full) == (len(ref), len(ref.slots),
                                                      len(ref.slots) == capacity)


class RefFairQueue:
    """Per class: the turn order of keys (a list) and each key's items (lists)."""

    def __init__(self, size: int, classes: int) -> None:
        self.size = size
        self.turns: list[list[Any]] = [[] for _ in range(classes)]
        self.lines: list[dict[Any, list[Any]]] = [{} for _ in range(classes)]

    def __len__(self) -> int:
        return sum(len(v) for lines in self.lines for v in lines.values())

    def push(self, item: Any, key: Any, cls: int) -> None:
        if len(self) >= self.size:
            raise OverflowError
        if key not in self.lines[cls]:
            self.lines[cls][key] = []
            self.turns[cls].append(key)
        self.lines[cls][key].append(item)

    def pop(self) -> Any:
        for cls, turns in enumerate(self.turns):
            if turns:
                key = turns.pop(0)
                line = self.lines[cls][key]
                item = line.pop(0)
                if line:
                    turns.append(key)
                else:
                    del self.lines[cls][key]
                return item
        raise IndexError

    def discard(self, item: Any, key: Any, cls: int) -> bool:
        line = self.lines[cls].get(key)
        if not line or item not in line:
            return False
        line.remove(item)
        if not line:
            del self.lines[cls][key]
            self.turns[cls].remove(key)
        return True


fq_ops = st.lists(st.one_of(st.tuples(st.just("push"), st.integers(0, 4), st.integers(0, 2)),
                            st.tuples(st.just("pop")),
                            st.tuples(st.just("discard"), st.integers(0, 60))),
                  max_size=150)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 12), ops=fq_ops)
def test_fair_queue_matches_the_reference(impl: ModuleType, size: int,
                                          ops: list[tuple[Any, ...]]) -> None:
    q, ref = impl.FairQueue(size), RefFairQueue(size, 3)
    entries: list[tuple[Any, int, Any, int]] = []  # (entry, item, key, cls)
    for n, op in enumerate(ops):
        if op[0] == "push":
            key, cls = op[1], op[2]
            try:
                e = q.push(n, key, cls)
            except OverflowError:
                with pytest.raises(OverflowError):
                    ref.push(n, key, cls)
            else:
                ref.push(n, key, cls)
                entries.append((e, n, key, cls))
        elif op[0] == "pop":
            try:
                got = q.pop()
            except IndexError:
                with pytest.raises(IndexError):
                    ref.pop()
            else:
                assert ref.pop() == got
        elif entries:
            e, item, key, cls = entries[op[1] % len(entries)]
            assert q.discard(e) == ref.discard(item, key, cls)
        assert len(q) == len(ref)
        counts = [sum(map(len, lines.values())) for lines in ref.lines]
        assert [q.count(c) for c in range(3)] == counts
        assert [q.ahead(c) for c in range(3)] == [sum(counts[:c + 1]) for c in range(3)]
        assert q.full == (len(ref) >= size)
