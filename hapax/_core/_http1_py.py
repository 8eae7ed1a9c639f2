"""HTTP/1.1 message handling for the listener (pure-Python twin of ``_http1_c``: the spec).

The byte parsing itself is httptools' (llhttp); this unit is what the listener does
around it, per request:

* :class:`RequestHead` collects the head as httptools reports it (its ``on_url`` and
  ``on_header`` are handed to the parser directly), then answers the two questions the
  listener asks: :meth:`~RequestHead.scan` when the head is complete (may the body come?)
  and :meth:`~RequestHead.finish` when the message is (what the Exchange needs).
* :func:`response_head` builds a response head, optionally followed by its body.
* :func:`chunk` frames a batch of stream events as one write, optionally after the head.

Header bytes are decoded as latin-1 (RFC 9110 §5.5: anything else is opaque).
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["RequestHead", "BODY_TOO_LARGE", "EXPECT_CONTINUE", "BODY_FRAMED", "status_line",
           "response_head", "chunk"]

#: :meth:`RequestHead.scan` flags.  A ``content-length`` above the limit:
BODY_TOO_LARGE = 1
#: ``expect: 100-continue`` (any letter case):
EXPECT_CONTINUE = 2
#: The request announces a body (``transfer-encoding``, or a ``content-length`` other
#: than 0): httptools skips the body of an upgrade request, so such a one is refused.
BODY_FRAMED = 4

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


class RequestHead:
    """The head of the request being parsed: its target (``url``, as sent) and headers,
    and ``size``, the bytes they count toward the head limit (each header line counts
    its name, value and 4 bytes of ``": "`` and CRLF).

    One per connection: :meth:`reset` at the start of each message.
    """

    __slots__ = ("url", "size", "_headers")

    def __init__(self) -> None:
        self.url = b""
        self.size = 0
        self._headers: list[tuple[bytes, bytes]] = []

    def reset(self) -> None:
        self.url = b""
        self.size = 0
        self._headers = []

    # httptools callbacks: the target may arrive in pieces, a header always whole.

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self.size += len(name) + len(value) + 4

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header lines so far, as ``(name, value)`` bytes, in order."""
        return list(self._headers)

    def scan(self, max_body: int) -> int:
        """What the complete head says about the body: the flags above, over all its
        headers.  A ``content-length`` that is not a number is not this unit's business
        (httptools refuses it)."""
        flags = 0
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"content-length":
                if value.strip() != b"0":
                    flags |= BODY_FRAMED
                try:
                    if int(value) > max_body:
                        flags |= BODY_TOO_LARGE
                except ValueError:
                    pass
            elif lname == b"transfer-encoding":
                flags |= BODY_FRAMED
            elif lname == b"expect" and value.lower() == b"100-continue":
                flags |= EXPECT_CONTINUE
        return flags

    def finish(self) -> tuple[dict[str, str], str, str | None]:
        """``(headers, path, query)`` for the Exchange.

        ``headers``: lower-case names; a repeated header's values joined with ``", "``
        in order.  ``path`` and ``query`` split the target at the first ``?`` (``query``
        is None when empty); an absolute-form target (``http://host/p?q``) is reduced to
        what follows its authority (``/`` when nothing does, ``*`` too).
        """
        headers: dict[str, str] = {}
        for name, value in self._headers:
            key = name.decode("latin-1").lower()
            val = value.decode("latin-1")
            prev = headers.get(key)
            headers[key] = val if prev is None else f"{prev}, {val}"
        url = self.url
        if url[:1] != b"/":  # absolute-form (http://host/path) or "*"
            idx = url.find(b"/", url.find(b"//") + 2) if b"//" in url else -1
            url = url[idx:] if idx >= 0 else b"/"
        path, _, query = url.partition(b"?")
        return headers, path.decode("latin-1"), query.decode("latin-1") if query else None


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n`` (reason phrase ``Unknown`` for a code it does not know)."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def response_head(status: int, headers: list[tuple[bytes, bytes]],
                  extra: list[tuple[bytes, bytes]], request_id: str, provider: str | None,
                  date: bytes, alt_svc: bytes, framing: bytes, connection: bytes,
                  body: bytes = b"") -> bytes:
    """A response head, followed by ``body``.

    In order: the status line; ``headers`` (the provider's) then ``extra`` (the
    gateway's) as ``name: value`` lines; ``x-request-id`` (``request_id`` in latin-1)
    and ``x-hapax-provider`` (``provider`` in UTF-8, ``hapax`` when None); then
    ``date``, ``alt_svc``, ``framing`` and ``connection``, complete lines (CRLF
    included) or empty; the blank line.
    """
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    for name, value in extra:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"x-request-id: " + request_id.encode("latin-1") + b"\r\nx-hapax-provider: " +
                 (provider.encode() if provider is not None else b"hapax") + b"\r\n")
    parts += (date, alt_svc, framing, connection, b"\r\n", body)
    return b"".join(parts)


def chunk(batch: list[bytes], head: bytes = b"", chunked: bool = True) -> bytes:
    """A batch of stream events as one write: ``head``, then the events joined, framed as
    one chunk of the chunked coding (``chunked``) or as they are.  ``b""`` when the
    events hold no bytes, even with a ``head`` (an empty chunk would end the body)."""
    data = batch[0] if len(batch) == 1 else b"".join(batch)
    if not data:
        return b""
    if chunked:
        return b"%s%x\r\n%s\r\n" % (head, len(data), data)
    return head + data
