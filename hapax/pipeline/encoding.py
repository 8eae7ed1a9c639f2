"""Compressed request bodies: ``Content-Encoding: gzip`` and ``deflate`` (RFC 9110 §8.4).

The gateway decodes them before anything reads the body (plugins, dedup, the cache and
the provider all see the JSON), and the provider gets the body uncompressed.  The
decoded size is bounded by ``server.limits.max_body``, as the body on the wire is: a
small body that inflates past it (a "zip bomb") is refused with 413 as soon as the
limit is passed, without inflating the rest.  Other codings get 415.
"""

from __future__ import annotations

import zlib

from hapax.errors import BadRequest, RequestError

__all__ = ["decode_body"]

_GZIP = 16 + zlib.MAX_WBITS
#: wbits per coding: gzip's container, or zlib's (what RFC 9110 calls ``deflate``; a raw
#: deflate stream, which some clients send under that name, is accepted too).
_WBITS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}


def decode_body(body: bytes, header: str, limit: int) -> bytes:
    """``body`` with the codings of a ``Content-Encoding`` header undone (the last one
    applied first), at most ``limit`` bytes.  Raises RequestError: 415 for a coding
    other than gzip, deflate and identity, 413 past ``limit``, 400 for a body that is
    not what its coding says."""
    codings = [c.strip().lower() for c in header.split(",")]
    for coding in reversed(codings):
        if coding in ("identity", ""):
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise RequestError(f"unsupported Content-Encoding {coding[:40]!r}: send the "
                               f"body uncompressed, or compressed with gzip or deflate",
                               status=415, type="invalid_request_error",
                               code="unsupported_content_encoding")
        try:
            body = _inflate(body, wbits, limit)
        except zlib.error:
            if coding != "deflate":
                raise _corrupt(coding) from None
            try:
                body = _inflate(body, -zlib.MAX_WBITS, limit)
            except zlib.error:
                raise _corrupt(coding) from None
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Inflate ``data`` (gzip: every member of a multi-member body), stopping as soon as
    the output passes ``limit``."""
    out: list[bytes] = []
    size = 0
    while True:
        d = zlib.decompressobj(wbits)
        piece = d.decompress(data, limit - size + 1)
        size += len(piece)
        if size > limit or d.unconsumed_tail:
            raise RequestError(f"request body larger than {limit} bytes once decompressed",
                               status=413, type="invalid_request_error",
                               code="request_too_large")
        out.append(piece)
        if not d.eof:
            raise zlib.error("truncated")
        data = d.unused_data
        if not data or wbits != _GZIP:
            if data:
                raise zlib.error("trailing data")
            return b"".join(out)


def _corrupt(coding: str) -> BadRequest:
    return BadRequest(f"the request body is not valid {coding} data (Content-Encoding: "
                      f"{coding})", code="invalid_body")
