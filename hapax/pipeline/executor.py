"""Retries with backoff, and failover across a model's targets (docs/reliability.md).

The gateway hands a routed exchange to :meth:`Executor.run`, which walks
``plan.targets`` in order and gives each up to ``1 + retries`` attempts: each through
in-flight dedup when it applies (identical requests share one upstream call), else
``Gateway._attempt`` (so the provider's queue still applies to each attempt).  An
attempt is retried, then failed over, when it raises
:class:`~hapax.errors.UpstreamError` (connect error, timeout, 5xx; for a stream, a
failure before its first event) or answers a status in ``retry_on``; any other
status is the answer.  Retries sleep with exponential backoff and full jitter,
honour ``retry-after``/``retry-after-ms``, and never sleep past the request's
deadline.  A :class:`RetryBudget` keeps retries to a fraction of traffic, so an
outage cannot turn into a retry storm: with the budget spent, a failing target is
failed over at once, and the last failure is what the client gets.

Before each attempt the target's circuit breaker is asked (:meth:`Health.allow`): an
open breaker skips the target (no attempt; the target is added to the list in
``exchange.state["skipped"]``), a half-open one lets a limited number of probe attempts
through.  When every target was skipped, the client gets 503 ``no_healthy_target`` with
``Retry-After``: the time until the first breaker lets requests through again.  Each
failed attempt gets its ``reason`` (the status, or the error code) on
``exchange.attempts``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from hapax._schema import parse_duration
from hapax.errors import BadRequest, DeadlineExceeded, RequestError, UpstreamError
from hapax.metrics import Counter
from hapax.pipeline.health import DENIED, seconds_header
from hapax.types import Attempt, Response, RoutePlan, StreamResponse

if TYPE_CHECKING:
    from hapax.pipeline.exchange import Exchange
    from hapax.pipeline.gateway import Gateway

__all__ = ["Executor", "RetryBudget", "backoff_delay", "retry_after", "request_timeout"]

#: The request header that sets a shorter deadline than the model's ``timeout``.
TIMEOUT_HEADER = "x-hapax-timeout"

BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0


def backoff_delay(retry: int, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retry)] (``retry`` counts from 0)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** retry))
    return (rng or random).uniform(0.0, ceiling)


def retry_after(headers: Iterable[tuple[bytes, bytes]], now: float | None = None
                ) -> float | None:
    """Seconds the provider asked us to wait (``retry-after-ms`` wins), else None.
    ``retry-after`` is delta-seconds or an HTTP date (RFC 9110), counted from ``now``
    (a Unix time; default the current time); a date in the past means 0."""
    seconds = None
    for name, value in headers:
        name = name.lower()
        try:
            if name == b"retry-after-ms":
                return max(0.0, float(value) / 1000.0)
            if name == b"retry-after":
                seconds = max(0.0, float(value))
        except ValueError:
            if name == b"retry-after":
                seconds = _http_date_delay(value, now)
    return seconds


def _http_date_delay(value: bytes, now: float | None) -> float | None:
    """Seconds from ``now`` until the HTTP date ``value`` (>= 0), None if it is no date."""
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (ValueError, TypeError):
        return None
    if when.tzinfo is None:  # "-0000": the RFC says UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_timeout(ex: Exchange, ceiling: float) -> float:
    """The request's time allowance: the model's ``timeout`` (``ceiling``), or less when
    the client's ``x-hapax-timeout`` header asks for less (``30``, ``30s``, ``1500ms``).
    A header can shorten the deadline, never lengthen it past the operator's."""
    asked = ex.headers.get(TIMEOUT_HEADER)
    if asked is None:
        return ceiling
    try:
        seconds = float(asked)  # a bare number is seconds
    except ValueError:
        try:
            seconds = parse_duration(asked)
        except ValueError:
            seconds = 0.0
    if seconds != seconds or seconds == float("inf"):  # nan, inf
        seconds = 0.0
    if seconds <= 0:
        raise BadRequest(f"invalid {TIMEOUT_HEADER} header {asked[:40]!r}: expected a positive "
                         f"duration such as 30, 30s or 1500ms", param=TIMEOUT_HEADER,
                         code="invalid_timeout")
    return min(seconds, ceiling)


