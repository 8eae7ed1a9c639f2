"""The replay log of a shared stream (pure-Python twin of ``_flight_c``).

When identical streaming requests are coalesced into one upstream call (see
``hapax.pipeline.dedup``), one producer appends the stream's events here and every
caller reads them through its own cursor: a follower that joins late first gets the
events already sent, then the live ones.

Memory is bounded by ``max_bytes``.  When an append takes the log over the bound, the
oldest events that every cursor has already read are dropped, as few as needed; if
that is not enough, every subscriber whose unread backlog exceeds the bound is
*detached* (its cursor is removed: it must end its stream with an error) and the
events nobody needs any more are dropped.  The producer never waits for a reader.
Once an event has been dropped, a newcomer could no longer get the whole stream:
``whole`` turns false and stays false.

Positions are absolute event numbers: the first event appended is 0, ``count`` is the
position after the last one, ``first`` the position of the oldest event still held.
"""

from __future__ import annotations

__all__ = ["ReplayLog"]

# Dropped slots are compacted away once this many have piled up (and they are at
# least half the list), so dropping one event is O(1) amortised.
_COMPACT = 64


class ReplayLog:
    """Events of one stream, a cursor per subscriber, at most ``max_bytes`` held."""

    __slots__ = ("max_bytes", "closed", "_events", "_ends", "_base", "_base_offset",
                 "_first", "_total",
                 "_cursors", "_next_id")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        #: No more events will come (set by :meth:`close`).
        self.closed = False
        # _events[i] is event number _base + i (None once dropped); _ends[i] is the
        # stream's byte offset just after it, so any backlog is one subtraction.
        self._events: list[bytes | None] = []
        self._ends: list[int] = []
        self._base = 0
        self._base_offset = 0  # byte offset where event _base starts
        self._first = 0
        self._total = 0
        self._cursors: dict[int, int] = {}
        self._next_id = 0

    # -- state ------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Events appended so far (the position after the last one)."""
        return self._base + len(self._events)

    @property
    def first(self) -> int:
        """Position of the oldest event still held."""
        return self._first

    @property
    def held(self) -> int:
        """Bytes of the events still held."""
        return self._total - self._offset(self._first)

    @property
    def whole(self) -> bool:
        """True while no event has been dropped: a newcomer gets the whole stream."""
        return self._first == 0

    @property
    def subscribers(self) -> int:
        """Live (attached) cursors."""
        return len(self._cursors)

    def _offset(self, pos: int) -> int:
        """Byte offset in the stream where event ``pos`` starts (base <= pos <= count)."""
        i = pos - self._base
        return self._ends[i - 1] if i else self._base_offset

    # -- producer ---------------------------------------------------------------------

    def append(self, event: bytes) -> int:
        """Add one event; return how many subscribers this detached."""
        if self.closed:
            raise ValueError("append to a closed ReplayLog")
        if type(event) is not bytes:
            raise TypeError(f"event must be bytes, not {type(event).__name__}")
        self._events.append(event)
        self._total += len(event)
        self._ends.append(self._total)
        if self._total - self._offset(self._first) <= self.max_bytes:
            return 0
        return self._shrink()

    def close(self) -> None:
        """The stream is over: readers get what is left, then the end."""
        self.closed = True

    def _shrink(self) -> int:
        limit = self.max_bytes
        count = self.count
        # Nobody may lose an unread event: drop only below the slowest cursor.
        floor = min(self._cursors.values(), default=count)
        self._drop_until(floor, limit)
        if self._total - self._offset(self._first) <= limit:
            return 0
        # Still over: the readers too far behind let go, and their backlog with them.
        total = self._total
        late = [sid for sid, pos in self._cursors.items() if total - self._offset(pos) > limit]
        for sid in late:
            del self._cursors[sid]
        floor = min(self._cursors.values(), default=count)
        self._drop_until(floor, limit)
        return len(late)

    def _drop_until(self, floor: int, limit: int) -> None:
        """Drop the oldest events, none at or after ``floor``, until within ``limit``."""
        first = self._first
        events = self._events
        base = self._base
        total = self._total
        while first < floor and total - self._offset(first) > limit:
            events[first - base] = None
            first += 1
        self._first = first
        dropped = first - base
        if dropped >= _COMPACT and dropped * 2 >= len(events):
            self._base_offset = self._ends[dropped - 1]
            del events[:dropped]
            del self._ends[:dropped]
            self._base = first

    # -- subscribers ------------------------------------------------------------------

    def subscribe(self) -> int:
        """A new cursor at the oldest event held (the very first while ``whole``)."""
        sid = self._next_id
        self._next_id += 1
        self._cursors[sid] = self._first
        return sid

    def attached(self, sid: int) -> bool:
        """Whether ``sid`` is a live cursor (not detached, not unsubscribed)."""
        return sid in self._cursors

    def read(self, sid: int) -> list[bytes]:
        """The events ``sid`` has not read yet (maybe none); advances its cursor.

        Raises ``KeyError`` if ``sid`` was detached or unsubscribed."""
        pos = self._cursors[sid]
        count = self._base + len(self._events)
        if pos == count:
            return []
        self._cursors[sid] = count
        return self._events[pos - self._base:]  # type: ignore[return-value]

    def unsubscribe(self, sid: int) -> None:
        """Forget ``sid`` (no error if it is already gone)."""
        self._cursors.pop(sid, None)

    def __repr__(self) -> str:
        return (f"<ReplayLog events={self._first}..{self.count} held={self.held}/"
                f"{self.max_bytes} subscribers={self.subscribers}"
                f"{' closed' if self.closed else ''}>")
