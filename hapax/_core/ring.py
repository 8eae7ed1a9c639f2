"""Ring buffer and fair queue: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._ring_c import Entry, FairQueue, Ring
else:  # the twins share one API; mypy sees two classes
    from hapax._core._ring_py import Entry, FairQueue, Ring  # type: ignore[assignment]

__all__ = ["Ring", "FairQueue", "Entry"]
