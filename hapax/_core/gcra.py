"""GCRA rate limiting: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._gcra_c import GCRA, GCRAGroup, duration
else:  # the twins share one API; mypy sees two classes
    from hapax._core._gcra_py import GCRA, GCRAGroup, duration  # type: ignore[assignment]

__all__ = ["GCRA", "GCRAGroup", "duration"]
