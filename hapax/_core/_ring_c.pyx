# cython: language_level=3, embedsignature=True
"""Bounded ring buffer and fair queue (compiled twin of ``_ring_py``, which is the
spec: same API, same behaviour, same handles).  What this unit saves is interpreter
work per push/pop: typed indexes, C arrays for the sequence numbers, and C-level calls
between the queue and its rings."""

cimport cython
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

cdef enum:
    _DEAD = -1
    _FIRST_LINE = 8  # a key's line starts small and doubles


cdef class Ring:
    cdef list _items
    cdef int64_t *_seqs
    cdef int64_t _cap
    cdef int64_t _head
    cdef int64_t _tail
    cdef int64_t _live

    def __cinit__(self, Py_ssize_t capacity):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._seqs = <int64_t *> malloc(capacity * sizeof(int64_t))
        if self._seqs == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(capacity):
            self._seqs[i] = _DEAD
        self._cap = capacity
        self._items = [None] * capacity
        self._head = 0
        self._tail = 0
        self._live = 0

    def __dealloc__(self):
        free(self._seqs)

    @property
    def capacity(self):
        return self._cap

    @property
    def used(self):
        """Slots taken: live entries plus tombstones not reclaimed yet."""
        return self._tail - self._head

    @property
    def full(self):
        """No free slot: ``push`` would raise."""
        return self._tail - self._head == self._cap

    def __len__(self):
        return self._live

    # boundscheck/wraparound off: every index is `seq % _cap`, in range by construction.
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef int64_t push(self, object item) except? -1:
        """Append ``item``; return its handle.  ``OverflowError`` when full."""
        cdef int64_t seq = self._tail
        if seq - self._head == self._cap:
            raise OverflowError("ring is full")
        cdef Py_ssize_t i = seq % self._cap
        self._items[i] = item
        self._seqs[i] = seq
        self._tail = seq + 1
        self._live += 1
        return seq

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef object peek(self):
        """The oldest live entry (``IndexError`` when empty)."""
        if self._head == self._tail:
            raise IndexError("peek at an empty ring")
        return self._items[self._head % self._cap]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef object pop(self):
        """Remove and return the oldest live entry (``IndexError`` when empty)."""
        if self._head == self._tail:
            raise IndexError("pop from an empty ring")
        cdef Py_ssize_t i = self._head % self._cap
        item = self._items[i]
        self._items[i] = None
        self._seqs[i] = _DEAD
        self._head += 1
        self._live -= 1
        self._trim()
        return item

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef bint discard(self, int64_t handle):
        """Remove the entry ``handle`` (lazily); False if it is no longer there."""
        if handle < self._head or handle >= self._tail:
            return False
        cdef Py_ssize_t i = handle % self._cap
        if self._seqs[i] != handle:
            return False
        self._items[i] = None
        self._seqs[i] = _DEAD
        self._live -= 1
        self._trim()
        return True

    cdef inline void _trim(self):
        while self._head < self._tail and self._seqs[self._head % self._cap] == _DEAD:
            self._head += 1
        while self._tail > self._head and self._seqs[(self._tail - 1) % self._cap] == _DEAD:
            self._tail -= 1


cdef class Entry:
    """A handle on one waiting item (``FairQueue.push`` returns it)."""

    cdef public object item
    cdef public object key
    cdef public int cls
    cdef public int64_t seq
    #: True while the entry waits (False once popped or discarded).
    cdef public bint alive

    def __init__(self, item, key, int cls):
        self.item = item
        self.key = key
        self.cls = cls
        self.seq = 0
        self.alive = True


cdef class _Line:
    cdef Ring ring
    cdef int64_t rot

    def __init__(self, Ring ring):
        self.ring = ring
        self.rot = 0


