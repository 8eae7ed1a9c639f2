"""Stub for the compiled ring buffer / fair queue unit (same API as ``_ring_py``)."""

from collections.abc import Hashable
from typing import Any

from typing_extensions import disjoint_base

__all__ = ["Ring", "FairQueue", "Entry"]

@disjoint_base  # extension types with C-level state
class Ring:
    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def used(self) -> int:
        """Slots taken: live entries plus tombstones not reclaimed yet."""
    @property
    def full(self) -> bool:
        """No free slot: ``push`` would raise."""
    def __len__(self) -> int: ...
    def push(self, item: Any) -> int:
        """Append ``item``; return its handle.  ``OverflowError`` when full."""
    def peek(self) -> Any:
        """The oldest live entry (``IndexError`` when empty)."""
    def pop(self) -> Any:
        """Remove and return the oldest live entry (``IndexError`` when empty)."""
    def discard(self, handle: int) -> bool:
        """Remove the entry ``handle`` (lazily); False if it is no longer there."""

@disjoint_base
class Entry:
    item: Any
    key: Hashable
    cls: int
    seq: int
    alive: bool
    def __init__(self, item: Any, key: Hashable, cls: int) -> None: ...

@disjoint_base
class FairQueue:
    def __init__(self, size: int, classes: int = 3) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def classes(self) -> int: ...
    @property
    def full(self) -> bool: ...
    def __len__(self) -> int: ...
    def count(self, cls: int) -> int:
        """Entries waiting in class ``cls``."""
    def ahead(self, cls: int) -> int:
        """Entries served before a new one of class ``cls`` at the latest."""
    def push(self, item: Any, key: Hashable, cls: int) -> Entry:
        """Queue ``item`` for ``key`` in class ``cls``; ``OverflowError`` when full."""
    def pop(self) -> Any:
        """Remove and return the next item (``IndexError`` when empty)."""
    def discard(self, entry: Entry) -> bool:
        """Remove ``entry`` (O(1)); False if it was popped or discarded already."""
