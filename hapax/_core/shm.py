"""Shared counters: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._shm_c import SharedCounters
else:  # the twins share one API; mypy sees two classes
    from hapax._core._shm_py import SharedCounters  # type: ignore[assignment]

__all__ = ["SharedCounters"]
