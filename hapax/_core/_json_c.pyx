"""Top-level JSON field surgery without a full parse (compiled twin of ``_json_py``,
which is the spec).

Same results as the pure module on every input, valid JSON or not.  The pure module
tokenises with a regular expression (a string token, or any one of ``{}[]:,``;
everything else is skipped); :func:`_next_token` reproduces exactly what its
``finditer`` yields, scanning strings with ``memchr`` instead of one match object per
token.

All scanning is done on ``const unsigned char*``, which Cython never bounds-checks:
each loop below keeps its own index below its own limit, so no directive is needed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

__all__ = ["find_value", "replace_string_value"]

cdef enum:
    QUOTE = 0x22
    BACKSLASH = 0x5C
    COMMA = 0x2C
    COLON = 0x3A
    LBRACE = 0x7B
    RBRACE = 0x7D
    LBRACKET = 0x5B
    RBRACKET = 0x5D


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x09 or c == 0x0A or c == 0x0D


cdef inline Py_ssize_t _skip_ws(const unsigned char* s, Py_ssize_t i,
                                Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(s[i]):
        i += 1
    return i


cdef Py_ssize_t _string_end(const unsigned char* s, Py_ssize_t i,
                            Py_ssize_t n) noexcept nogil:
    """End of the string token whose opening quote is ``s[i]``, or -1 if it is not
    terminated (the regex ``"(?:[^"\\\\]|\\\\.)*"`` does not match there).

    A quote closes the string iff an even run of backslashes precedes it: the byte
    before the run is never consumed as the first half of an escape, so the run is
    read as pairs from its start.
    """
    cdef const unsigned char* q
    cdef Py_ssize_t j = i + 1
    cdef Py_ssize_t k, b
    while j < n:
        q = <const unsigned char*>memchr(s + j, QUOTE, <size_t>(n - j))
        if q == NULL:
            return -1
        k = q - s
        b = k - 1
        while s[b] == BACKSLASH:  # stops at s[i] (a quote) at the latest
            b -= 1
        if (k - 1 - b) % 2 == 0:
            return k + 1
        j = k + 1
    return -1


cdef Py_ssize_t _next_token(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                            bint* strings, Py_ssize_t* end) noexcept nogil:
    """Start of the next token at or after ``i`` (its end in ``end``), or -1.

    An unterminated string is not a token: its quote is skipped like any other byte
    and scanning goes on inside it, as the regex does.  Once a string has run off the
    end, so does every string opened by a later quote (each such quote was read as
    part of an escape, so scanning from it pairs the rest the same way): ``strings``
    is then cleared to avoid the rescans, which make the regex quadratic.
    """
    cdef unsigned char c
    cdef Py_ssize_t e
    while i < n:
        c = s[i]
        if c == QUOTE:
            if strings[0]:
                e = _string_end(s, i, n)
                if e >= 0:
                    end[0] = e
                    return i
                strings[0] = False
        elif (c == LBRACE or c == RBRACE or c == LBRACKET or c == RBRACKET
              or c == COLON or c == COMMA):
            end[0] = i + 1
            return i
        i += 1
    return -1


cdef Py_ssize_t _value_end(const unsigned char* s, Py_ssize_t j,
                           Py_ssize_t n) noexcept nogil:
    """End offset of the JSON value starting at ``j``, or -1."""
    cdef unsigned char c
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t t, e
    cdef Py_ssize_t k = j
    cdef bint strings = True
    if j >= n:
        return -1
    c = s[j]
    if c == QUOTE:
        return _string_end(s, j, n)
    if c == LBRACE or c == LBRACKET:
        while True:
            t = _next_token(s, j, n, &strings, &e)
            if t < 0:
                return -1
            c = s[t]
            if c == LBRACE or c == LBRACKET:
                depth += 1
            elif c == RBRACE or c == RBRACKET:
                depth -= 1
                if depth == 0:
                    return e
            j = e
    while k < n:
        c = s[k]
        if c == COMMA or c == RBRACE or c == RBRACKET or _is_ws(c):
            break
        k += 1
    return k if k > j else -1


cdef bint _find(const unsigned char* s, Py_ssize_t n, const unsigned char* key,
                Py_ssize_t klen, Py_ssize_t* start, Py_ssize_t* end) noexcept nogil:
    """The span of the value of top-level ``key`` in ``start``/``end``; false if none."""
    cdef Py_ssize_t i = _skip_ws(s, 0, n)
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t t, e, j, v
    cdef Py_ssize_t found = -1
    cdef Py_ssize_t found_end = -1
    cdef bint expect_key = False
    cdef bint strings = True
    cdef unsigned char c
    if i >= n or s[i] != LBRACE:
        return False
    while True:
        t = _next_token(s, i, n, &strings, &e)
        if t < 0:
            return False  # the root object is never closed
        c = s[t]
        if c == QUOTE:
            if depth == 1 and expect_key:
                if e - t - 2 == klen and memcmp(s + t + 1, key, <size_t>klen) == 0:
                    j = _skip_ws(s, e, n)
                    if j >= n or s[j] != COLON:
                        return False
                    j = _skip_ws(s, j + 1, n)
                    v = _value_end(s, j, n)
                    if v < 0:
                        return False
                    found = j  # the last occurrence wins
                    found_end = v
                expect_key = False
            # Scanning goes on after the key, not after its value, as in the spec.
        elif c == LBRACE or c == LBRACKET:
            depth += 1
            expect_key = c == LBRACE and depth == 1
        elif c == RBRACE or c == RBRACKET:
            depth -= 1
            if depth == 0:
                break
        elif c == COMMA and depth == 1:
            expect_key = True
        i = e
    if _skip_ws(s, e, n) != n:
        return False
    if found < 0:
        return False
    start[0] = found
    end[0] = found_end
    return True


def find_value(bytes body not None, bytes key not None) -> tuple[int, int] | None:
    """Span ``(start, end)`` of the value of top-level ``key`` in the object ``body``.

    ``key`` is the raw key text without quotes (compared as written, escapes included).
    The last occurrence wins, as in every JSON parser Hapax uses.  ``None`` if the
    document is not an object or has no such key.
    """
    cdef Py_ssize_t start, end
    if not _find(<const unsigned char*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body),
                 <const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                 &start, &end):
        return None
    return (start, end)


def replace_string_value(bytes body not None, bytes key not None,
                         bytes value not None) -> bytes | None:
    """``body`` with top-level ``key`` set to the JSON string ``value`` (already
    escaped, without quotes).  ``None`` if ``key`` is absent or not a string."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t vlen = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t start, end
    cdef char* out
    if not _find(s, n, <const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                 &start, &end):
        return None
    if s[start] != QUOTE:
        return None
    # One allocation and three copies, instead of the spec's four concatenations.
    result = PyBytes_FromStringAndSize(NULL, n - (end - start) + vlen + 2)
    out = PyBytes_AS_STRING(result)
    memcpy(out, s, <size_t>start)
    out += start
    out[0] = QUOTE
    memcpy(out + 1, PyBytes_AS_STRING(value), <size_t>vlen)
    out += vlen + 1
    out[0] = QUOTE
    memcpy(out + 1, s + end, <size_t>(n - end))
    return result
