"""Byte-bounded LRU with expiry: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._lru_c import LRU
else:  # the twins share one API; mypy sees two classes
    from hapax._core._lru_py import LRU  # type: ignore[assignment]

__all__ = ["LRU"]
