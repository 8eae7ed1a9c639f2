"""Stub for the compiled SSE framing unit (same API as ``_sse_py``)."""

from typing_extensions import disjoint_base

__all__ = ["SSEDecoder", "event_data"]

@disjoint_base  # an extension type with C-level state: it cannot share a layout
class SSEDecoder:
    def __init__(self) -> None: ...
    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event that is not complete yet."""
    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the events they complete, in order."""
    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated event, or b"")."""

def event_data(event: bytes) -> bytes | None:
    """The ``data`` field of one event, or ``None`` if it has no data line."""
