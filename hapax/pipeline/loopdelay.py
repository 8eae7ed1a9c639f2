"""How far behind the worker's event loop runs: the signal that it is out of CPU.

A worker past saturation does not fail; it queues.  Requests wait in socket buffers
and in the loop's ready queue, every one of them a little longer than the one before,
and the concurrency limit (``server.limits.max_concurrent``) does not see it: requests
in flight stay few because each waits *before* it is counted.  What does see it is the
loop itself: a timer due at *t* runs at *t* plus the time the loop spent on everything
that was ready first.  :class:`LoopDelay` samples that lateness with one timer; while
the last sample is above ``server.limits.shed_delay`` the gateway answers new requests
``503 overloaded`` (cheaply, before any hook) so that the ones it accepts keep their
latency (docs/how-to/performance-tuning.md#overload).

The probe runs only while there is traffic: the first request after a quiet spell
starts it, and a sample that finds no request in flight and none started since the
previous one stops it — an idle worker never wakes for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LoopDelay"]


class LoopDelay:
    """Samples the loop's lateness every :attr:`interval` while requests come in.

    ``threshold``: seconds (0 turns shedding off — the probe never runs).
    ``in_flight``: returns the requests in flight (the probe stops when it is 0 and no
    request started since the previous sample).
    """

    __slots__ = ("threshold", "interval", "delay", "late", "seen", "active", "_loop", "_due",
                 "_handle", "_in_flight")

    def __init__(self, threshold: float, in_flight: Callable[[], int]) -> None:
        self.threshold = threshold
        #: Half the threshold (1 to 25 ms): a stall just above it sheds for at most
        #: that long after it, sustained overload is seen within it, and a worker with
        #: requests in flight (long streams) wakes for it at most 40 times a second.
        self.interval = min(max(threshold / 2, 0.001), 0.025)
        #: The last sample: seconds the probe's timer ran late.
        self.delay = 0.0
        #: The last sample was above the threshold: shed new requests.
        self.late = False
        #: A request started since the last sample (set by :meth:`mark`).
        self.seen = threshold <= 0  # off: mark() is never needed
        self.active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._in_flight = in_flight

    def mark(self, loop: asyncio.AbstractEventLoop) -> None:
        """A request started (the caller checks :attr:`seen` first: one attribute test
        per request while the probe runs)."""
        if self.threshold <= 0:
            return
        self.seen = True
        if not self.active:
            self.active = True
            self._loop = loop
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._sample)

    def _sample(self) -> None:
        loop = self._loop
        assert loop is not None
        self.delay = delay = max(0.0, loop.time() - self._due)
        self.late = delay > self.threshold
        if not self.seen and self._in_flight() == 0:
            # Quiet: stop until the next request (which finds seen False and restarts).
            self.active = self.late = False
            self._handle = None
            return
        self.seen = False
        self._schedule(loop)

    def stop(self) -> None:
        """Cancel the probe (the gateway is closing)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.active = self.late = False
        self.seen = True  # never restart
