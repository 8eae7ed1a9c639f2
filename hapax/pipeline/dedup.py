"""In-flight deduplication: identical requests in flight share one upstream call.

The first request with a fingerprint becomes the *leader* of a :class:`Flight`: its
upstream call (``Gateway._attempt``) runs in a task of its own, so the leader's client
leaving does not cancel what the others wait on.  Identical requests arriving while
the flight is in the air are *followers*: they make no upstream call.

* A complete answer (or the leader's error, raised or answered) is given to every
  waiter as it is: same status, same body.
* A stream is written once into a :class:`~hapax._core.flight.ReplayLog` by the flight's
  task; every waiter reads it through its own cursor (a late follower first gets what
  was already sent).  The producer never waits for a reader: one too far behind is
  detached by the log and ends its stream with an in-band error event.  Once the log
  has had to drop the start of the stream, newcomers can no longer get all of it, and
  the flight stops taking followers.
* A waiter leaving never cancels the call others wait on; the last one leaving does.

Dedup is per worker process (see docs/dedup.md for why and what it costs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NamedTuple

import orjson

from hapax._core.fingerprint import fingerprint
from hapax._core.flight import ReplayLog
from hapax.config import Config, ModelConfig
from hapax.metrics import Counter, Gauge
from hapax.translate.anthropic import anthropic_error_body
from hapax.types import Response, StreamResponse, Target

if TYPE_CHECKING:
    from hapax.pipeline.exchange import Exchange
    from hapax.pipeline.gateway import Gateway
    from hapax.providers.base import Provider

__all__ = ["Dedup", "Flight", "ModelPolicy", "MAX_STREAM_BYTES"]

log = logging.getLogger("hapax")

#: Bytes of a shared stream held for its readers (a typical chat chunk event is
#: ~250 bytes: 4 MiB is ~16k events, more than most whole answers).
MAX_STREAM_BYTES = 4 * 1024 * 1024

_CHAT = "chat/completions"
_LEADER = (b"x-hapax-dedup", b"leader")
_FOLLOWER = (b"x-hapax-dedup", b"follower")
_TOO_SLOW_MESSAGE = ("this client read the shared stream too slowly and was detached from it; "
                     "retry the request")
#: The event that ends a detached reader's stream, in its front door's format.
_TOO_SLOW = {
    "openai": b"data: " + orjson.dumps({"error": {
        "message": _TOO_SLOW_MESSAGE, "type": "server_error", "param": None,
        "code": "stream_reader_too_slow"}}) + b"\n\n",
    "anthropic": b"event: error\ndata: " + anthropic_error_body(500, _TOO_SLOW_MESSAGE)
    + b"\n\n",
}


class ModelPolicy(NamedTuple):
    """What dedup and fingerprints do for one model alias (resolved at start-up)."""

    dedup: str  # always | deterministic | off
    shared: bool  # fingerprint.scope == global: different keys share
    ignore: frozenset[str]

    @classmethod
    def of(cls, model: ModelConfig | None) -> ModelPolicy:
        if model is None:
            return cls("deterministic", False, frozenset(("user", "metadata")))
        fp = model.fingerprint
        return cls(model.dedup, fp.scope == "global", frozenset(fp.ignore))


class Flight:
    """One upstream call shared by every identical request waiting on it."""

    __slots__ = ("key", "model", "task", "waiters", "futures", "done", "result", "error",
                 "log", "changed")

    def __init__(self, key: bytes, model: str, max_bytes: int) -> None:
        self.key = key
        self.model = model
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0
        # Each waiter waits on a future of its own: cancelling one (its client left)
        # touches nobody else's, at less cost than a shield per waiter.
        self.futures: list[asyncio.Future[None]] = []
        #: The answer is known: ``result`` (Response or StreamResponse) or ``error``.
        self.done = False
        self.result: Response | StreamResponse | None = None
        self.error: BaseException | None = None
        # Whether the answer will be a stream is known only when it comes (a provider
        # may stream unasked): every flight can carry one.
        self.log = ReplayLog(max_bytes)
        #: Pulsed (set, then cleared) whenever the log changes.
        self.changed = asyncio.Event()

    def settle(self, result: Response | StreamResponse | None,
               error: BaseException | None) -> None:
        self.done, self.result, self.error = True, result, error
        for fut in self.futures:
            if not fut.done():
                fut.set_result(None)
        self.futures.clear()

    def pulse(self) -> None:
        self.changed.set()
        self.changed.clear()


class Dedup:
    """The flights of one worker, keyed by request fingerprint."""

    def __init__(self, gateway: Gateway, config: Config) -> None:
        self.gateway = gateway
        self.policies = {alias: ModelPolicy.of(m) for alias, m in config.models.items()}
        self.default = self.policies.get("*") or ModelPolicy.of(None)
        # Every model `off` (the "*" entry included): the executor skips dedup with one check.
        self.enabled = any(p.dedup != "off" for p in self.policies.values())
        self.flights: dict[bytes, Flight] = {}
        self.max_stream_bytes = MAX_STREAM_BYTES
        self._tasks: set[asyncio.Task[None]] = set()
        metrics = gateway.metrics
        self.coalesced = metrics.add(Counter(
            "hapax_dedup_coalesced_total", "Requests answered by another identical request's "
            "upstream call (followers), by model alias.", ("model",)))
        self.detached = metrics.add(Counter(
            "hapax_dedup_detached_total", "Followers of a shared stream detached for reading "
            "too slowly, by model alias.", ("model",)))
        metrics.add(Gauge("hapax_dedup_flights", "Upstream calls being shared right now.", (),
                          lambda: {(): float(len(self._tasks))}))

    async def close(self) -> None:
        """Shutting down: the requests are answered or gone, so are the flights' waiters;
        cancel what is still in the air before the providers close their connections."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- what is shared ---------------------------------------------------------------

    def policy(self, alias: str | None) -> ModelPolicy:
        p = self.policies.get(alias) if alias is not None else None
        return p if p is not None else self.default

    def fingerprint(self, ex: Exchange) -> bytes:
        """The exchange's fingerprint (use ``Gateway.fingerprint``, which caches it)."""
        p = self.policy(ex.alias)
        principal = ex.principal
        who = "" if p.shared or principal is None else principal.name
        # The route is part of the scope: a chat and an embeddings request never match.
        return fingerprint(f"{ex.route}\0{who}", ex.alias or "", ex.json, p.ignore)

    def applies(self, ex: Exchange, endpoint: str) -> bool:
        """Whether this exchange may share an upstream call."""
        alias = ex.alias
        p = self.policies.get(alias) if alias is not None else None
        mode = (p if p is not None else self.default).dedup  # self.policy(), inlined
        if mode == "off":
            return False
        if mode == "always" or endpoint != _CHAT:  # embeddings are deterministic
            return True
        body = ex.json
        t = body.get("temperature")
        return (t == 0 and type(t) in (int, float)) or body.get("seed") is not None

    # -- leading and following --------------------------------------------------------

    async def send(self, ex: Exchange, provider: Provider, target: Target,
                   endpoint: str) -> Response | StreamResponse:
        key = self.gateway.fingerprint(ex)
        flight = self.flights.get(key)
        if flight is None:
            flight = Flight(key, ex.alias or "", self.max_stream_bytes)
            self.flights[key] = flight
            task = flight.task = asyncio.get_running_loop().create_task(
                self._fly(flight, ex, provider, target, endpoint))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            ex.response_headers.append(_LEADER)
            return await self._wait(flight, ex, None)
        ex.response_headers.append(_FOLLOWER)
        self.coalesced.inc((flight.model,))
        return await self._wait(flight, ex, target)

    async def _fly(self, flight: Flight, ex: Exchange, provider: Provider, target: Target,
                   endpoint: str) -> None:
        """The shared upstream call, on the leader's exchange, in its own task."""
        try:
            resp = await self.gateway._attempt(ex, provider, target, endpoint)
        except asyncio.CancelledError as exc:  # every waiter left (or the loop is closing)
            self._forget(flight)
            flight.settle(None, exc)
            raise
        except BaseException as exc:
            self._forget(flight)
            flight.settle(None, exc)
            return
        flight.settle(resp, None)
        if not isinstance(resp, StreamResponse):
            self._forget(flight)
            return
        await self._produce(flight, resp)

    async def _produce(self, flight: Flight, resp: StreamResponse) -> None:
        replay = flight.log
        events = resp.events
        try:
            async for batch in events:
                detached = 0
                for event in batch:
                    detached += replay.append(event)
                if detached:
                    self.detached.inc((flight.model,), detached)
                if not replay.whole:  # a newcomer could not get the whole stream
                    self._forget(flight)
                flight.pulse()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not an upstream failure (_relay answers those in-band)
            log.exception("shared stream failed")
            replay.append(b"data: " + orjson.dumps({"error": {
                "message": f"internal gateway error: {type(exc).__name__}",
                "type": "server_error", "param": None, "code": "internal_error"}}) + b"\n\n")
        finally:
            self._forget(flight)
            replay.close()
            flight.pulse()
            await resp.release()

    def _forget(self, flight: Flight) -> None:
        """No newcomer joins ``flight`` any more."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    async def _wait(self, flight: Flight, ex: Exchange,
                    target: Target | None) -> Response | StreamResponse:
        """Wait for the flight's answer; ``target`` is None for the leader."""
        flight.waiters += 1
        replay = flight.log
        sid = replay.subscribe()
        t0 = time.perf_counter()
        if not flight.done:
            fut = asyncio.get_running_loop().create_future()
            flight.futures.append(fut)
            try:
                await fut
            except BaseException:  # cancelled: this waiter's client left
                self._leave(flight, sid)
                raise
        if target is not None:  # a follower's wait is its upstream time
            ex.target = target
            ex.upstream_time = time.perf_counter() - t0
        if flight.error is not None:
            self._leave(flight, sid)
            # The same error for everyone; each raise starts a fresh traceback.
            raise flight.error.with_traceback(None)
        resp = flight.result
        assert resp is not None
        if isinstance(resp, StreamResponse):
            return StreamResponse(resp.status, self._read(flight, sid, ex.api),
                                  list(resp.headers),
                                  close=_Leave(self, flight, sid))
        self._leave(flight, sid)
        if target is None:
            return resp
        assert isinstance(resp, Response)
        return Response(resp.status, resp.body, list(resp.headers))

    async def _read(self, flight: Flight, sid: int, api: str) -> AsyncIterator[list[bytes]]:
        """One waiter's view of the shared stream (``api``: its front door's format)."""
        replay, changed = flight.log, flight.changed
        while True:
            if not replay.attached(sid):
                yield [_TOO_SLOW.get(api) or _TOO_SLOW["openai"]]
                return
            batch = replay.read(sid)
            if batch:
                yield batch
            elif replay.closed:
                return
            else:
                await changed.wait()

    def _leave(self, flight: Flight, sid: int) -> None:
        flight.waiters -= 1
        flight.log.unsubscribe(sid)
        task = flight.task
        if flight.waiters == 0 and task is not None and not task.done():
            # The last waiter left: nobody wants the answer; close the upstream call.
            self._forget(flight)
            task.cancel()


class _Leave:
    """A stream waiter's ``close``: leaves the flight exactly once."""

    __slots__ = ("dedup", "flight", "sid", "done")

    def __init__(self, dedup: Dedup, flight: Flight, sid: int) -> None:
        self.dedup, self.flight, self.sid, self.done = dedup, flight, sid, False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.dedup._leave(self.flight, self.sid)
