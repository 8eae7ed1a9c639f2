# cython: language_level=3, embedsignature=True
"""HTTP/1.1 message handling for the listener (compiled twin of ``_http1_py``, the spec).

Same API and results.  The difference is the mechanics: header names are lower-cased
and compared in place, numbers read without a Python ``int``, and each output (a header
dict entry, a response head, a framed chunk) is written in one allocation instead of a
chain of concatenations.  Anything off the common path (a non-ASCII header name, a
provider header that is not a ``bytes`` pair, a number ``int()`` would read differently)
takes the spec's own code, so results stay identical.

All scanning is done on ``const char*`` / ``unsigned char*`` with explicit limits,
which Cython never bounds-checks: no directive is needed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memchr, memcpy

from http import HTTPStatus

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    int PyUnicode_KIND(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_1BYTE_KIND
    bint PyUnicode_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    bint PyList_CheckExact(object o)

__all__ = ["RequestHead", "BODY_TOO_LARGE", "EXPECT_CONTINUE", "BODY_FRAMED", "status_line",
           "response_head", "chunk"]

BODY_TOO_LARGE = 1
EXPECT_CONTINUE = 2
BODY_FRAMED = 4

cdef enum:
    _TOO_LARGE = 1
    _EXPECT = 2
    _FRAMED = 4

cdef dict _STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode()
                           for s in HTTPStatus}
cdef bytes _HAPAX = b"hapax"


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c  # ASCII only, as bytes.lower()


cdef bint _is_lower(bytes b, const char* lit, Py_ssize_t n):
    """``b.lower() == lit`` (``lit``: lower-case ASCII of length ``n``)."""
    if PyBytes_GET_SIZE(b) != n:
        return False
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(s[i]) != <unsigned char>lit[i]:
            return False
    return True


cdef inline bint _space(unsigned char c) noexcept nogil:
    return c == 32 or 9 <= c <= 13  # what bytes.strip() strips


cdef bint _above(bytes value, Py_ssize_t limit) except -1:
    """``int(value) > limit``, False where ``int`` refuses the value."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t i
    cdef long long v = 0
    if 0 < n <= 18:  # plain digits cannot overflow: read them here
        for i in range(n):
            if not 48 <= s[i] <= 57:
                break
            v = v * 10 + (s[i] - 48)
        else:
            return v > limit
    try:  # signs, spaces, underscores, huge values: int() decides
        return int(value) > limit
    except ValueError:
        return False


