"""GCRA rate limiting on a shared counter (pure-Python twin of ``_gcra_c``).

The generic cell rate algorithm keeps one number per limit: the *theoretical arrival
time* (TAT, integer nanoseconds on a clock every worker shares, e.g.
``time.monotonic_ns()``), the instant at which the limit would be fully refilled.  One
unit of cost moves it ``interval = period_ns // limit`` forward; an acquisition is allowed
when the new TAT lies at most ``capacity = limit * interval`` ahead of now.  So a full
period's quota may be used at once, then it refills continuously, one unit per interval.

The TAT lives in a :class:`~hapax._core.shm.SharedCounters` slot and every update is a
compare-and-swap loop, so the limit is exact across the worker processes of a node.
(A slot holding 0, a fresh one, reads as "full".)

The interval is whole nanoseconds so the arithmetic is exact integers: with ``limit``
N, N acquisitions at one instant succeed and the next fails with ``retry_after`` equal
to the interval.  For limits that do not divide the period the refill is a hair faster
than ``limit`` per period (by under ``limit / period_ns``, relatively: 1 token in 60,000
at 1M tokens per minute).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["GCRA", "GCRAGroup", "duration"]

_INT64_MAX = (1 << 63) - 1


class GCRA:
    __slots__ = ("counters", "slot", "limit", "period_ns", "interval", "capacity", "_max_delta")

    def __init__(self, counters: Any, slot: int, limit: int, period_ns: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        if period_ns < limit:
            raise ValueError("period_ns must be at least limit (the interval is whole ns)")
        if not 0 <= slot < counters.size:
            raise IndexError(f"slot {slot} out of range (0..{counters.size - 1})")
        self.counters = counters
        self.slot = slot
        self.limit = limit
        self.period_ns = period_ns
        self.interval = period_ns // limit
        self.capacity = limit * self.interval
        # Keeps cost * interval (and the TAT it is added to) far inside int64.
        self._max_delta = (_INT64_MAX >> 2) // self.interval

    def acquire(self, now_ns: int, cost: int = 1) -> tuple[bool, int, int, int]:
        """Take ``cost`` units if they are there, all or nothing.

        :return: ``(allowed, remaining, reset_ns, retry_after_ns)``: units left after the
            call, time until the limit is full again, and (when refused) the time until
            ``cost`` units would be available (``-1``: never, ``cost`` exceeds the limit).
        """
        if cost < 0:
            raise ValueError("cost must not be negative")
        counters, slot, interval, capacity = self.counters, self.slot, self.interval, self.capacity
        while True:
            tat = counters.load(slot)
            base = tat if tat > now_ns else now_ns
            ahead = base - now_ns
            if cost > self.limit or ahead + cost * interval > capacity:
                left = (capacity - ahead) // interval
                return (False, left if left > 0 else 0, ahead,
                        -1 if cost > self.limit else ahead + cost * interval - capacity)
            new = base + cost * interval
            if cost == 0 or counters.cas(slot, tat, new):
                return True, (capacity - (new - now_ns)) // interval, new - now_ns, 0

    def peek(self, now_ns: int) -> tuple[int, int]:
        """``(remaining, reset_ns)`` without taking anything (for response headers)."""
        tat = self.counters.load(self.slot)
        ahead = tat - now_ns if tat > now_ns else 0
        remaining = (self.capacity - ahead) // self.interval
        return (remaining if remaining > 0 else 0), ahead

    def adjust(self, now_ns: int, delta_cost: int) -> None:
        """Correct an earlier debit by ``delta_cost`` units: positive charges more (the
        limit may go into debt: later callers wait), negative refunds (never beyond a
        full limit)."""
        if not -self._max_delta <= delta_cost <= self._max_delta:
            raise OverflowError("delta_cost out of range")
        if delta_cost == 0:
            return
        counters, slot = self.counters, self.slot
        shift = delta_cost * self.interval
        while True:
            tat = counters.load(slot)
            if tat <= now_ns and shift < 0:  # already full: nothing to refund
                return
            base = tat if tat > now_ns else now_ns
            new = base + shift
            if new < now_ns:  # a refund beyond "full" is just "full"
                new = now_ns
            if new == tat or counters.cas(slot, tat, new):
                return


def duration(ns: int) -> bytes:
    """OpenAI's (Go's) duration format, rounded up to the millisecond: ``20ms``, ``1s``,
    ``6m0s``, ``1h2m3.5s`` (the ``x-ratelimit-reset-*`` header values)."""
    ms = -(-ns // 1_000_000) if ns > 0 else 0
    if ms < 1000:
        return b"%dms" % ms if ms else b"0s"
    s, ms = divmod(ms, 1000)
    sec = (b"%d.%03d" % (s % 60, ms)).rstrip(b"0") if ms else b"%d" % (s % 60)
    if s < 60:
        return sec + b"s"
    m = s // 60
    if m < 60:
        return b"%dm%ss" % (m, sec)
    return b"%dh%dm%ss" % (m // 60, m % 60, sec)


class GCRAGroup:
    """Several limits charged together for one request: it costs 1 unit of each
    ``"requests"`` cell and its token count of every other cell, all or nothing, at one
    instant of ``clock``.

    ``kinds[i]`` names what ``cells[i]`` counts (``"requests"``, ``"tokens"``); for each
    kind, in order of first appearance, :meth:`charge` appends OpenAI's three headers
    ``x-ratelimit-{limit,remaining,reset}-<kind>`` of the refused cell if any, else of the
    tightest (least remaining; the first on a tie).
    """

    __slots__ = ("cells", "kinds", "clock", "_per_request", "_names", "_kind_of", "_limits")

    def __init__(self, cells: Sequence[GCRA], kinds: Sequence[str],
                 clock: Callable[[], int]) -> None:
        if len(cells) != len(kinds):
            raise ValueError("one kind per cell")
        self.cells = tuple(cells)
        self.kinds = tuple(kinds)
        self.clock = clock
        self._per_request = tuple(k == "requests" for k in self.kinds)
        order = list(dict.fromkeys(self.kinds))
        self._kind_of = tuple(order.index(k) for k in self.kinds)
        self._names = tuple((b"x-ratelimit-limit-" + k.encode(),
                             b"x-ratelimit-remaining-" + k.encode(),
                             b"x-ratelimit-reset-" + k.encode()) for k in order)
        # The limit header never changes: one tuple per cell, shared by every response.
        self._limits = tuple((self._names[k][0], b"%d" % c.limit)
                             for c, k in zip(self.cells, self._kind_of, strict=True))

    def charge(self, tokens: int, out: list[tuple[bytes, bytes]]) -> tuple[int, int] | None:
        """Charge one request of ``tokens`` tokens; append the rate-limit headers to
        ``out``.

        :return: ``None`` when every cell allowed it, else ``(index, retry_after_ns)`` of
            the refused cell (``-1``: never, the cost exceeds the limit); what the others
            took is given back, and the headers show them after the refund.
        """
        now = self.clock()
        cells, per_request = self.cells, self._per_request
        n = len(cells)
        left, reset = [0] * n, [0] * n
        refused, retry = -1, 0
        for i, cell in enumerate(cells):
            allowed, left[i], reset[i], retry = cell.acquire(now, 1 if per_request[i]
                                                             else tokens)
            if not allowed:
                refused = i
                for j in range(i):  # all or nothing: give back what the others took
                    cells[j].adjust(now, -1 if per_request[j] else -tokens)
                for j in range(n):  # the others as they are now (after the refund)
                    if j != i:
                        left[j], reset[j] = cells[j].peek(now)
                break
        best = [-1] * len(self._names)  # per kind: the refused cell, else the tightest
        for i, k in enumerate(self._kind_of):
            b = best[k]
            if b < 0 or (b != refused and (i == refused or left[i] < left[b])):
                best[k] = i
        for k, i in enumerate(best):
            _, name_remaining, name_reset = self._names[k]
            out.append(self._limits[i])
            out.append((name_remaining, b"%d" % left[i]))
            out.append((name_reset, duration(reset[i])))
        return None if refused < 0 else (refused, retry)

    def adjust(self, delta: int) -> None:
        """Correct every token cell by ``delta`` units (negative: refund), as
        :meth:`GCRA.adjust`."""
        if delta:
            now = self.clock()
            for cell, per_request in zip(self.cells, self._per_request, strict=True):
                if not per_request:
                    cell.adjust(now, delta)
