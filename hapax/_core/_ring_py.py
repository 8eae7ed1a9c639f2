"""Bounded ring buffer and fair queue (pure-Python twin of ``_ring_c``; the spec).

:class:`Ring` — a fixed-capacity FIFO: ``push`` and ``pop`` are O(1), and any entry can
be removed in O(1) by its handle (``discard``).  Removal is lazy: the entry is marked
dead (a tombstone) and keeps its slot until the head passes it; a tombstone at either
end gives its slot back at once, so the usual removals (the oldest entry timing out,
the newest one's client leaving) cost no capacity.  A handle is the entry's sequence
number and stays valid until the entry is popped or discarded.

:class:`FairQueue` — the waiting line of a provider: priority classes (0 first), and
inside a class round-robin between keys (each key has its own FIFO line; the class
serves one entry of each waiting key in turn), so a key that queued a hundred requests
cannot starve one that queued two.  The total is bounded: ``push`` raises
``OverflowError`` when ``size`` entries wait.  Lines are rings (grown and compacted by
the queue, which keeps its :class:`Entry` handles valid); the rotation of keys of a
class is a ring too.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["Ring", "FairQueue", "Entry"]

_DEAD = -1


class Ring:
    __slots__ = ("_items", "_seqs", "_cap", "_head", "_tail", "_live")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._cap = capacity
        self._items: list[Any] = [None] * capacity
        # Sequence number of the live entry in each slot; _DEAD for a tombstone or free slot.
        self._seqs = [_DEAD] * capacity
        # Invariant: head == tail, or the entries at head and tail-1 are live.
        self._head = 0
        self._tail = 0
        self._live = 0

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def used(self) -> int:
        """Slots taken: live entries plus tombstones not reclaimed yet."""
        return self._tail - self._head

    @property
    def full(self) -> bool:
        """No free slot: ``push`` would raise."""
        return self._tail - self._head == self._cap

    def __len__(self) -> int:
        return self._live

    def push(self, item: Any) -> int:
        """Append ``item``; return its handle.  ``OverflowError`` when full."""
        seq = self._tail
        if seq - self._head == self._cap:
            raise OverflowError("ring is full")
        i = seq % self._cap
        self._items[i] = item
        self._seqs[i] = seq
        self._tail = seq + 1
        self._live += 1
        return seq

    def peek(self) -> Any:
        """The oldest live entry (``IndexError`` when empty)."""
        if self._head == self._tail:
            raise IndexError("peek at an empty ring")
        return self._items[self._head % self._cap]

    def pop(self) -> Any:
        """Remove and return the oldest live entry (``IndexError`` when empty)."""
        if self._head == self._tail:
            raise IndexError("pop from an empty ring")
        i = self._head % self._cap
        item = self._items[i]
        self._items[i] = None
        self._seqs[i] = _DEAD
        self._head += 1
        self._live -= 1
        self._trim()
        return item

    def discard(self, handle: int) -> bool:
        """Remove the entry ``handle`` (lazily); False if it is no longer there."""
        if handle < self._head or handle >= self._tail:
            return False
        i = handle % self._cap
        if self._seqs[i] != handle:
            return False
        self._items[i] = None
        self._seqs[i] = _DEAD
        self._live -= 1
        self._trim()
        return True

    def _trim(self) -> None:
        cap, seqs = self._cap, self._seqs
        while self._head < self._tail and seqs[self._head % cap] == _DEAD:
            self._head += 1
        while self._tail > self._head and seqs[(self._tail - 1) % cap] == _DEAD:
            self._tail -= 1


class Entry:
    """A handle on one waiting item (``FairQueue.push`` returns it)."""

    __slots__ = ("item", "key", "cls", "seq", "alive")

    def __init__(self, item: Any, key: Hashable, cls: int) -> None:
        self.item = item
        self.key = key
        self.cls = cls
        self.seq = 0
        #: True while the entry waits (False once popped or discarded).
        self.alive = True


class _Line:
    """One key's FIFO inside one class, and its place in the class rotation."""

    __slots__ = ("ring", "rot")

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.rot = 0


