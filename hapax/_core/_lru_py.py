"""A byte-bounded LRU with per-entry expiry (pure-Python twin of ``_lru_c``).

Each entry has a key, a value, a size in bytes (what the caller says it costs) and an
expiry time (on the caller's clock).  The sum of the sizes never exceeds ``max_bytes``:
:meth:`LRU.put` evicts least recently used entries until the new one fits, and refuses
one bigger than the whole bound.  :meth:`LRU.get` of an expired entry removes it and
answers ``None``.  Every operation is O(1) (an ordered dict: hash lookup plus moving a
link); expired entries that are never asked for again leave when the LRU order evicts
them.

Counters: ``hits``, ``misses`` (unknown or expired keys), ``evictions`` (entries removed
to make room), ``bytes`` (the sum of the sizes held) and ``len()``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["LRU"]


class LRU:
    """A byte-bounded least-recently-used map with per-entry expiry."""

    __slots__ = ("_max_bytes", "_bytes", "_entries", "_hits", "_misses", "_evictions")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._max_bytes = max_bytes
        self._bytes = 0
        # key -> [value, size, expires_at]; order = recency (last = most recent)
        self._entries: OrderedDict[Hashable, list[Any]] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def evictions(self) -> int:
        return self._evictions

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is held (expired or not; no counter changes, no reordering)."""
        return key in self._entries

    def get(self, key: Hashable, now: float) -> Any:
        """The value of ``key`` if held and ``now < expires_at`` (it becomes the most
        recently used), else ``None`` (an expired entry is removed)."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if now >= entry[2]:
            del self._entries[key]
            self._bytes -= entry[1]
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any, size: int, expires_at: float) -> bool:
        """Hold ``value`` under ``key`` (replacing any older value) as the most recently
        used entry, evicting the least recently used until it fits.  An entry bigger
        than ``max_bytes`` is refused: ``False`` (and an older value of ``key`` is gone)."""
        if size < 0:
            raise ValueError("size must be >= 0")
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self._max_bytes:
            return False
        while self._bytes + size > self._max_bytes:
            _, victim = entries.popitem(last=False)
            self._bytes -= victim[1]
            self._evictions += 1
        entries[key] = [value, size, expires_at]
        self._bytes += size
        return True

    def delete(self, key: Hashable) -> bool:
        """Forget ``key``; whether it was held."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry[1]
        return True

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self._entries.clear()
        self._bytes = 0
