"""Server-Sent Events framing (pure-Python twin of ``_sse_c``).

:class:`SSEDecoder` cuts an upstream byte stream, arriving in arbitrary pieces, into
complete events.  Line endings are normalised to ``\\n`` (``\\r\\n`` and lone ``\\r``
both end a line, per the SSE spec); each event is returned with its terminating blank
line (``b"...\\n\\n"``) so it can be written to the client as is.  Empty events (extra
blank lines) are dropped.
"""

from __future__ import annotations

__all__ = ["SSEDecoder", "event_data"]


class SSEDecoder:
    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous piece ended with "\r" (maybe half of "\r\n")

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event that is not complete yet."""
        return len(self._buf) + self._cr

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the events they complete, in order."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data = data[:-1]
                self._cr = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        parts = buf.split(b"\n\n")
        self._buf = parts.pop().lstrip(b"\n")
        events = []
        for part in parts:
            part = part.lstrip(b"\n")
            if part:
                events.append(part + b"\n\n")
        return events

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated event, or b"")."""
        rest = self._buf
        self._buf = b""
        self._cr = False
        return rest


def event_data(event: bytes) -> bytes | None:
    """The ``data`` field of one event (several ``data:`` lines joined with ``\\n``),
    or ``None`` if the event has no data line.  Comment lines (``:``) are ignored."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        return event[6:-2]  # the usual single-line "data: ...\n\n"
    found = None
    for line in event.split(b"\n"):
        if line.startswith(b"data"):
            if line == b"data":
                value = b""
            elif line[4:5] == b":":
                value = line[6:] if line[5:6] == b" " else line[5:]
            else:
                continue
            found = value if found is None else found + b"\n" + value
    return found
