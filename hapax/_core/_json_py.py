"""Top-level JSON field surgery without a full parse (pure-Python twin of ``_json_c``).

Used to forward a client's request body byte for byte while rewriting one field
(``model``): re-serialising would cost time and could change numbers, key order or
unicode escapes the provider sees.

The input is assumed to be a valid JSON document (the gateway parsed it already);
on anything unexpected the functions return ``None`` and the caller falls back to
re-serialising.
"""

from __future__ import annotations

import re

__all__ = ["find_value", "replace_string_value"]

# A string token, or any single structural character.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]', re.S)
_WS = b" \t\r\n"


def find_value(body: bytes, key: bytes) -> tuple[int, int] | None:
    """Span ``(start, end)`` of the value of top-level ``key`` in the object ``body``.

    ``key`` is the raw key text without quotes (compared as written, escapes included).
    The last occurrence wins, as in every JSON parser Hapax uses.  ``None`` if the
    document is not an object or has no such key.
    """
    n = len(body)
    i = 0
    while i < n and body[i] in _WS:
        i += 1
    if i >= n or body[i] != 0x7B:  # "{"
        return None
    depth = 0
    want = b'"' + key + b'"'
    found = None
    expect_key = False
    pos = i
    for m in _TOKEN.finditer(body, i):
        tok = m.group()
        c = tok[0]
        if c == 0x22:  # string
            if depth == 1 and expect_key:
                if tok == want:
                    j = m.end()
                    while j < n and body[j] in _WS:
                        j += 1
                    if j >= n or body[j] != 0x3A:  # ":"
                        return None
                    j += 1
                    while j < n and body[j] in _WS:
                        j += 1
                    end = _value_end(body, j)
                    if end is None:
                        return None
                    found = (j, end)
                expect_key = False
        elif c in (0x7B, 0x5B):  # { [
            depth += 1
            expect_key = c == 0x7B and depth == 1
        elif c in (0x7D, 0x5D):  # } ]
            depth -= 1
            if depth == 0:
                pos = m.end()
                break
        elif c == 0x2C and depth == 1:  # ,
            expect_key = True
    else:
        return None
    while pos < n and body[pos] in _WS:
        pos += 1
    if pos != n:
        return None
    return found


def _value_end(body: bytes, j: int) -> int | None:
    """End offset of the JSON value starting at ``j``."""
    n = len(body)
    if j >= n:
        return None
    c = body[j]
    if c == 0x22:
        m = _TOKEN.match(body, j)
        return m.end() if m else None
    if c in (0x7B, 0x5B):
        depth = 0
        for m in _TOKEN.finditer(body, j):
            t = m.group()[0]
            if t in (0x7B, 0x5B):
                depth += 1
            elif t in (0x7D, 0x5D):
                depth -= 1
                if depth == 0:
                    return m.end()
        return None
    k = j
    while k < n and body[k] not in b",}] \t\r\n":
        k += 1
    return k if k > j else None


def replace_string_value(body: bytes, key: bytes, value: bytes) -> bytes | None:
    """``body`` with top-level ``key`` set to the JSON string ``value`` (already
    escaped, without quotes).  ``None`` if ``key`` is absent or not a string."""
    span = find_value(body, key)
    if span is None or body[span[0]] != 0x22:
        return None
    start, end = span
    return body[:start] + b'"' + value + b'"' + body[end:]
