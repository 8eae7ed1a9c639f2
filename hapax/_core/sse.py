"""SSE framing: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._sse_c import SSEDecoder, event_data
else:
    from hapax._core._sse_py import SSEDecoder, event_data

__all__ = ["SSEDecoder", "event_data"]
