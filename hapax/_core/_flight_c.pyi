"""Stub for the compiled replay-log unit (same API as ``_flight_py``)."""

from typing_extensions import disjoint_base

__all__ = ["ReplayLog"]

@disjoint_base  # an extension type with C-level state: it cannot share a layout
class ReplayLog:
    def __init__(self, max_bytes: int) -> None: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def closed(self) -> bool:
        """No more events will come (set by ``close``)."""
    @property
    def count(self) -> int:
        """Events appended so far (the position after the last one)."""
    @property
    def first(self) -> int:
        """Position of the oldest event still held."""
    @property
    def held(self) -> int:
        """Bytes of the events still held."""
    @property
    def whole(self) -> bool:
        """True while no event has been dropped: a newcomer gets the whole stream."""
    @property
    def subscribers(self) -> int:
        """Live (attached) cursors."""
    def append(self, event: bytes) -> int:
        """Add one event; return how many subscribers this detached."""
    def close(self) -> None:
        """The stream is over: readers get what is left, then the end."""
    def subscribe(self) -> int:
        """A new cursor at the oldest event held (the very first while ``whole``)."""
    def attached(self, sid: int) -> bool:
        """Whether ``sid`` is a live cursor (not detached, not unsubscribed)."""
    def read(self, sid: int) -> list[bytes]:
        """The events ``sid`` has not read yet (maybe none); advances its cursor."""
    def unsubscribe(self, sid: int) -> None:
        """Forget ``sid`` (no error if it is already gone)."""
