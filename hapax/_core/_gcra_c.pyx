# cython: language_level=3, embedsignature=True
"""GCRA rate limiting on a shared counter (compiled twin of ``_gcra_py``, which documents
the arithmetic).  Same results: int64 arithmetic here, where the twin's Python integers
never leave the int64 range (costs and corrections are bounded for that)."""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t

cdef int64_t _INT64_MAX = 0x7FFFFFFFFFFFFFFF
cdef enum:
    _STACK_CELLS = 8  # cells whose scratch fits on the stack (GCRAGroup.charge)


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

    cdef int _take(self, int64_t now_ns, int64_t cost, int64_t *left, int64_t *reset,
                   int64_t *retry) except -1:
        """``acquire`` into C variables: 1 allowed, 0 refused."""
        cdef int64_t tat, base, ahead, new
        if cost < 0:
            raise ValueError("cost must not be negative")
        while True:
            tat = self._load(self.slot)
            base = tat if tat > now_ns else now_ns
            ahead = base - now_ns
            if cost > self.limit or ahead + cost * self.interval > self.capacity:
                # Python's floor division on purpose: ahead may exceed capacity (debt).
                left[0] = (self.capacity - ahead) // self.interval
                if left[0] < 0:
                    left[0] = 0
                reset[0] = ahead
                retry[0] = -1 if cost > self.limit else ahead + cost * self.interval - self.capacity
                return 0
            new = base + cost * self.interval
            if cost == 0 or self._cas(self.slot, tat, new):
                left[0] = (self.capacity - (new - now_ns)) // self.interval
                reset[0] = new - now_ns
                retry[0] = 0
                return 1

    cdef int _peek(self, int64_t now_ns, int64_t *left, int64_t *reset) except -1:
        cdef int64_t tat = self._load(self.slot)
        cdef int64_t ahead = tat - now_ns if tat > now_ns else 0
        left[0] = (self.capacity - ahead) // self.interval
        if left[0] < 0:
            left[0] = 0
        reset[0] = ahead
        return 0

    cdef int _adjust(self, int64_t now_ns, int64_t delta_cost) except -1:
        cdef int64_t tat, base, new, shift
        if delta_cost < -self._max_delta or delta_cost > self._max_delta:
            raise OverflowError("delta_cost out of range")
        if delta_cost == 0:
            return 0
        shift = delta_cost * self.interval
        while True:
            tat = self._load(self.slot)
            if tat <= now_ns and shift < 0:
                return 0
            base = tat if tat > now_ns else now_ns
            new = base + shift
            if new < now_ns:
                new = now_ns
            if new == tat or self._cas(self.slot, tat, new):
                return 0

    def acquire(self, int64_t now_ns, int64_t cost=1):
        """Take ``cost`` units if they are there, all or nothing.

        :return: ``(allowed, remaining, reset_ns, retry_after_ns)`` (see ``_gcra_py``).
        """
        cdef int64_t left, reset, retry
        cdef int allowed = self._take(now_ns, cost, &left, &reset, &retry)
        return bool(allowed), left, reset, retry

    def peek(self, int64_t now_ns):
        """``(remaining, reset_ns)`` without taking anything (for response headers)."""
        cdef int64_t left, reset
        self._peek(now_ns, &left, &reset)
        return left, reset

    def adjust(self, int64_t now_ns, int64_t delta_cost):
        """Correct an earlier debit by ``delta_cost`` units (see ``_gcra_py``)."""
        self._adjust(now_ns, delta_cost)


