"""Request deadlines, checked by one periodic sweep per worker.

Every request has a deadline (the model's ``timeout``, or less with ``x-hapax-timeout``).
Bounding each attempt with its own timer (``asyncio.timeout``) costs a timer handle
created and cancelled per request — about a fifth of the gateway's own CPU per request
(measured with benchmarks/test_bench_pipeline.py). Deadlines are seconds long, so a
resolution of :data:`TICK` is plenty: :class:`Deadlines` keeps the watched requests in
a dict (insert and delete per request) and, while there are any, one timer sweeps them
every :data:`TICK` seconds and fires the callbacks of those whose deadline has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Deadlines", "TICK"]

#: Seconds between two sweeps: a deadline fires at most this late.
TICK = 0.05


class Deadlines:
    """Deadlines of one worker (one event loop)."""

    __slots__ = ("_watched", "_timer")

    def __init__(self) -> None:
        self._watched: dict[object, tuple[float, Callable[[], None]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, key: object, deadline: float, expire: Callable[[], None]) -> None:
        """Call ``expire()`` once ``time.perf_counter()`` passes ``deadline``, unless
        :meth:`unwatch` is called first.  ``key`` identifies the watch (hashable)."""
        self._watched[key] = (deadline, expire)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._sweep)

    def unwatch(self, key: object) -> None:
        self._watched.pop(key, None)

    def __len__(self) -> int:
        return len(self._watched)

    def _sweep(self) -> None:
        self._timer = None
        watched = self._watched
        now = time.perf_counter()
        due = [key for key, (deadline, _) in watched.items() if deadline <= now]
        for key in due:
            entry = watched.pop(key, None)
            if entry is not None:
                entry[1]()
        if watched:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watched.clear()
