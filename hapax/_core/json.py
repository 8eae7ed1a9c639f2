"""JSON field surgery: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._json_c import find_value, replace_string_value
else:  # the twins share one API; mypy sees two classes
    from hapax._core._json_py import find_value, replace_string_value  # type: ignore[assignment]

__all__ = ["find_value", "replace_string_value"]
