"""Stub for the compiled JSON field surgery unit (same API as ``_json_py``)."""

__all__ = ["find_value", "replace_string_value"]

def find_value(body: bytes, key: bytes) -> tuple[int, int] | None:
    """Span ``(start, end)`` of the value of top-level ``key`` in the object ``body``."""

def replace_string_value(body: bytes, key: bytes, value: bytes) -> bytes | None:
    """``body`` with top-level ``key`` set to the JSON string ``value`` (already escaped)."""
