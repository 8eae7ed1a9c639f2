# cython: language_level=3, embedsignature=True
"""The replay log of a shared stream (compiled twin of ``_flight_py``, which is the
spec: same API, same results).

The difference is the mechanics: the byte offsets that make every backlog one
subtraction live in a growable C array of int64 beside the list of events, and the
cursors' arithmetic is done on C integers.  Indexes into the C array are kept within
``[0, len(events))`` by construction (the array and the list grow and shrink
together), so no bounds-check directive is involved.
"""

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int64_t
from libc.string cimport memmove

__all__ = ["ReplayLog"]

cdef enum:
    COMPACT = 64  # as in _flight_py: compact once this many dropped slots pile up
    MIN_CAPACITY = 64


cdef class ReplayLog:
    """Events of one stream, a cursor per subscriber, at most ``max_bytes`` held."""

    cdef readonly Py_ssize_t max_bytes
    cdef readonly bint closed
    cdef list _events
    cdef int64_t* _ends
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _base
    cdef int64_t _base_offset
    cdef Py_ssize_t _first
    cdef int64_t _total
    cdef dict _cursors
    cdef Py_ssize_t _next_id

    def __cinit__(self):
        self._ends = NULL
        self._cap = 0

    def __init__(self, Py_ssize_t max_bytes):
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.closed = False
        self._events = []
        self._base = 0
        self._base_offset = 0
        self._first = 0
        self._total = 0
        self._cursors = {}
        self._next_id = 0

    def __dealloc__(self):
        PyMem_Free(self._ends)

    # -- state ------------------------------------------------------------------------

    @property
    def count(self):
        """Events appended so far (the position after the last one)."""
        return self._base + len(self._events)

    @property
    def first(self):
        """Position of the oldest event still held."""
        return self._first

    @property
    def held(self):
        """Bytes of the events still held."""
        return self._total - self._offset(self._first)

    @property
    def whole(self):
        """True while no event has been dropped: a newcomer gets the whole stream."""
        return self._first == 0

    @property
    def subscribers(self):
        """Live (attached) cursors."""
        return len(self._cursors)

    cdef inline int64_t _offset(self, Py_ssize_t pos):
        cdef Py_ssize_t i = pos - self._base
        return self._ends[i - 1] if i else self._base_offset

    # -- producer ---------------------------------------------------------------------

    def append(self, bytes event not None):
        """Add one event; return how many subscribers this detached."""
        cdef Py_ssize_t n
        cdef int64_t* grown
        if self.closed:
            raise ValueError("append to a closed ReplayLog")
        n = len(self._events)
        if n == self._cap:
            grown = <int64_t*>PyMem_Realloc(
                self._ends, max(MIN_CAPACITY, 2 * self._cap) * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self._ends = grown
            self._cap = max(MIN_CAPACITY, 2 * self._cap)
        self._events.append(event)
        self._total += len(event)
        self._ends[n] = self._total
        if self._total - self._offset(self._first) <= self.max_bytes:
            return 0
        return self._shrink()

    def close(self):
        """The stream is over: readers get what is left, then the end."""
        self.closed = True

    cdef Py_ssize_t _floor(self):
        cdef Py_ssize_t floor = self._base + len(self._events)
        cdef Py_ssize_t pos
        for value in self._cursors.values():
            pos = value
            if pos < floor:
                floor = pos
        return floor

    cdef int _shrink(self) except -1:
        cdef int64_t limit = self.max_bytes
        cdef int64_t total = self._total
        cdef list late
        self._drop_until(self._floor(), limit)
        if total - self._offset(self._first) <= limit:
            return 0
        # Still over: the readers too far behind let go, and their backlog with them.
        late = [sid for sid, pos in self._cursors.items()
                if total - self._offset(<Py_ssize_t>pos) > limit]
        for sid in late:
            del self._cursors[sid]
        self._drop_until(self._floor(), limit)
        return len(late)

    cdef void _drop_until(self, Py_ssize_t floor, int64_t limit):
        cdef Py_ssize_t first = self._first
        cdef Py_ssize_t base = self._base
        cdef Py_ssize_t dropped
        cdef list events = self._events
        while first < floor and self._total - self._offset(first) > limit:
            events[first - base] = None
            first += 1
        self._first = first
        dropped = first - base
        if dropped >= COMPACT and dropped * 2 >= len(events):
            self._base_offset = self._ends[dropped - 1]
            del events[:dropped]
            memmove(self._ends, self._ends + dropped, len(events) * sizeof(int64_t))
            self._base = first

    # -- subscribers ------------------------------------------------------------------

    def subscribe(self):
        """A new cursor at the oldest event held (the very first while ``whole``)."""
        sid = self._next_id
        self._next_id += 1
        self._cursors[sid] = self._first
        return sid

    def attached(self, sid):
        """Whether ``sid`` is a live cursor (not detached, not unsubscribed)."""
        return sid in self._cursors

    def read(self, sid):
        """The events ``sid`` has not read yet (maybe none); advances its cursor.

        Raises ``KeyError`` if ``sid`` was detached or unsubscribed."""
        cdef Py_ssize_t pos = self._cursors[sid]
        cdef Py_ssize_t count = self._base + len(self._events)
        if pos == count:
            return []
        self._cursors[sid] = count
        return self._events[pos - self._base:]

    def unsubscribe(self, sid):
        """Forget ``sid`` (no error if it is already gone)."""
        self._cursors.pop(sid, None)

    def __repr__(self):
        return (f"<ReplayLog events={self._first}..{self.count} held={self.held}/"
                f"{self.max_bytes} subscribers={self.subscribers}"
                f"{' closed' if self.closed else ''}>")