_FIRST_LINE = 8  # a key's line starts small and doubles: most keys wait a few at a time


class FairQueue:
    __slots__ = ("_size", "_classes", "_lines", "_rot", "_counts", "_live")

    def __init__(self, size: int, classes: int = 3) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        if classes <= 0:
            raise ValueError("classes must be positive")
        self._size = size
        self._classes = classes
        self._lines: list[dict[Hashable, _Line]] = [{} for _ in range(classes)]
        # Keys with waiting entries, in turn order: at most `size` of them.
        self._rot = [Ring(size) for _ in range(classes)]
        self._counts = [0] * classes
        self._live = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def classes(self) -> int:
        return self._classes

    @property
    def full(self) -> bool:
        return self._live >= self._size

    def __len__(self) -> int:
        return self._live

    def count(self, cls: int) -> int:
        """Entries waiting in class ``cls``."""
        return self._counts[cls]

    def ahead(self, cls: int) -> int:
        """Entries that would be served before a new one of class ``cls`` at the latest:
        those of ``cls`` and of every class before it."""
        return sum(self._counts[: cls + 1])

    def push(self, item: Any, key: Hashable, cls: int) -> Entry:
        """Queue ``item`` for ``key`` in class ``cls``; ``OverflowError`` when full."""
        if not 0 <= cls < self._classes:
            raise ValueError(f"class {cls} out of range (0..{self._classes - 1})")
        if self._live >= self._size:
            raise OverflowError("queue is full")
        lines = self._lines[cls]
        line = lines.get(key)
        if line is None:
            line = _Line(Ring(min(_FIRST_LINE, self._size)))
            rot = self._rot[cls]
            if rot.full:
                _rebuild_rotation(rot)
            line.rot = rot.push(line)
            lines[key] = line
        elif line.ring.full:
            _rebuild_line(line, self._size)
        entry = Entry(item, key, cls)
        entry.seq = line.ring.push(entry)
        self._counts[cls] += 1
        self._live += 1
        return entry

    def pop(self) -> Any:
        """Remove and return the next item: the first class with waiting entries, the
        next key in its rotation, that key's oldest entry.  ``IndexError`` when empty."""
        for cls in range(self._classes):
            if self._counts[cls]:
                break
        else:
            raise IndexError("pop from an empty queue")
        rot = self._rot[cls]
        line: _Line = rot.pop()  # lines in the rotation always have entries
        entry: Entry = line.ring.pop()
        if len(line.ring):
            line.rot = rot.push(line)  # to the back of the turn order
        else:
            del self._lines[cls][entry.key]
        entry.alive = False
        self._counts[cls] -= 1
        self._live -= 1
        item, entry.item = entry.item, None
        return item

    def discard(self, entry: Entry) -> bool:
        """Remove ``entry`` (O(1)); False if it was popped or discarded already."""
        if not entry.alive:
            return False
        cls = entry.cls
        lines = self._lines[cls]
        line = lines[entry.key]
        line.ring.discard(entry.seq)
        entry.alive = False
        entry.item = None
        self._counts[cls] -= 1
        self._live -= 1
        if not len(line.ring):  # the key has nothing left: it leaves the rotation now
            self._rot[cls].discard(line.rot)
            del lines[entry.key]
        return True


def _rebuild_line(line: _Line, size: int) -> None:
    """A full line: grow it (or just drop its tombstones), keeping order and handles."""
    old = line.ring
    n = len(old)
    new = Ring(min(size, max(_FIRST_LINE, 2 * n)) if 2 * n > old.capacity else old.capacity)
    while len(old):
        entry = old.pop()
        entry.seq = new.push(entry)
    line.ring = new


def _rebuild_rotation(rot: Ring) -> None:
    """A rotation full of tombstones: squeeze them out, keeping the turn order."""
    order = []
    while len(rot):
        order.append(rot.pop())
    for line in order:
        line.rot = rot.push(line)
