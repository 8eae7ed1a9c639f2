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
    __slots__ = ("_buf", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        # The previous piece ended with "\r": a "\n" starting the next one is the rest of
        # that "\r\n".  The "\r" itself ends a line either way, so it is not held back
        # (holding it would delay every event of a CR-only stream by one piece).
        self._skip_lf = False

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event that is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the events they complete, in order."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:  # "\n"
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data.endswith(b"\r")
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
        self._skip_lf = False
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
