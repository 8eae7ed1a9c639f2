# cython: language_level=3, embedsignature=True
"""GCRA rate limiting on a shared counter (compiled twin of ``_gcra_py``, which documents
the arithmetic).  Same results: int64 arithmetic here, where the twin's Python integers
never leave the int64 range (costs and corrections are bounded for that)."""

from libc.stdint cimport int64_t

cdef int64_t _INT64_MAX = 0x7FFFFFFFFFFFFFFF


cdef class GCRA:
    cdef readonly object counters
    cdef readonly Py_ssize_t slot
    cdef readonly int64_t limit, period_ns, interval, capacity
    cdef int64_t _max_delta
    # Bound methods, looked up once: works with either counters twin.
    cdef object _load, _cas

    def __init__(self, counters, Py_ssize_t slot, int64_t limit, int64_t period_ns):
        if limit <= 0:
            raise ValueError("limit must be positive")
        if period_ns < limit:
            raise ValueError("period_ns must be at least limit (the interval is whole ns)")
        if slot < 0 or slot >= counters.size:
            raise IndexError(f"slot {slot} out of range (0..{counters.size - 1})")
        self.counters = counters
        self.slot = slot
        self.limit = limit
        self.period_ns = period_ns
        self.interval = period_ns // limit
        self.capacity = limit * self.interval
        self._max_delta = (_INT64_MAX >> 2) // self.interval
        self._load = counters.load
        self._cas = counters.cas

    def acquire(self, int64_t now_ns, int64_t cost=1):
        """Take ``cost`` units if they are there, all or nothing.

        :return: ``(allowed, remaining, reset_ns, retry_after_ns)`` (see ``_gcra_py``).
        """
        cdef int64_t tat, base, ahead, new, left
        if cost < 0:
            raise ValueError("cost must not be negative")
        while True:
            tat = self._load(self.slot)
            base = tat if tat > now_ns else now_ns
            ahead = base - now_ns
            if cost > self.limit or ahead + cost * self.interval > self.capacity:
                # Python's floor division on purpose: ahead may exceed capacity (debt).
                left = (self.capacity - ahead) // self.interval
                return (False, left if left > 0 else 0, ahead,
                        -1 if cost > self.limit else ahead + cost * self.interval - self.capacity)
            new = base + cost * self.interval
            if cost == 0 or self._cas(self.slot, tat, new):
                return True, (self.capacity - (new - now_ns)) // self.interval, new - now_ns, 0

    def peek(self, int64_t now_ns):
        """``(remaining, reset_ns)`` without taking anything (for response headers)."""
        cdef int64_t tat = self._load(self.slot)
        cdef int64_t ahead = tat - now_ns if tat > now_ns else 0
        cdef int64_t remaining = (self.capacity - ahead) // self.interval
        return (remaining if remaining > 0 else 0), ahead

    def adjust(self, int64_t now_ns, int64_t delta_cost):
        """Correct an earlier debit by ``delta_cost`` units (see ``_gcra_py``)."""
        cdef int64_t tat, base, new, shift
        if delta_cost < -self._max_delta or delta_cost > self._max_delta:
            raise OverflowError("delta_cost out of range")
        if delta_cost == 0:
            return
        shift = delta_cost * self.interval
        while True:
            tat = self._load(self.slot)
            if tat <= now_ns and shift < 0:
                return
            base = tat if tat > now_ns else now_ns
            new = base + shift
            if new < now_ns:
                new = now_ns
            if new == tat or self._cas(self.slot, tat, new):
                return
