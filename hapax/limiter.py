"""Rate limiters: the interface the rate-limit plugin talks to, and the in-node one.

A :class:`Limiter` holds a set of :class:`Limit` s (each "``limit`` units per
``period``": requests or tokens) and charges several of them at once, all or nothing.
Callers (``hapax.builtins.ratelimit``) only use this interface, so a cluster-wide
implementation (Redis, running the same GCRA in a script) can replace
:class:`NodeLimiter` without touching them: that is why :meth:`Limiter.acquire` is a
coroutine even though the in-node implementation never waits, and :meth:`Limiter.adjust`
is fire and forget.  A limiter that can charge without waiting may also offer
:meth:`Limiter.fast_path`: one synchronous call per request, headers included.

:class:`NodeLimiter` keeps each limit's state (a GCRA theoretical arrival time) in one
slot of the node's shared counters (:class:`hapax.node.NodeState`), so limits are exact
across the worker processes of a node.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hapax._core.gcra import GCRA, GCRAGroup
from hapax.node import NodeState

__all__ = ["Limit", "LimitState", "Limiter", "NodeLimiter", "MINUTE_NS"]

MINUTE_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """One rate limit: ``limit`` units of ``kind`` per ``period_ns``.

    ``scope`` is ``"key"`` or ``"model"`` and ``owner`` the key name or model alias it
    belongs to; ``name`` (e.g. ``key:alice:requests``) identifies it in the limiter's
    store, so it must be stable across workers, restarts and nodes.
    """

    scope: str
    owner: str
    kind: str  # "requests" | "tokens"
    limit: int
    period_ns: int = MINUTE_NS

    @property
    def name(self) -> str:
        return f"{self.scope}:{self.owner}:{self.kind}"


@dataclass(frozen=True, slots=True)
class LimitState:
    """A limit right after a charge (or a refused one)."""

    limit: Limit
    allowed: bool
    remaining: int  # units left now
    reset_ns: int  # until the limit is full again
    retry_after_ns: int  # when refused: until the charge would pass (-1: never); else 0


class Limiter(ABC):
    """Charges rate limits.  Implementations must be exact under concurrency: two
    callers racing for the last unit never both get it."""

    @abstractmethod
    def prepare(self, limits: Iterable[Limit]) -> None:
        """Called once at start-up (in every worker, before the first request) with every
        limit that will be charged."""

    @abstractmethod
    async def acquire(self, charges: Sequence[tuple[Limit, int]]) -> list[LimitState]:
        """Charge every ``(limit, cost)`` or none: if one is refused, what the others took
        is given back.  Returns one state per charge, in order; the refused ones have
        ``allowed`` false (at least one of them is reported)."""

    @abstractmethod
    def adjust(self, limit: Limit, delta: int) -> None:
        """Correct an earlier charge of ``limit`` by ``delta`` units (negative: refund).

        Fire and forget: nobody waits for a correction, so a remote store may send it in
        the background; the in-node one applies it at once."""

    def fast_path(self, limits: Sequence[Limit]) -> GCRAGroup | None:
        """Optional: a synchronous charger for exactly these ``limits`` (in this order),
        asked once per combination at run time.  Its ``charge(tokens, headers)`` charges
        1 to each ``"requests"`` limit and ``tokens`` to the others, all or nothing,
        appends the ``x-ratelimit-*`` headers and returns ``None`` or ``(refused index,
        retry_after_ns)``; its ``adjust(delta)`` corrects the token limits (see
        :class:`hapax._core.gcra.GCRAGroup`).

        A limiter that overrides this must return a charger for any limits; one that
        does not (this default, ``None``) is used through :meth:`acquire` and
        :meth:`adjust`."""
        return None


class NodeLimiter(Limiter):
    """The limits of one node, in its shared memory (GCRA on a compare-and-swap slot)."""

    def __init__(self, node: NodeState, *,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        # CLOCK_MONOTONIC is one clock for every process of the machine: the workers
        # agree on "now" without talking to each other.
        self.node = node
        self.clock = clock
        self._cells: dict[Limit, GCRA] = {}

    def prepare(self, limits: Iterable[Limit]) -> None:
        for limit in limits:
            if limit not in self._cells:
                # Allocation order is the config's order: the same slot in every worker.
                slot = self.node.allocate(f"ratelimit:{limit.name}", 1)
                self._cells[limit] = GCRA(self.node.counters, slot, limit.limit,
                                          limit.period_ns)

    def charge(self, charges: Sequence[tuple[Limit, int]]) -> list[LimitState]:
        """:meth:`acquire` without the coroutine (the in-node work is never waiting)."""
        now = self.clock()
        cells = self._cells
        states: list[LimitState] = []
        for i, (limit, cost) in enumerate(charges):
            allowed, remaining, reset, retry = cells[limit].acquire(now, cost)
            states.append(LimitState(limit, allowed, remaining, reset, retry))
            if not allowed:
                for taken, tcost in charges[:i]:  # all or nothing: give back what we took
                    cells[taken].adjust(now, -tcost)
                # The others' states as they are now (after the refund), for headers.
                out = []
                for j, (other, _) in enumerate(charges):
                    if j == i:
                        out.append(states[i])
                    else:
                        left, reset_ns = cells[other].peek(now)
                        out.append(LimitState(other, True, left, reset_ns, 0))
                return out
        return states

    async def acquire(self, charges: Sequence[tuple[Limit, int]]) -> list[LimitState]:
        return self.charge(charges)

    def fast_path(self, limits: Sequence[Limit]) -> GCRAGroup:
        # The same cells and clock as charge(): the two paths may be mixed.
        return GCRAGroup([self._cells[lim] for lim in limits], [lim.kind for lim in limits],
                         self.clock)

    def adjust(self, limit: Limit, delta: int) -> None:
        if delta:
            self._cells[limit].adjust(self.clock(), delta)
