"""Server-Sent Events framing (compiled twin of ``_sse_py``, which is the spec).

Same API and results as the pure module, byte for byte, including what ``pending``
reports and what ``flush`` returns.  The difference is the mechanics: the held-back
tail lives in one growable C buffer (a piece that starts on an event boundary is cut
in place, only its tail is copied), line ends are found with ``memchr``, and every
event is a single copy (the normalised stream already holds the event followed by its
``\\n\\n``): a feed creates no Python object but the events and their list.

All scanning is done on ``const unsigned char*``, which Cython never bounds-checks:
each loop below keeps its own index below its own limit, so no directive is needed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

__all__ = ["SSEDecoder", "event_data"]

cdef enum:
    LF = 0x0A
    CR = 0x0D
    # Smallest buffer worth allocating (a typical chat chunk event is ~250 bytes).
    MIN_CAPACITY = 1024
    # Above this, a buffer that is mostly empty is given back: one huge event must not
    # pin its memory for the rest of a long stream.
    SHRINK_ABOVE = 64 * 1024


cdef Py_ssize_t _cut(const unsigned char* s, Py_ssize_t n, Py_ssize_t scan_from,
                     list events) except -1:
    """Append to ``events`` every event completed in ``s[:n]``; return where the
    held-back rest starts.

    This is ``s.split(b"\\n\\n")`` of the spec: leftmost, non-overlapping ``\\n\\n``
    matches; each part but the last, stripped of leading ``\\n``, is an event if not
    empty; the last part is the rest, stripped of leading ``\\n`` only if something
    was cut.  ``scan_from`` lets a caller skip bytes already known to hold no match.
    """
    cdef Py_ssize_t part = 0  # start of the current part
    cdef Py_ssize_t i = scan_from
    cdef Py_ssize_t k, a
    cdef const unsigned char* q
    cdef bint cut = False
    while i < n:
        q = <const unsigned char*>memchr(s + i, LF, <size_t>(n - i))
        if q == NULL:
            break
        k = q - s
        if k + 1 >= n:
            break
        if s[k + 1] != LF:
            i = k + 2  # s[k + 1] is no LF, so no match starts there either
            continue
        a = part
        while a < k and s[a] == LF:
            a += 1
        if a < k:
            # The part is followed by its "\n\n" in the stream: the event is one slice.
            events.append(PyBytes_FromStringAndSize(<const char*>s + a, k + 2 - a))
        part = i = k + 2
        cut = True
    if cut:
        while part < n and s[part] == LF:
            part += 1
    return part


cdef class SSEDecoder:
    """Cut an SSE byte stream, arriving in arbitrary pieces, into complete events.

    Line endings are normalised to ``\\n``; each event is returned with its
    terminating blank line; empty events are dropped.
    """

    cdef unsigned char* _buf  # the held-back, normalised tail (never contains "\n\n")
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    # The previous piece ended with "\r": a "\n" starting the next one is the rest of
    # that "\r\n" (the "\r" already went into the buffer as a "\n").
    cdef bint _skip_lf

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._skip_lf = False

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event that is not complete yet."""
        return self._len

    cdef int _reserve(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t cap
        cdef void* mem
        if size <= self._cap:
            return 0
        cap = max(size, 2 * self._cap, <Py_ssize_t>MIN_CAPACITY)
        mem = PyMem_Realloc(self._buf, <size_t>cap)
        if mem == NULL:
            raise MemoryError()
        self._buf = <unsigned char*>mem
        self._cap = cap
        return 0

    cdef int _keep(self, Py_ssize_t start) except -1:
        """Drop ``_buf[:start]`` (cut into events), keeping the rest."""
        cdef Py_ssize_t rest = self._len - start
        cdef Py_ssize_t cap
        cdef void* mem
        if start:
            memmove(self._buf, self._buf + start, <size_t>rest)
            self._len = rest
        if self._cap > SHRINK_ABOVE and 4 * rest < self._cap:
            cap = max(2 * rest, <Py_ssize_t>MIN_CAPACITY)
            mem = PyMem_Realloc(self._buf, <size_t>cap)
            if mem != NULL:  # failing to shrink is harmless
                self._buf = <unsigned char*>mem
                self._cap = cap
        return 0

    cdef int _append_normalised(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Append ``p[:n]`` with "\\r\\n" and lone "\\r" turned into "\\n"."""
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t k
        cdef unsigned char* out
        cdef const unsigned char* q
        self._reserve(self._len + n)
        out = self._buf + self._len
        while i < n:
            q = <const unsigned char*>memchr(p + i, CR, <size_t>(n - i))
            if q == NULL:
                memcpy(out, p + i, <size_t>(n - i))
                out += n - i
                break
            k = q - p
            memcpy(out, p + i, <size_t>(k - i))
            out += k - i
            out[0] = LF
            out += 1
            i = k + 1
            if i < n and p[i] == LF:
                i += 1
        self._skip_lf = p[n - 1] == CR  # only called with a "\r" in p[:n]
        self._len = out - self._buf
        return 0

    def feed(self, bytes data not None) -> list:
        """Add bytes; return the events they complete, in order."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t old = self._len
        cdef Py_ssize_t rest
        # Created before any scanning: nothing below can run Python code (bytes are
        # not GC-tracked), so the buffer cannot change under the pointers we hold.
        cdef list events = []
        if self._skip_lf and n:
            self._skip_lf = False
            if p[0] == LF:
                p += 1
                n -= 1
        if memchr(p, CR, <size_t>n) != NULL:
            self._append_normalised(p, n)
        elif old == 0:
            # Nothing held back (the usual case for reads that end on an event
            # boundary): cut straight out of ``data`` and copy only the tail.
            rest = _cut(p, n, 0, events)
            if rest < n:
                self._reserve(n - rest)
                memcpy(self._buf, p + rest, <size_t>(n - rest))
                self._len = n - rest
            return events
        else:
            self._reserve(old + n)
            memcpy(self._buf + old, p, <size_t>n)
            self._len = old + n
        if self._len > old:
            # The held tail has no "\n\n", so a match starts at its last byte at the
            # earliest: it is never rescanned (the spec rescans it, which is quadratic
            # in the number of pieces of a long event).
            self._keep(_cut(self._buf, self._len, max(old - 1, 0), events))
        return events

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated event, or b"")."""
        rest = PyBytes_FromStringAndSize(<const char*>self._buf, self._len)
        self._len = 0
        self._skip_lf = False
        self._keep(0)
        return rest


cdef inline Py_ssize_t _data_value(const unsigned char* s, Py_ssize_t a, Py_ssize_t b,
                                   Py_ssize_t* start) noexcept:
    """Length of the value of the line ``s[a:b]`` if it is a ``data`` field (its start
    in ``start``), else -1."""
    cdef Py_ssize_t size = b - a
    if size < 4 or memcmp(s + a, b"data", 4) != 0:
        return -1
    if size == 4:
        start[0] = b
        return 0
    if s[a + 4] != 0x3A:  # ":"
        return -1
    a += 6 if size > 5 and s[a + 5] == 0x20 else 5  # one optional space after ":"
    start[0] = a
    return b - a


def event_data(bytes event not None) -> bytes | None:
    """The ``data`` field of one event (several ``data:`` lines joined with ``\\n``),
    or ``None`` if the event has no data line.  Comment lines (``:``) are ignored."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(event)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(event)
    cdef const unsigned char* q
    cdef Py_ssize_t a, b, size, vstart
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t first = 0
    cdef Py_ssize_t first_size = 0
    cdef unsigned char* out
    cdef bint joined = False
    if n >= 8 and memcmp(s, b"data: ", 6) == 0:
        q = <const unsigned char*>memchr(s + 6, LF, <size_t>(n - 6))
        if q != NULL and q - s == n - 2:  # the usual single-line "data: ...\n\n"
            return PyBytes_FromStringAndSize(<const char*>s + 6, n - 8)
    # First pass: count the data lines and the size of the joined value.
    a = 0
    while True:
        q = <const unsigned char*>memchr(s + a, LF, <size_t>(n - a))
        b = n if q == NULL else q - s
        size = _data_value(s, a, b, &vstart)
        if size >= 0:
            if count == 0:
                first = vstart
                first_size = size
            count += 1
            total += size
        if q == NULL:
            break
        a = b + 1
    if count == 0:
        return None
    if count == 1:
        return PyBytes_FromStringAndSize(<const char*>s + first, first_size)
    # Second pass: join them with "\n" straight into the result.
    result = PyBytes_FromStringAndSize(NULL, total + count - 1)
    out = <unsigned char*>PyBytes_AS_STRING(result)
    a = 0
    while True:
        q = <const unsigned char*>memchr(s + a, LF, <size_t>(n - a))
        b = n if q == NULL else q - s
        size = _data_value(s, a, b, &vstart)
        if size >= 0:
            if joined:
                out[0] = LF
                out += 1
            memcpy(out, s + vstart, <size_t>size)
            out += size
            joined = True
        if q == NULL:
            break
        a = b + 1
    return result
