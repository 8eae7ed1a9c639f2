"""Shared counters (pure-Python twin of ``_shm_c``).

A fixed array of signed 64-bit slots in an anonymous shared mapping: created before
the worker processes fork, it is the same memory in all of them.  Every operation is
atomic across processes: the compiled unit uses the CPU's atomic instructions; this
twin takes a process-shared lock (a POSIX semaphore, also created before the fork).
"""

from __future__ import annotations

import mmap
import multiprocessing

__all__ = ["SharedCounters"]


class SharedCounters:
    __slots__ = ("_map", "_view", "_lock", "size")

    def __init__(self, slots: int) -> None:
        if slots <= 0:
            raise ValueError("slots must be positive")
        self.size = slots
        self._map = mmap.mmap(-1, slots * 8, flags=mmap.MAP_SHARED)
        self._view = memoryview(self._map).cast("q")
        self._lock = multiprocessing.Lock()

    def _check(self, i: int) -> None:
        if not 0 <= i < self.size:
            raise IndexError(f"slot {i} out of range (0..{self.size - 1})")

    def load(self, i: int) -> int:
        self._check(i)
        with self._lock:
            return int(self._view[i])

    def store(self, i: int, value: int) -> None:
        self._check(i)
        with self._lock:
            self._view[i] = value

    def add(self, i: int, delta: int) -> int:
        """Add ``delta``; return the new value."""
        self._check(i)
        with self._lock:
            value = self._view[i] + delta
            self._view[i] = value
            return int(value)

    def cas(self, i: int, expected: int, new: int) -> bool:
        """Set to ``new`` if the slot holds ``expected``; say whether it did."""
        self._check(i)
        with self._lock:
            if self._view[i] != expected:
                return False
            self._view[i] = new
            return True

    def try_acquire(self, i: int, limit: int) -> bool:
        """Add 1 unless the slot is already at ``limit`` or above (a slot counter)."""
        self._check(i)
        with self._lock:
            if self._view[i] >= limit:
                return False
            self._view[i] += 1
            return True