cdef class FairQueue:
    cdef Py_ssize_t _size
    cdef int _classes
    cdef list _lines
    cdef list _rot
    cdef list _counts
    cdef Py_ssize_t _live

    def __init__(self, Py_ssize_t size, int classes=3):
        if size <= 0:
            raise ValueError("size must be positive")
        if classes <= 0:
            raise ValueError("classes must be positive")
        self._size = size
        self._classes = classes
        self._lines = [{} for _ in range(classes)]
        self._rot = [Ring(size) for _ in range(classes)]
        self._counts = [0] * classes
        self._live = 0

    @property
    def size(self):
        return self._size

    @property
    def classes(self):
        return self._classes

    @property
    def full(self):
        return self._live >= self._size

    def __len__(self):
        return self._live

    def count(self, int cls):
        """Entries waiting in class ``cls``."""
        return self._counts[cls]

    def ahead(self, int cls):
        """Entries that would be served before a new one of class ``cls`` at the latest:
        those of ``cls`` and of every class before it."""
        cdef Py_ssize_t n = 0
        cdef int c
        for c in range(cls + 1):
            n += <Py_ssize_t> self._counts[c]
        return n

    cpdef Entry push(self, object item, object key, int cls):
        """Queue ``item`` for ``key`` in class ``cls``; ``OverflowError`` when full."""
        if cls < 0 or cls >= self._classes:
            raise ValueError(f"class {cls} out of range (0..{self._classes - 1})")
        if self._live >= self._size:
            raise OverflowError("queue is full")
        cdef dict lines = <dict> self._lines[cls]
        found = lines.get(key)
        cdef _Line line
        cdef Ring rot
        if found is None:
            line = _Line(Ring(min(_FIRST_LINE, self._size)))
            rot = <Ring> self._rot[cls]
            if rot._tail - rot._head == rot._cap:
                _rebuild_rotation(rot)
            line.rot = rot.push(line)
            lines[key] = line
        else:
            line = <_Line> found
            if line.ring._tail - line.ring._head == line.ring._cap:
                _rebuild_line(line, self._size)
        cdef Entry entry = Entry(item, key, cls)
        entry.seq = line.ring.push(entry)
        self._counts[cls] += 1
        self._live += 1
        return entry

    cpdef object pop(self):
        """Remove and return the next item: the first class with waiting entries, the
        next key in its rotation, that key's oldest entry.  ``IndexError`` when empty."""
        cdef int cls
        for cls in range(self._classes):
            if self._counts[cls]:
                break
        else:
            raise IndexError("pop from an empty queue")
        cdef Ring rot = <Ring> self._rot[cls]
        cdef _Line line = <_Line> rot.pop()  # lines in the rotation always have entries
        cdef Entry entry = <Entry> line.ring.pop()
        if line.ring._live:
            line.rot = rot.push(line)  # to the back of the turn order
        else:
            del (<dict> self._lines[cls])[entry.key]
        entry.alive = False
        self._counts[cls] -= 1
        self._live -= 1
        item = entry.item
        entry.item = None
        return item

    cpdef bint discard(self, Entry entry):
        """Remove ``entry`` (O(1)); False if it was popped or discarded already."""
        if not entry.alive:
            return False
        cdef int cls = entry.cls
        cdef dict lines = <dict> self._lines[cls]
        cdef _Line line = <_Line> lines[entry.key]
        line.ring.discard(entry.seq)
        entry.alive = False
        entry.item = None
        self._counts[cls] -= 1
        self._live -= 1
        if not line.ring._live:  # the key has nothing left: it leaves the rotation now
            (<Ring> self._rot[cls]).discard(line.rot)
            del lines[entry.key]
        return True


cdef void _rebuild_line(_Line line, Py_ssize_t size) except *:
    """A full line: grow it (or just drop its tombstones), keeping order and handles."""
    cdef Ring old = line.ring
    cdef int64_t n = old._live
    cdef Ring new = Ring(min(size, max(_FIRST_LINE, 2 * n)) if 2 * n > old._cap else old._cap)
    cdef Entry entry
    while old._live:
        entry = <Entry> old.pop()
        entry.seq = new.push(entry)
    line.ring = new


cdef void _rebuild_rotation(Ring rot) except *:
    """A rotation full of tombstones: squeeze them out, keeping the turn order."""
    cdef list order = []
    cdef _Line line
    while rot._live:
        order.append(rot.pop())
    for line in order:
        line.rot = rot.push(line)