@cython.cdivision(True)  # v >= 0: C division is Python's here, without the sign fix-ups
cdef inline Py_ssize_t _put_int(char *buf, Py_ssize_t at, int64_t v) noexcept:
    """Write ``v`` (>= 0) in decimal at ``buf[at]``; return the position after it."""
    cdef char digits[20]
    cdef int n = 0
    while True:
        digits[n] = c'0' + <char>(v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        buf[at] = digits[n]
        at += 1
    return at


cdef bytes _int_bytes(int64_t v):
    cdef char buf[24]
    if v < 0:  # never for a remaining count; exact anyway
        return b"%d" % v
    return PyBytes_FromStringAndSize(buf, _put_int(buf, 0, v))


# Written by hand, not with snprintf: a third of the time (0.22 -> 0.08 µs, bench
# core-gcra-duration), and GCRAGroup.charge 0.94 -> 0.56 µs (/tmp/h/rl_fmt_ab.py).
cdef bytes _duration(int64_t ns):
    cdef char buf[64]
    cdef Py_ssize_t at = 0
    cdef int64_t ms = ns // 1000000 + (1 if ns % 1000000 else 0) if ns > 0 else 0
    cdef int64_t s, frac, m
    if ms < 1000:
        if ms == 0:
            return b"0s"
        at = _put_int(buf, 0, ms)
        buf[at] = c'm'
        buf[at + 1] = c's'
        return PyBytes_FromStringAndSize(buf, at + 2)
    s = ms // 1000
    frac = ms % 1000
    m = s // 60
    if m >= 60:
        at = _put_int(buf, at, m // 60)
        buf[at] = c'h'
        at += 1
    if m > 0:
        at = _put_int(buf, at, m % 60)
        buf[at] = c'm'
        at += 1
    at = _put_int(buf, at, s % 60)
    if frac:  # .5, .25, .125: three digits without the trailing zeros
        buf[at] = c'.'
        buf[at + 1] = c'0' + <char>(frac // 100)
        at += 2
        if frac % 100:
            buf[at] = c'0' + <char>(frac // 10 % 10)
            at += 1
            if frac % 10:
                buf[at] = c'0' + <char>(frac % 10)
                at += 1
    buf[at] = c's'
    return PyBytes_FromStringAndSize(buf, at + 1)


def duration(int64_t ns):
    """OpenAI's (Go's) duration format, rounded up to the millisecond (see ``_gcra_py``)."""
    return _duration(ns)


cdef class GCRAGroup:
    """Several cells charged together for one request (see ``_gcra_py``): one call, no
    Python objects but the headers on the allowed path."""

    cdef readonly tuple cells, kinds
    cdef readonly object clock
    cdef Py_ssize_t _n, _nkinds
    cdef tuple _names, _limits
    # Per cell: counts requests (cost 1) or tokens; index of its kind.
    cdef int *_per_request
    cdef Py_ssize_t *_kind_of

    def __cinit__(self):
        self._per_request = NULL
        self._kind_of = NULL

    def __dealloc__(self):
        PyMem_Free(self._per_request)
        PyMem_Free(self._kind_of)

    def __init__(self, cells, kinds, clock):
        cdef Py_ssize_t i
        cells = tuple(cells)
        kinds = tuple(kinds)
        if len(cells) != len(kinds):
            raise ValueError("one kind per cell")
        for cell in cells:
            if not isinstance(cell, GCRA):
                raise TypeError(f"expected GCRA cells, got {type(cell).__name__}")
        self.cells = cells
        self.kinds = kinds
        self.clock = clock
        self._n = len(cells)
        order = list(dict.fromkeys(kinds))
        self._nkinds = len(order)
        n = self._n if self._n else 1
        PyMem_Free(self._per_request)
        PyMem_Free(self._kind_of)
        self._per_request = <int *> PyMem_Malloc(n * sizeof(int))
        self._kind_of = <Py_ssize_t *> PyMem_Malloc(n * sizeof(Py_ssize_t))
        if self._per_request == NULL or self._kind_of == NULL:
            raise MemoryError()
        for i in range(self._n):
            self._per_request[i] = kinds[i] == "requests"
            self._kind_of[i] = order.index(kinds[i])
        self._names = tuple((b"x-ratelimit-limit-" + k.encode(),
                             b"x-ratelimit-remaining-" + k.encode(),
                             b"x-ratelimit-reset-" + k.encode()) for k in order)
        # The limit header never changes: one tuple per cell, shared by every response.
        self._limits = tuple([(self._names[self._kind_of[i]][0],
                               b"%d" % (<GCRA>cells[i]).limit) for i in range(self._n)])

    def charge(self, int64_t tokens, list out):
        """Charge one request of ``tokens`` tokens; append the rate-limit headers to
        ``out``; ``None`` if allowed, else ``(index, retry_after_ns)`` (see ``_gcra_py``)."""
        # Scratch on the stack (a request meets a handful of limits), else on the heap:
        # nothing shared between calls, whatever the clock or counters do meanwhile.
        cdef int64_t left_s[_STACK_CELLS]
        cdef int64_t reset_s[_STACK_CELLS]
        cdef Py_ssize_t best_s[_STACK_CELLS]
        cdef int64_t *left = left_s
        cdef int64_t *reset = reset_s
        cdef Py_ssize_t *best = best_s
        if self._n > _STACK_CELLS:
            left = <int64_t *> PyMem_Malloc(self._n * sizeof(int64_t))
            reset = <int64_t *> PyMem_Malloc(self._n * sizeof(int64_t))
            best = <Py_ssize_t *> PyMem_Malloc(self._n * sizeof(Py_ssize_t))
        try:
            if left == NULL or reset == NULL or best == NULL:
                raise MemoryError()
            return self._charge(tokens, out, left, reset, best)
        finally:
            if left != left_s:
                PyMem_Free(left)
                PyMem_Free(reset)
                PyMem_Free(best)

    cdef object _charge(self, int64_t tokens, list out, int64_t *left, int64_t *reset,
                        Py_ssize_t *best):
        cdef int64_t now = self.clock()
        cdef Py_ssize_t i, j, k, b, refused = -1
        cdef int64_t retry = 0
        cdef tuple names
        for i in range(self._n):
            if not (<GCRA>self.cells[i])._take(now, 1 if self._per_request[i] else tokens,
                                               &left[i], &reset[i], &retry):
                refused = i
                for j in range(i):  # all or nothing: give back what the others took
                    (<GCRA>self.cells[j])._adjust(now, -1 if self._per_request[j] else -tokens)
                for j in range(self._n):  # the others as they are now (after the refund)
                    if j != i:
                        (<GCRA>self.cells[j])._peek(now, &left[j], &reset[j])
                break
        for k in range(self._nkinds):
            best[k] = -1
        for i in range(self._n):  # per kind: the refused cell, else the tightest
            k = self._kind_of[i]
            b = best[k]
            if b < 0 or (b != refused and (i == refused or left[i] < left[b])):
                best[k] = i
        for k in range(self._nkinds):
            i = best[k]
            names = <tuple>self._names[k]
            PyList_Append(out, self._limits[i])
            PyList_Append(out, (names[1], _int_bytes(left[i])))
            PyList_Append(out, (names[2], _duration(reset[i])))
        return None if refused < 0 else (refused, retry)

    def adjust(self, int64_t delta):
        """Correct every token cell by ``delta`` units (see ``_gcra_py``)."""
        cdef Py_ssize_t i
        cdef int64_t now
        if delta:
            now = self.clock()
            for i in range(self._n):
                if not self._per_request[i]:
                    (<GCRA>self.cells[i])._adjust(now, delta)