cdef str _key(bytes name):
    """``name.decode("latin-1").lower()``."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] >= 128:  # str.lower() of latin-1 letters: leave it to Python
            return name.decode("latin-1").lower()
    cdef str key = PyUnicode_New(n, 127)
    cdef unsigned char* d = <unsigned char*>PyUnicode_DATA(key)
    for i in range(n):
        d[i] = _lower(s[i])
    return key


cdef class RequestHead:
    """The head of the request being parsed (see ``_http1_py.RequestHead``)."""

    cdef readonly bytes url
    cdef readonly Py_ssize_t size
    cdef list _headers

    def __cinit__(self):
        self.url = b""
        self.size = 0
        self._headers = []

    def reset(self):
        self.url = b""
        self.size = 0
        self._headers = []

    def on_url(self, bytes url not None):
        self.url = url if PyBytes_GET_SIZE(self.url) == 0 else self.url + url
        self.size += PyBytes_GET_SIZE(url)

    def on_header(self, bytes name not None, bytes value not None):
        self._headers.append((name, value))
        self.size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4

    @property
    def headers(self):
        """The header lines so far, as ``(name, value)`` bytes, in order."""
        return list(self._headers)

    def scan(self, Py_ssize_t max_body):
        """What the complete head says about the body (see ``_http1_py``)."""
        cdef int flags = 0
        cdef bytes name, value
        cdef const unsigned char* s
        cdef Py_ssize_t a, b
        for name, value in self._headers:
            if _is_lower(name, b"content-length", 14):
                s = <const unsigned char*>PyBytes_AS_STRING(value)
                a, b = 0, PyBytes_GET_SIZE(value)
                while a < b and _space(s[a]):
                    a += 1
                while b > a and _space(s[b - 1]):
                    b -= 1
                if b - a != 1 or s[a] != 48:  # value.strip() != b"0"
                    flags |= _FRAMED
                if _above(value, max_body):
                    flags |= _TOO_LARGE
            elif _is_lower(name, b"transfer-encoding", 17):
                flags |= _FRAMED
            elif _is_lower(name, b"expect", 6) and _is_lower(value, b"100-continue", 12):
                flags |= _EXPECT
        return flags

    def finish(self):
        """``(headers, path, query)`` for the Exchange (see ``_http1_py``)."""
        cdef dict headers = {}
        cdef bytes name, value
        cdef str key, val
        cdef PyObject* prev
        for name, value in self._headers:
            key = _key(name)
            val = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                                         NULL)
            prev = PyDict_GetItem(headers, key)  # str keys: no error
            if prev == NULL:
                PyDict_SetItem(headers, key, val)
            else:
                PyDict_SetItem(headers, key, (<str><object>prev) + ", " + val)
        cdef const char* s = PyBytes_AS_STRING(self.url)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.url)
        cdef Py_ssize_t start = 0, i
        cdef const char* q
        if n == 0 or s[0] != 47:  # "/"  # absolute-form (http://host/path) or "*"
            start = -1
            for i in range(n - 1):
                if s[i] == 47 and s[i + 1] == 47:
                    q = <const char*>memchr(s + i + 2, 47, <size_t>(n - i - 2))
                    if q != NULL:
                        start = q - s
                    break
            if start < 0:
                return headers, "/", None
        q = <const char*>memchr(s + start, 63,  # "?"
                                    <size_t>(n - start))
        if q == NULL:
            return headers, PyUnicode_DecodeLatin1(s + start, n - start, NULL), None
        i = q - s
        return (headers, PyUnicode_DecodeLatin1(s + start, i - start, NULL),
                PyUnicode_DecodeLatin1(s + i + 1, n - i - 1, NULL) if i + 1 < n else None)


def status_line(status):
    """``HTTP/1.1 200 OK\\r\\n`` (reason phrase ``Unknown`` for a code it does not know)."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


cdef inline char* _put(char* p, const char* s, Py_ssize_t n) noexcept:
    memcpy(p, s, <size_t>n)
    return p + n


