"""Response-cache store shared by a node's worker processes: compiled unless
HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._shmcache_c import SharedLRU
else:  # the twins share one API; mypy sees two classes
    from hapax._core._shmcache_py import SharedLRU  # type: ignore[assignment]

__all__ = ["SharedLRU"]
