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
#: The zlib formats (wbits) tried per coding, in order: gzip's container; for
#: ``deflate``, zlib's (what RFC 9110 means), then a raw deflate stream, which some
#: clients send under that name.
_WBITS = {"gzip": (_GZIP,), "x-gzip": (_GZIP,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}


def decode_body(body: bytes, header: str, limit: int) -> bytes:
    """``body`` with the codings of a ``Content-Encoding`` header undone (the last one
    applied first), at most ``limit`` bytes.  Raises RequestError: 415 for a coding
    other than gzip, deflate and identity, 413 past ``limit``, 400 for a body that is
    not what its coding says."""
    codings = [c.strip().lower() for c in header.split(",")]
    for coding in reversed(codings):
        if coding in ("identity", ""):
            continue
        formats = _WBITS.get(coding)
        if formats is None:
            raise RequestError(f"unsupported Content-Encoding {coding[:40]!r}: send the "
                               f"body uncompressed, or compressed with gzip or deflate",
                               status=415, type="invalid_request_error",
                               code="unsupported_content_encoding")
        for wbits in formats:
            try:
                body = _inflate(body, wbits, limit)
                break
            except zlib.error:
                continue
        else:
            raise BadRequest(f"the request body is not valid {coding} data "
                             f"(Content-Encoding: {coding})", code="invalid_body")
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
        if not data:
            return b"".join(out)
        if wbits != _GZIP:  # only gzip has members; anything else after the end is junk
            raise zlib.error("trailing data")