class RetryBudget:
    """Retries allowed: ``ratio`` of the requests seen over the last ``window`` seconds,
    plus ``floor`` (so a quiet gateway can still retry).  Per worker.

    Counted in ``BUCKETS`` time buckets (a ring): recording a request is an increment,
    not an append to a list of every request of the window."""

    BUCKETS = 10

    def __init__(self, ratio: float = 0.2, window: float = 10.0, floor: int = 10) -> None:
        self.ratio, self.window, self.floor = ratio, window, floor
        self._width = window / self.BUCKETS
        self._ids = [-1] * self.BUCKETS  # which time slice each bucket holds
        self._requests = [0] * self.BUCKETS
        self._retries = [0] * self.BUCKETS

    def _bucket(self) -> int:
        idx = int(time.monotonic() / self._width)
        slot = idx % self.BUCKETS
        if self._ids[slot] != idx:
            self._ids[slot], self._requests[slot], self._retries[slot] = idx, 0, 0
        return slot

    def note_request(self) -> None:
        # _bucket(), inlined: this runs for every request.
        idx = int(time.monotonic() / self._width)
        slot = idx % self.BUCKETS
        if self._ids[slot] != idx:
            self._ids[slot], self._requests[slot], self._retries[slot] = idx, 1, 0
        else:
            self._requests[slot] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        slot = self._bucket()
        edge = self._ids[slot] - self.BUCKETS
        requests = retries = 0
        for i, idx in enumerate(self._ids):
            if idx > edge:
                requests += self._requests[i]
                retries += self._retries[i]
        if retries >= self.floor + self.ratio * requests:
            return False
        self._retries[slot] += 1
        return True


