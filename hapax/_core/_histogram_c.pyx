# cython: language_level=3, embedsignature=True
"""Log-linear latency histogram (compiled twin of ``_histogram_py``, which documents the
bucket layout, the range and the relative error)."""

from libc.math cimport ceil, INFINITY
from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    static inline int hapax_bit_length(unsigned long long m) { return 64 - __builtin_clzll(m); }
    """
    int hapax_bit_length(unsigned long long m) nogil  # m > 0

__all__ = ["LogHistogram", "bucket_index", "upper_bound", "nearest_bound",
           "BUCKETS", "SUB_BUCKETS", "UNITS_PER_SECOND"]

cdef enum:
    SUB_BITS = 3
    NSUB = 8  # 1 << SUB_BITS
    NOVER = 240  # (32 - SUB_BITS + 1) << SUB_BITS: the overflow bucket (2**32 units on)
    NBUCKETS = 241

SUB_BUCKETS = NSUB
UNITS_PER_SECOND = 1 << 20
BUCKETS = NBUCKETS
OVERFLOW = NOVER

cdef double UNITS = 1048576.0
cdef double TOP = 4294967296.0  # 2**32 units


cdef inline Py_ssize_t _index_units(uint64_t m) noexcept nogil:
    if m < NSUB:
        return <Py_ssize_t> m
    cdef int shift = hapax_bit_length(m) - 1 - SUB_BITS
    return ((shift + 1) << SUB_BITS) + <Py_ssize_t> ((m >> shift) & (NSUB - 1))


cdef inline Py_ssize_t _index(double seconds) noexcept nogil:
    cdef double t = seconds * UNITS
    if not t > 1.0:  # also NaN
        return 0
    if t > TOP:
        return NOVER
    return _index_units(<uint64_t> ceil(t) - 1)


cdef inline uint64_t _upper_units(Py_ssize_t index) noexcept nogil:
    if index < NSUB:
        return <uint64_t> index + 1
    cdef int shift = (index >> SUB_BITS) - 1
    return (<uint64_t> (NSUB + (index & (NSUB - 1)) + 1)) << shift


def bucket_index(double seconds):
    """The bucket that holds ``seconds``."""
    return _index(seconds)


def upper_bound(Py_ssize_t index):
    """The upper bound (seconds, inclusive) of bucket ``index``; ``inf`` for the last."""
    if index < 0 or index >= NBUCKETS:
        raise IndexError(f"bucket {index} out of range (0..{NBUCKETS - 1})")
    if index == NOVER:
        return INFINITY
    return _upper_units(index) / UNITS


def nearest_bound(double seconds):
    """The bucket boundary nearest to ``seconds`` (a valid bound for ``cumulative``)."""
    if seconds == INFINITY:
        return INFINITY
    cdef Py_ssize_t i = _index(seconds)
    if i == NOVER:
        return TOP / UNITS
    cdef double hi = _upper_units(i) / UNITS
    if i == 0:
        return hi
    cdef double lo = _upper_units(i - 1) / UNITS
    return hi if hi - seconds <= seconds - lo else lo


cdef Py_ssize_t _bound_index(double b) except -1:
    if b == INFINITY:
        return NOVER
    cdef double t = b * UNITS
    cdef Py_ssize_t i
    if t >= 1.0 and t <= TOP and t == <double> <uint64_t> t:
        i = _index_units(<uint64_t> t - 1)
        if _upper_units(i) == <uint64_t> t:
            return i
    raise ValueError(f"{b!r} is not a bucket boundary (nearest: {nearest_bound(b)!r})")


cdef class LogHistogram:
    """Counts per bucket, number and sum of the recorded values."""

    cdef int64_t _counts[NBUCKETS]
    cdef int64_t _count
    cdef double _sum

    def __cinit__(self):
        cdef Py_ssize_t i
        for i in range(NBUCKETS):
            self._counts[i] = 0
        self._count = 0
        self._sum = 0.0

    def record(self, double seconds):
        """Count one value (O(1))."""
        self._counts[_index(seconds)] += 1
        self._count += 1
        self._sum += seconds

    @property
    def count(self):
        return self._count

    @property
    def sum(self):
        return self._sum

    def counts(self):
        """A copy of the ``BUCKETS`` counts (the export format of ``add_counts``)."""
        return [self._counts[i] for i in range(NBUCKETS)]

    def add_counts(self, counts, double total):
        """Add another histogram's exported ``counts`` and ``total`` (its sum)."""
        if len(counts) != NBUCKETS:
            raise ValueError(f"expected {NBUCKETS} counts, got {len(counts)}")
        cdef int64_t add[NBUCKETS]
        cdef int64_t n, added = 0
        cdef Py_ssize_t i = 0
        for v in counts:  # validate everything before changing anything
            n = v
            if n < 0:
                raise ValueError("counts must not be negative")
            add[i] = n
            added += n
            i += 1
        for i in range(NBUCKETS):
            self._counts[i] += add[i]
        self._count += added
        self._sum += total

    def merge(self, LogHistogram other not None):
        """Add every value of ``other`` (exact: counts add)."""
        cdef Py_ssize_t i
        for i in range(NBUCKETS):
            self._counts[i] += other._counts[i]
        self._count += other._count
        self._sum += other._sum

    def cumulative(self, bounds):
        """How many values are ``<= b``, for each ``b`` in ``bounds``.  Each bound must be
        a bucket boundary (or ``inf``): a count between boundaries could not be exact."""
        cdef int64_t prefix[NBUCKETS]
        cdef int64_t running = 0
        cdef Py_ssize_t i
        for i in range(NBUCKETS):
            running += self._counts[i]
            prefix[i] = running
        return [prefix[_bound_index(b)] for b in bounds]
