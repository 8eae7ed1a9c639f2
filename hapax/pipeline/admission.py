"""Admission control: each provider's concurrency limit and its request queue.

``providers.<name>.max_concurrent`` bounds the upstream calls in flight to a provider
across all the workers of the node (a :class:`~hapax.node.NodeState` slot taken with
``try_acquire``).  A request that finds the provider at its limit waits in the
provider's queue — a :class:`~hapax._core.ring.FairQueue` per worker: priority classes
(``keys[].priority``: interactive, standard, batch) and round-robin between keys inside
a class.  The node-wide number of waiting requests lives in NodeState too, so
``queue.size`` is one bound for all workers.

A request is refused at once, never queued, with 429 and ``Retry-After``:

* ``queue_full``    — ``queue.size`` requests already wait;
* ``queue_timeout`` — its estimated wait exceeds its deadline: the smaller of
  ``queue.timeout`` and what is left of the model's ``timeout``.  The estimate is the
  request's position (waiting requests of its class and better, node-wide) divided by
  the drain rate, ``max_concurrent`` ÷ an EWMA of how long one call holds its slot.

A request still waiting when its deadline passes gets 429 ``queue_timeout`` too
(metric reason ``queue_expired``): it was never sent, so retrying is safe.

A slot is released when the upstream call is really over: a complete response has been
read, or a stream ended or was abandoned.  A release wakes this worker's best waiter;
slots freed by other workers are noticed by polling every :data:`POLL` seconds while
this worker has waiters (the cross-worker wake-up latency).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hapax._core.ring import Entry, FairQueue
from hapax.config import Config, ProviderConfig
from hapax.errors import RequestError
from hapax.metrics import Counter, Gauge, Histogram, Metrics
from hapax.node import NodeState
from hapax.types import Response, StreamResponse, aclose_events

__all__ = ["ProviderQueue", "QueueRejected", "build_queues", "PRIORITIES", "POLL"]

#: Priority classes, best first (``keys[].priority``).
PRIORITIES = {"interactive": 0, "standard": 1, "batch": 2}
_STANDARD = PRIORITIES["standard"]
#: While a worker has waiters it re-checks the shared slot counter this often, so a slot
#: freed by another worker is taken within this delay.
POLL = 0.01
#: Weight of the newest call duration in the service-time EWMA.
ALPHA = 0.2

log = logging.getLogger("hapax")

# Each worker also keeps its own share of the node's counts in a row of its own
# ([pid, in flight, waiting, waiting per class...]), so that a worker started in place of
# one that died (SIGKILL, a crash) gives back the slots and places the dead one held.
_ROW = 3 + len(PRIORITIES)


class QueueRejected(RequestError):
    """The provider's queue refused the request (429)."""

    status = 429
    type = "rate_limit_error"


