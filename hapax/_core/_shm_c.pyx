# cython: language_level=3, embedsignature=True
"""Shared counters (compiled twin of ``_shm_py``): int64 slots in an anonymous shared
mapping, updated with the CPU's atomic instructions, so every worker process of a node
sees one exact value without a lock."""

import mmap

from libc.stdint cimport int64_t

cdef extern from *:
    """
    static inline int64_t hapax_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void hapax_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int64_t hapax_add(int64_t *p, int64_t d) { return __atomic_add_fetch(p, d, __ATOMIC_SEQ_CST); }
    static inline int hapax_cas(int64_t *p, int64_t e, int64_t n) {
        return __atomic_compare_exchange_n(p, &e, n, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    """
    int64_t hapax_load(int64_t *p) nogil
    void hapax_store(int64_t *p, int64_t v) nogil
    int64_t hapax_add(int64_t *p, int64_t d) nogil
    int hapax_cas(int64_t *p, int64_t e, int64_t n) nogil


cdef class SharedCounters:
    cdef object _map
    cdef const unsigned char[::1] _keep
    cdef int64_t *_base
    cdef readonly Py_ssize_t size

    def __init__(self, Py_ssize_t slots):
        if slots <= 0:
            raise ValueError("slots must be positive")
        self.size = slots
        self._map = mmap.mmap(-1, slots * 8, flags=mmap.MAP_SHARED)
        cdef unsigned char[::1] view = self._map
        self._keep = view
        # mmap memory is page-aligned, so every 8-byte slot is naturally aligned (atomics
        # need that).
        self._base = <int64_t *> &view[0]

    cdef inline int64_t *_slot(self, Py_ssize_t i) except NULL:
        if i < 0 or i >= self.size:
            raise IndexError(f"slot {i} out of range (0..{self.size - 1})")
        return self._base + i

    def load(self, Py_ssize_t i):
        return hapax_load(self._slot(i))

    def store(self, Py_ssize_t i, int64_t value):
        hapax_store(self._slot(i), value)

    def add(self, Py_ssize_t i, int64_t delta):
        """Add ``delta``; return the new value."""
        return hapax_add(self._slot(i), delta)

    def cas(self, Py_ssize_t i, int64_t expected, int64_t new):
        """Set to ``new`` if the slot holds ``expected``; say whether it did."""
        return bool(hapax_cas(self._slot(i), expected, new))

    def try_acquire(self, Py_ssize_t i, int64_t limit):
        """Add 1 unless the slot is already at ``limit`` or above (a slot counter)."""
        cdef int64_t *p = self._slot(i)
        cdef int64_t cur = hapax_load(p)
        while cur < limit:
            if hapax_cas(p, cur, cur + 1):
                return True
            cur = hapax_load(p)
        return False