cdef inline char* _put_bytes(char* p, bytes b) noexcept:
    return _put(p, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef Py_ssize_t _lines_size(object pairs) except -2:
    """Bytes taken by ``name: value\\r\\n`` lines for ``pairs``, or -1 if a pair is not
    a tuple of two ``bytes`` (the spec's code then builds the head)."""
    if not PyList_CheckExact(pairs):
        return -1
    cdef Py_ssize_t total = 0
    cdef object item
    for item in <list>pairs:
        if not PyTuple_CheckExact(item) or len(<tuple>item) != 2:
            return -1
        name = (<tuple>item)[0]
        value = (<tuple>item)[1]
        if not PyBytes_CheckExact(name) or not PyBytes_CheckExact(value):
            return -1
        total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    return total


cdef char* _put_lines(char* p, list pairs) noexcept:
    cdef tuple item
    for item in pairs:
        p = _put_bytes(p, <bytes>item[0])
        p = _put(p, b": ", 2)
        p = _put_bytes(p, <bytes>item[1])
        p = _put(p, b"\r\n", 2)
    return p


def response_head(status, headers, extra, request_id, provider, date, alt_svc, framing,
                  connection, body=b""):
    """A response head, followed by ``body`` (see ``_http1_py``)."""
    # Whatever may run Python code (a status object's hash) comes first: between sizing
    # the lines and writing them, nothing may change them (only the allocation runs).
    line = _STATUS_LINES.get(status)
    cdef bytes status_bytes = line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status
    cdef Py_ssize_t nh = _lines_size(headers)
    cdef Py_ssize_t ne = _lines_size(extra)
    if provider is None:
        provider = _HAPAX
    # A str of kind 1 holds its latin-1 bytes as they are (and an ASCII one its UTF-8).
    if (nh < 0 or ne < 0 or not PyUnicode_CheckExact(request_id)
            or PyUnicode_KIND(request_id) != PyUnicode_1BYTE_KIND
            or not (provider is _HAPAX or PyUnicode_CheckExact(provider)
                    and PyUnicode_IS_ASCII(provider))
            or not (PyBytes_CheckExact(date) and PyBytes_CheckExact(alt_svc)
                    and PyBytes_CheckExact(framing) and PyBytes_CheckExact(connection)
                    and PyBytes_CheckExact(body))):
        return _response_head_py(status_bytes, headers, extra, request_id,
                                 None if provider is _HAPAX else provider, date, alt_svc,
                                 framing, connection, body)
    cdef Py_ssize_t nrid = PyUnicode_GET_LENGTH(request_id)
    cdef Py_ssize_t nprov = (PyBytes_GET_SIZE(provider) if provider is _HAPAX
                             else PyUnicode_GET_LENGTH(provider))
    cdef Py_ssize_t total = (PyBytes_GET_SIZE(status_bytes) + nh + ne
                             + 14 + nrid + 20 + nprov + 2
                             + PyBytes_GET_SIZE(date) + PyBytes_GET_SIZE(alt_svc)
                             + PyBytes_GET_SIZE(framing) + PyBytes_GET_SIZE(connection)
                             + 2 + PyBytes_GET_SIZE(body))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _put_bytes(p, status_bytes)
    p = _put_lines(p, <list>headers)
    p = _put_lines(p, <list>extra)
    p = _put(p, b"x-request-id: ", 14)
    p = _put(p, <const char*>PyUnicode_DATA(request_id), nrid)
    p = _put(p, b"\r\nx-hapax-provider: ", 20)
    if provider is _HAPAX:
        p = _put_bytes(p, <bytes>provider)
    else:
        p = _put(p, <const char*>PyUnicode_DATA(provider), nprov)
    p = _put(p, b"\r\n", 2)
    p = _put_bytes(p, <bytes>date)
    p = _put_bytes(p, <bytes>alt_svc)
    p = _put_bytes(p, <bytes>framing)
    p = _put_bytes(p, <bytes>connection)
    p = _put(p, b"\r\n", 2)
    _put_bytes(p, <bytes>body)
    return out


def _response_head_py(bytes status_line, headers, extra, request_id, provider, date, alt_svc,
                      framing, connection, body):
    # The spec's code, for arguments off the common path.
    parts = [status_line]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    for name, value in extra:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"x-request-id: " + request_id.encode("latin-1") + b"\r\nx-hapax-provider: " +
                 (provider.encode() if provider is not None else b"hapax") + b"\r\n")
    parts += (date, alt_svc, framing, connection, b"\r\n", body)
    return b"".join(parts)


cdef char* _HEX = b"0123456789abcdef"


def chunk(batch, head=b"", bint chunked=True):
    """A batch of stream events as one write (see ``_http1_py``)."""
    cdef Py_ssize_t n = 0, hn, total, k
    cdef object ev
    # Sizing, then writing: no Python code runs in between (only the allocation).
    cdef char digits[16]
    cdef size_t m
    if not PyList_CheckExact(batch) or not PyBytes_CheckExact(head):
        return _chunk_py(batch, head, chunked)
    for ev in <list>batch:
        if not PyBytes_CheckExact(ev):
            return _chunk_py(batch, head, chunked)
        n += PyBytes_GET_SIZE(ev)
    if n == 0:
        return b""
    hn = PyBytes_GET_SIZE(head)
    if not chunked and hn == 0 and len(<list>batch) == 1:
        return (<list>batch)[0]
    k = 0
    if chunked:
        m = <size_t>n
        while m:
            digits[15 - k] = _HEX[m & 15]
            m >>= 4
            k += 1
    total = hn + n + ((k + 4) if chunked else 0)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _put(p, PyBytes_AS_STRING(head), hn)
    if chunked:
        p = _put(p, digits + 16 - k, k)
        p = _put(p, b"\r\n", 2)
    for ev in <list>batch:
        p = _put_bytes(p, <bytes>ev)
    if chunked:
        _put(p, b"\r\n", 2)
    return out


def _chunk_py(batch, head, chunked):
    # The spec's code, for arguments off the common path.
    data = batch[0] if len(batch) == 1 else b"".join(batch)
    if not data:
        return b""
    if chunked:
        return b"%s%x\r\n%s\r\n" % (head, len(data), data)
    return head + data