class Executor:
    """Retries and failover for one worker's gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.budget = RetryBudget()
        #: (retries, retry_on, timeout) per model config object (the config is frozen).
        self._policies: dict[int, tuple[int, frozenset[int], float]] = {}
        metrics = gateway.metrics
        self.retries_total = metrics.add(Counter(
            "hapax_retries_total", "Upstream attempts retried on the same target, by model "
            "alias and reason (status code, or the error kind).", ("model", "reason")))
        self.failovers_total = metrics.add(Counter(
            "hapax_failovers_total", "Requests moved on to their next target, by model alias.",
            ("model",)))

    async def run(self, ex: Exchange, plan: RoutePlan,
                  endpoint: str) -> Response | StreamResponse:
        gateway = self.gateway
        models = gateway.config.models
        mc = models.get(plan.alias) or models.get(ex.alias or "")
        policy = self._policies.get(id(mc))
        if policy is None:
            policy = self._policies[id(mc)] = (
                (mc.retries, frozenset(mc.retry_on), mc.timeout) if mc is not None
                else (0, frozenset(), 600.0))
        retries, retry_on, ceiling = policy
        # Most requests send no x-hapax-timeout: then the model's timeout, without a call.
        timeout = (ceiling if TIMEOUT_HEADER not in ex.headers
                   else request_timeout(ex, ceiling))
        deadline = ex.deadline = ex.started + timeout
        self.budget.note_request()
        health = gateway.health
        health_of = health.targets.get
        deadlines = gateway.deadlines
        providers = gateway.providers
        dedup = gateway.dedup
        attempts = ex.attempts
        targets = plan.targets
        last: Response | StreamResponse | UpstreamError | None = None
        for target in targets:
            if last is not None:
                self.failovers_total.inc((plan.alias,))
            # Looked up once per target: the breaker and the attempt share it.
            th = health_of(target) or health.get(target)
            tries = 0
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise _deadline(timeout, last)
                ticket = health.allow_health(th)
                if ticket == DENIED:  # open breaker: skip the target (or stop retrying it)
                    ex.state.setdefault("skipped", []).append(target)
                    break
                # The deadline cancels the attempt (hapax.pipeline.deadlines: one sweep
                # per worker, cheaper than a timer per attempt).
                expiry = _Expiry(gateway.loop)
                deadlines.watch(expiry, deadline, expiry)
                made = len(attempts)
                reason: int | str
                try:
                    provider = providers.get(target.provider)
                    if provider is None:
                        raise RequestError(f"route for {plan.alias!r} names unknown provider "
                                           f"{target.provider!r}", code="bad_route")
                    if dedup.enabled and dedup.applies(ex, endpoint):
                        resp = await dedup.send(ex, provider, target, endpoint)
                    else:
                        resp = await gateway._attempt(ex, provider, target, endpoint, th)
                except UpstreamError as exc:
                    status = getattr(exc, "upstream_status", None)
                    reason = status or exc.code or "error"
                    _note_reason(attempts, made, reason)
                    if status is not None and status not in retry_on:
                        raise  # e.g. 501: a status not configured as retryable
                    last = exc
                    wait = retry_after(getattr(exc, "retry_headers", ()))
                except asyncio.CancelledError:
                    if expiry.fired and expiry.task.uncancel() == 0:  # ours alone
                        expiry.fired = False
                        _note_reason(attempts, made, DeadlineExceeded.code)
                        raise _deadline(timeout, last) from None
                    raise
                else:
                    if resp.status not in retry_on:
                        return resp
                    _note_reason(attempts, made, resp.status)
                    last, reason, wait = resp, resp.status, retry_after(resp.headers)
                    if isinstance(resp, StreamResponse) and resp.close is not None:
                        resp.close()
                finally:
                    deadlines.unwatch(expiry)
                    if expiry.fired:  # fired as the attempt ended: take the cancel back
                        expiry.task.uncancel()
                    if ticket:
                        health.release(target, ticket)
                if tries >= retries or not self.budget.try_spend():
                    break  # fail over (or give up, after the last target)
                delay = backoff_delay(tries) if wait is None else wait
                if time.perf_counter() + delay >= deadline:
                    break  # sleeping would pass the deadline: try the next target instead
                tries += 1
                self.retries_total.inc((plan.alias, str(reason)))
                if delay > 0:
                    await asyncio.sleep(delay)
        if isinstance(last, UpstreamError):
            raise last
        if last is None:  # every target was skipped: their breakers are open
            wait = health.retry_in(targets)
            raise RequestError(f"no healthy target for model {plan.alias!r}: the circuit "
                               f"breakers of all its targets are open; retry in "
                               f"{wait:.1f}s", status=503, type="server_error",
                               code="no_healthy_target",
                               headers=[(b"retry-after", seconds_header(wait))])
        return last


class _Expiry:
    """Cancels the task of an attempt whose request deadline has passed."""

    __slots__ = ("task", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        task = asyncio.current_task(loop)  # the loop given: no get_running_loop() call
        assert task is not None
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel("the request's deadline passed")


def _note_reason(attempts: list[Attempt], made: int, reason: int | str) -> None:
    """Set ``reason`` on the attempt this exchange just made (none when the answer came
    from an identical request's upstream call: in-flight deduplication)."""
    if len(attempts) > made:
        attempts[-1].reason = str(reason)


def _deadline(timeout: float,
              last: Response | StreamResponse | UpstreamError | None) -> DeadlineExceeded:
    why = f" (last failure: {last.message})" if isinstance(last, UpstreamError) else (
        f" (last answer: status {last.status})" if last is not None else "")
    return DeadlineExceeded(f"the request's deadline of {timeout:g}s passed before an "
                            f"answer{why}")
