"""The replay log of a shared stream: compiled unless HAPAX_NO_EXTENSIONS is set (see
hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._flight_c import ReplayLog
else:  # the twins share one API; mypy sees two classes
    from hapax._core._flight_py import ReplayLog  # type: ignore[assignment]

__all__ = ["ReplayLog"]