def retry_after(seconds: float | None) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header: whole seconds, at least 1."""
    value = 1 if seconds is None else max(1, min(3600, math.ceil(seconds)))
    return [(b"retry-after", str(value).encode())]


class _Slot:
    """One held place under ``max_concurrent``; :meth:`release` is idempotent."""

    __slots__ = ("queue", "since", "held")

    def __init__(self, queue: ProviderQueue) -> None:
        self.queue = queue
        self.since = time.perf_counter()
        self.held = True

    def release(self, measured: bool = True) -> None:
        """Give the slot back; ``measured``: the call ran its course, so its duration
        feeds the drain-rate estimate (a failed or abandoned call's would mislead it)."""
        if self.held:
            self.held = False
            self.queue._release(time.perf_counter() - self.since, measured=measured)


class ProviderQueue:
    """The concurrency limit and queue of one provider, as one worker sees them."""

    def __init__(self, name: str, pc: ProviderConfig, config: Config, node: NodeState,
                 wait_time: Histogram, rejections: Counter) -> None:
        assert pc.max_concurrent is not None
        self.name = name
        self.limit = pc.max_concurrent
        self.size = pc.queue.size
        self.timeout = pc.queue.timeout
        self.models = config.models
        self.counters = node.counters
        # Slots: in flight, waiting (total, then per class), service-time EWMA (µs).
        base = node.allocate(f"queue:{name}", 3 + len(PRIORITIES))
        self._in_flight = base
        self._waiting = base + 1
        self._classes = tuple(range(base + 2, base + 2 + len(PRIORITIES)))
        self._service = base + 2 + len(PRIORITIES)
        self.local = FairQueue(max(1, self.size), len(PRIORITIES))
        self._row = self._claim_row(node)
        self._budgets: dict[str, float] = {}  # model timeout per alias (or "*")
        self._poll: asyncio.TimerHandle | None = None
        self._wait_time = wait_time
        self._rejections = rejections
        self._label = (name,)

    # -- what /metrics shows --------------------------------------------------------

    def waiting(self) -> int:
        """Requests waiting for this provider, node-wide."""
        return self.counters.load(self._waiting)

    def in_flight(self) -> int:
        """Upstream calls to this provider in flight, node-wide."""
        return self.counters.load(self._in_flight)

    def service_time(self) -> float | None:
        """EWMA of how long a call holds its slot (None until one finished)."""
        us = self.counters.load(self._service)
        return us / 1e6 if us > 0 else None

    def estimate(self, position: int) -> float | None:
        """Seconds until the request at ``position`` (1 = next) gets a slot."""
        service = self.service_time()
        return None if service is None else position * service / self.limit

    # -- admission ----------------------------------------------------------------------

    async def run(self, ex: Any, call: Callable[..., Awaitable[Response | StreamResponse]],
                  *args: Any) -> Response | StreamResponse:
        """``await call(*args)`` holding a slot: released once a response is read, or
        when a stream ends or is abandoned."""
        slot = await self.acquire(ex)
        try:
            resp = await call(*args)
        except BaseException:
            slot.release(measured=False)
            raise
        if isinstance(resp, StreamResponse):
            return _hold(resp, slot)
        slot.release()
        return resp

    async def acquire(self, ex: Any) -> _Slot:
        """A slot now, or a place in the queue and a slot later, or QueueRejected."""
        counters = self.counters
        if not len(self.local) and counters.try_acquire(self._in_flight, self.limit):
            counters.add(self._row + 1, 1)
            self._wait_time.observe(self._label, 0.0)
            return _Slot(self)
        principal = ex.principal
        cls = PRIORITIES.get(principal.attributes.get("priority"), _STANDARD) \
            if principal is not None else _STANDARD
        budget = self._budget(ex)
        total = counters.add(self._waiting, 1)
        if total > self.size:
            counters.add(self._waiting, -1)
            raise self._refuse("queue_full", QueueRejected(
                f"the queue of provider {self.name!r} is full ({self.size} requests "
                f"waiting); retry later", status=429, code="queue_full",
                headers=retry_after(self.estimate(total - self.size))))
        position = 1 + sum(counters.load(s) for s in self._classes[:cls + 1])
        wait = self.estimate(position)
        if budget <= 0 or (wait is not None and wait > budget):
            counters.add(self._waiting, -1)
            raise self._refuse("queue_timeout", QueueRejected(
                f"provider {self.name!r} is busy: the estimated wait ({wait or 0:.1f}s) "
                f"exceeds this request's deadline ({max(budget, 0):.1f}s); retry later",
                status=429, code="queue_timeout",
                headers=retry_after(None if wait is None else wait - budget)))
        counters.add(self._classes[cls], 1)
        row = self._row
        counters.add(row + 2, 1)
        counters.add(row + 3 + cls, 1)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = self.local.push((fut, cls), principal.name if principal else "", cls)
        timer = loop.call_later(budget, self._expire, entry, fut)
        t0 = time.perf_counter()
        self._dispatch()  # a slot may be free already (we queued because others wait)
        try:
            await fut
        except asyncio.CancelledError:
            # The client left (or the request was cancelled): leave the queue, or give
            # back the slot if it was handed over in the meantime.
            if self.local.discard(entry):
                self._left(cls)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(0.0, measured=False)
            raise
        finally:
            timer.cancel()
        self._wait_time.observe(self._label, time.perf_counter() - t0)
        return _Slot(self)

    def _budget(self, ex: Any) -> float:
        """How long this request may wait: queue.timeout, or what is left of the model's
        timeout if that is sooner."""
        alias = ex.alias if ex.alias in self.models else "*"
        limit = self._budgets.get(alias)
        if limit is None:
            model = self.models.get(alias)
            limit = self._budgets[alias] = model.timeout if model is not None else math.inf
        return min(self.timeout, limit - (time.perf_counter() - ex.started))

    def _refuse(self, reason: str, exc: QueueRejected) -> QueueRejected:
        self._rejections.inc((self.name, reason))
        return exc

    def _expire(self, entry: Entry, fut: asyncio.Future[None]) -> None:
        cls = entry.cls
        if self.local.discard(entry):
            self._left(cls)
            if not fut.done():
                fut.set_exception(self._refuse("queue_expired", QueueRejected(
                    f"waited for provider {self.name!r} until this request's deadline; "
                    f"retry later", status=429, code="queue_timeout",
                    headers=retry_after(self.estimate(1)))))

    def _left(self, cls: int) -> None:
        counters, row = self.counters, self._row
        counters.add(self._classes[cls], -1)
        counters.add(self._waiting, -1)
        counters.add(row + 2, -1)
        counters.add(row + 3 + cls, -1)

    def _claim_row(self, node: NodeState) -> int:
        """This worker's row, after giving back what dead workers' rows held."""
        counters = self.counters
        rows = max(4, 2 * node.workers)
        base = node.allocate(f"queue:{self.name}:workers", rows * _ROW)
        me = os.getpid()
        totals = (self._in_flight, self._waiting, *self._classes)
        for row in range(base, base + rows * _ROW, _ROW):
            pid = counters.load(row)
            # -1 marks a row being reclaimed: only the worker whose cas wins does it.
            if pid > 0 and pid != me and not _alive(pid) and counters.cas(row, pid, -1):
                for k, total in enumerate(totals, 1):
                    held = counters.load(row + k)
                    if held:
                        counters.add(total, -held)
                        counters.store(row + k, 0)
                log.warning("provider %r: gave back what worker pid %d held when it died",
                            self.name, pid)
                counters.store(row, 0)
        for row in range(base, base + rows * _ROW, _ROW):
            if counters.cas(row, 0, me):
                return row
        # Every row taken by a live process (more gateways than expected in one node):
        # share a row; only the give-back after a death becomes approximate.
        return base

    def carry_over(self, old: ProviderQueue) -> None:
        """Keep counting in ``old``'s row: the same provider's queue in the same process,
        replaced by a configuration reload.  The row just claimed (still empty) goes
        back, so that reloads do not use up the rows."""
        if old._row == self._row:
            return
        if self.counters.load(self._row) == os.getpid():
            self.counters.store(self._row, 0)
        self._row = old._row

    # -- release and wake-up ----------------------------------------------------------------

    def _release(self, held: float, *, measured: bool = True) -> None:
        counters = self.counters
        counters.add(self._in_flight, -1)
        counters.add(self._row + 1, -1)
        if measured:
            old = counters.load(self._service)
            sample = max(1, int(held * 1e6))
            # A lost update between workers only skips one sample of an average.
            counters.store(self._service, sample if old <= 0 else
                           int(old + ALPHA * (sample - old)) or 1)
        if len(self.local):
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to local waiters, best first."""
        local, counters = self.local, self.counters
        while len(local):
            if not counters.try_acquire(self._in_flight, self.limit):
                break
            counters.add(self._row + 1, 1)
            fut, cls = local.pop()
            self._left(cls)
            if fut.done():  # cancelled, its task not run yet: the slot goes back
                counters.add(self._in_flight, -1)
                counters.add(self._row + 1, -1)
                continue
            fut.set_result(None)
        if len(local):
            if self._poll is None:
                self._poll = asyncio.get_running_loop().call_later(POLL, self._tick)
        elif self._poll is not None:
            self._poll.cancel()
            self._poll = None

    def _tick(self) -> None:
        self._poll = None
        self._dispatch()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has the pid now: not our worker
        return False
    return True


def _hold(resp: StreamResponse, slot: _Slot) -> StreamResponse:
    """The stream, holding ``slot`` until it ends or is closed (whichever comes first)."""
    inner = resp.close

    def close() -> None:
        try:
            if inner is not None:
                inner()
        finally:
            slot.release(measured=False)  # closed before its end: abandoned

    return StreamResponse(resp.status, _held(resp.events, slot), resp.headers, close=close)


async def _held(events: AsyncIterator[list[bytes]], slot: _Slot) -> AsyncIterator[list[bytes]]:
    ended = False
    try:
        async for batch in events:
            yield batch
        ended = True
    finally:
        slot.release(measured=ended)
        await aclose_events(events)


def build_queues(config: Config, node: NodeState, metrics: Metrics) -> dict[str, ProviderQueue]:
    """A queue for every provider with ``max_concurrent``; a request to another provider
    pays nothing.  The metric families exist either way (empty without queues)."""
    wait_time = metrics.add(Histogram(
        "hapax_queue_wait_seconds", "Time requests waited for a provider slot (0 when "
        "admitted at once), by provider.", ("provider",)))
    rejections = metrics.add(Counter(
        "hapax_queue_rejections_total", "Requests refused by a provider's queue, by provider "
        "and reason (queue_full|queue_timeout|queue_expired).", ("provider", "reason")))
    queues = {n: ProviderQueue(n, pc, config, node, wait_time, rejections)
              for n, pc in config.providers.items() if pc.max_concurrent is not None}
    # These read NodeState slots, the node's own totals: merging workers would count N times.
    metrics.add(Gauge("hapax_queue_depth", "Requests waiting for a provider slot, node-wide, "
                      "by provider.", ("provider",),
                      lambda: {(n,): float(q.waiting()) for n, q in queues.items()},
                      merge="none"))
    metrics.add(Gauge("hapax_provider_in_flight", "Upstream calls in flight under "
                      "max_concurrent, node-wide, by provider.", ("provider",),
                      lambda: {(n,): float(q.in_flight()) for n, q in queues.items()},
                      merge="none"))
    return queues
