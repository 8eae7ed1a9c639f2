"""SSE framing: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._sse_c import SSEDecoder, event_data
else:  # the twins share one API; mypy sees two classes
    from hapax._core._sse_py import SSEDecoder, event_data  # type: ignore[assignment]

__all__ = ["SSEDecoder", "event_data"]
