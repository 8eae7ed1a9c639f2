"""Target health: circuit breakers, live load and latency, active probes (docs/reliability.md).

One :class:`Health` registry per worker keeps a :class:`TargetHealth` for every target
(provider, model) the worker knows or has sent to.  It is fed by the gateway's
``_attempt`` (every real upstream attempt: its outcome, latency and time in flight) and,
for providers with a ``health_check``, by a probe task per provider.  The executor asks
:meth:`Health.allow` before each attempt; the routing plugin reads ``outstanding`` and
``ewma`` to balance load-balanced groups.

The breaker of a target::

    closed --(failures in a row, or error rate over the window)--> open
    open --(cooldown passed, or a healthy active probe)--> half_open
    half_open --(a probe request succeeds)--> closed
    half_open --(a probe request fails)--> open

A failure is an :class:`~hapax.errors.UpstreamError` (no connection, timeout, 5xx,
garbage) or an answer whose status is in the model's ``retry_on``; any other answer (a
4xx such as a bad prompt) is the caller's problem and counts as a success.  An attempt
that ends otherwise (cancelled by the client or the request's deadline, refused by the
provider's queue) counts as neither.

Each worker keeps its own view (under ``--workers N`` a target may be open in one worker
and still closed in another); ``GET /admin/health`` answers from the worker that got it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hapax import __version__
from hapax.metrics import Counter, Gauge
from hapax.types import Target

if TYPE_CHECKING:
    from hapax.config import BreakerConfig, ProviderConfig
    from hapax.pipeline.gateway import Gateway

__all__ = ["Health", "TargetHealth", "CLOSED", "HALF_OPEN", "OPEN", "STATE_NAMES", "DENIED"]

log = logging.getLogger("hapax")

#: Breaker states; the values are those of the ``hapax_breaker_state`` gauge.
CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = ("closed", "half_open", "open")

#: :meth:`Health.allow` refused: the target's breaker is open.
DENIED = -1

#: Targets whose health a worker keeps (see :meth:`Health.get`).
MAX_TARGETS = 10_000

_BUCKETS = 10  # the error-rate window is kept as this many time buckets (bounded memory)
_EWMA_ALPHA = 0.3  # weight of the newest latency in the moving average
_DEFAULT_RETRY_ON = frozenset((429, 500, 502, 503, 504))


class TargetHealth:
    """The health of one target in one worker: breaker, load, latency, last outcomes.

    Times are ``time.monotonic()`` seconds.  ``outstanding`` counts attempts in flight
    (a stream until it ends); ``ewma`` is the moving average of the time to an answer
    (the first event of a stream), successful attempts only, ``None`` until one.
    """

    __slots__ = ("target", "breaker", "state", "failures", "opened_at", "cooldown", "probes",
                 "generation",
                 "outstanding", "ewma", "last_error", "last_success", "last_failure",
                 "_bucket_len", "_ids", "_totals", "_failed", "_on_change")

    def __init__(self, target: Target, breaker: BreakerConfig | None,
                 on_change: Callable[[TargetHealth, int], None]) -> None:
        self.target = target
        self.breaker = breaker
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        #: The current open period: ``breaker.cooldown``, doubled by each failed probe up
        #: to ``breaker.max_cooldown``, back to ``breaker.cooldown`` once closed.
        self.cooldown = breaker.cooldown if breaker is not None else 0.0
        self.probes = 0  # half-open probe requests in flight
        self.generation = 0  # bumped at each half-open: a stale probe ticket releases nothing
        self.outstanding = 0
        self.ewma: float | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self._bucket_len = (breaker.window if breaker is not None else 30.0) / _BUCKETS
        self._ids = [-1] * _BUCKETS
        self._totals = [0] * _BUCKETS
        self._failed = [0] * _BUCKETS
        self._on_change = on_change

    # -- the error-rate window --------------------------------------------------------

    def _count(self, now: float, failed: bool) -> None:
        idx = int(now / self._bucket_len)
        slot = idx % _BUCKETS
        if self._ids[slot] != idx:
            self._ids[slot], self._totals[slot], self._failed[slot] = idx, 0, 0
        self._totals[slot] += 1
        if failed:
            self._failed[slot] += 1

    def window(self, now: float | None = None) -> tuple[int, int]:
        """``(attempts, failures)`` over the breaker's window."""
        edge = int((time.monotonic() if now is None else now) / self._bucket_len) - _BUCKETS
        total = failed = 0
        for i in range(_BUCKETS):
            if self._ids[i] > edge:
                total += self._totals[i]
                failed += self._failed[i]
        return total, failed

    def _reset_window(self) -> None:
        self._ids = [-1] * _BUCKETS

    # -- outcomes ---------------------------------------------------------------------

    def success(self, latency: float | None) -> None:
        """An attempt answered (any status that is not a failure)."""
        now = time.monotonic()
        self.last_success = now
        self.failures = 0
        if latency is not None:
            ewma = self.ewma
            self.ewma = latency if ewma is None else ewma + _EWMA_ALPHA * (latency - ewma)
        if self.breaker is None:
            return
        self._count(now, False)
        if self.state != CLOSED:
            self._move(CLOSED, now)

    def failure(self, error: str) -> None:
        """An attempt failed (or an active probe did)."""
        now = time.monotonic()
        self.last_failure = now
        self.last_error = error[:300]
        self.failures += 1
        breaker = self.breaker
        if breaker is None:
            return
        self._count(now, True)
        if self.state == HALF_OPEN:
            self._move(OPEN, now)
        elif self.state == CLOSED:
            if self.failures >= breaker.failures:
                self._move(OPEN, now)
            else:
                total, failed = self.window(now)
                if total >= breaker.min_requests and failed >= breaker.error_rate * total:
                    self._move(OPEN, now)

    def half_open(self) -> None:
        """Let probe requests through now (an active probe found the provider healthy)."""
        if self.state == OPEN:
            self._move(HALF_OPEN, time.monotonic())

    def _move(self, state: int, now: float) -> None:
        breaker = self.breaker
        if state == OPEN and breaker is not None:
            # A failed probe (half-open -> open): back off longer before the next one.
            self.cooldown = (min(max(breaker.max_cooldown, breaker.cooldown), self.cooldown * 2)
                             if self.state == HALF_OPEN else breaker.cooldown)
        self.state = state
        if state == OPEN:
            self.opened_at = now
        elif state == HALF_OPEN:
            self.generation += 1
            self.probes = 0
        else:
            self.failures = 0
            self._reset_window()  # a fresh start: old failures do not re-open it
            if breaker is not None:
                self.cooldown = breaker.cooldown
        self._on_change(self, state)

    # -- asked by the executor --------------------------------------------------------

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until an open breaker lets probe requests through (0 when not open)."""
        if self.state != OPEN or self.breaker is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown
                   - (time.monotonic() if now is None else now))

    def is_open(self) -> bool:
        """Open and still cooling down: the target would be skipped now."""
        return self.state == OPEN and self.retry_in() > 0


class Health:
    """The worker's registry of :class:`TargetHealth`, its metrics and its probe tasks."""

    def __init__(self, gateway: Gateway) -> None:
        config = gateway.config
        self.config = config
        self.targets: dict[Target, TargetHealth] = {}
        self._breakers = {name: pc.breaker for name, pc in config.providers.items()}
        star = config.models.get("*")
        self._retry_on = {alias: frozenset(m.retry_on) for alias, m in config.models.items()}
        self._default_retry_on = frozenset(star.retry_on) if star else _DEFAULT_RETRY_ON
        #: Last active probe per provider: ``(healthy, monotonic time, error or None)``.
        self.probes: dict[str, tuple[bool, float, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        metrics = gateway.metrics
        self.transitions = metrics.add(Counter(
            "hapax_breaker_transitions_total", "Circuit breaker state changes, by provider, "
            "model and the state entered (open|half_open|closed).", ("provider", "model", "to")))
        self.skipped = metrics.add(Counter(
            "hapax_breaker_skipped_total", "Targets skipped because their circuit breaker was "
            "open, by provider and model.", ("provider", "model")))
        self.attempts = metrics.add(Counter(
            "hapax_upstream_attempts_total", "Upstream attempts, by provider and outcome "
            "(success|failure|aborted).", ("provider", "outcome")))
        self.checks = metrics.add(Counter(
            "hapax_health_checks_total", "Active health probes, by provider and result "
            "(healthy|unhealthy).", ("provider", "result")))
        metrics.add(Gauge(
            "hapax_breaker_state", "Circuit breaker state per target in the answering worker: "
            "0 closed, 1 half-open, 2 open.", ("provider", "model"), self._states,
            merge="none"))
        for alias, m in config.models.items():  # the configured targets, known at once
            for entry in m.targets:
                for t in entry.members:
                    model = t.model or (alias if alias != "*" else None)
                    if t.provider is not None and model is not None:
                        self.get(Target(t.provider, model))

    def get(self, target: Target) -> TargetHealth:
        """The health of ``target`` (created on first sight).  The registry is bounded:
        clients choose the aliases a ``"*"`` catch-all sends on, so beyond
        :data:`MAX_TARGETS` a new target gets a fresh record that is not kept."""
        th = self.targets.get(target)
        if th is None:
            th = TargetHealth(target, self._breakers.get(target.provider), self._changed)
            if len(self.targets) < MAX_TARGETS:
                self.targets[target] = th
        return th

    def retry_on(self, alias: str | None) -> frozenset[int]:
        """The statuses that count as failures for model alias ``alias``."""
        return self._retry_on.get(alias or "", self._default_retry_on)

    def _changed(self, th: TargetHealth, state: int) -> None:
        t = th.target
        self.transitions.inc((t.provider, t.model, STATE_NAMES[state]))
        if state == OPEN:
            log.warning("circuit breaker of %s/%s opened: %s", t.provider, t.model,
                        th.last_error or "failures")
        else:
            log.info("circuit breaker of %s/%s is %s", t.provider, t.model, STATE_NAMES[state])

    def _states(self) -> dict[tuple[str, ...], float]:
        return {(t.provider, t.model): float(th.state) for t, th in self.targets.items()
                if th.breaker is not None}

    # -- the executor's questions -----------------------------------------------------

    def allow(self, target: Target) -> int:
        """May an attempt go to ``target`` now?  :data:`DENIED` (skip it), 0 (yes), or a
        positive ticket: a half-open probe slot, to give back with :meth:`release` once
        the attempt is over."""
        return self.allow_health(self.targets.get(target) or self.get(target))

    def allow_health(self, th: TargetHealth) -> int:
        """:meth:`allow` for a target whose health the caller already holds."""
        state = th.state
        if state == CLOSED:
            return 0
        target = th.target
        if state == OPEN:
            if th.retry_in() > 0:
                self.skipped.inc((target.provider, target.model))
                return DENIED
            th._move(HALF_OPEN, time.monotonic())
        assert th.breaker is not None
        if th.probes >= th.breaker.half_open_requests:
            self.skipped.inc((target.provider, target.model))
            return DENIED
        th.probes += 1
        return th.generation

    def release(self, target: Target, ticket: int) -> None:
        """Give back a half-open probe slot taken by :meth:`allow`."""
        th = self.targets.get(target)
        if th is not None and ticket == th.generation and th.probes > 0:
            th.probes -= 1

    def retry_in(self, targets: tuple[Target, ...]) -> float:
        """Seconds until the first of ``targets`` lets requests through again."""
        now = time.monotonic()
        return min((self.get(t).retry_in(now) for t in targets), default=0.0)

    # -- carried over a configuration reload --------------------------------------------

    def carry_over(self, old: Health) -> None:
        """Adopt ``old``'s state for the targets that still exist (a configuration reload
        built this registry): breakers, load, latency, last outcomes and probe results.
        A target whose breaker settings changed keeps its state under the new settings."""
        for target, prev in old.targets.items():
            if target.provider not in self._breakers:
                continue  # the provider is gone
            th = self.get(target)
            # Not `outstanding` nor half-open `probes`: the old gateway's attempts in flight
            # give theirs back to the old registry when they end.
            for name in ("state", "failures", "opened_at", "cooldown", "generation", "ewma",
                         "last_error", "last_success", "last_failure"):
                setattr(th, name, getattr(prev, name))
            if th.breaker is None:
                th.state = CLOSED
            elif prev.breaker is not None and prev.breaker.window == th.breaker.window:
                th._ids, th._totals, th._failed = prev._ids, prev._totals, prev._failed
        for name, result in old.probes.items():
            if name in self._breakers:
                self.probes[name] = result

    # -- active probes ----------------------------------------------------------------

    def start(self) -> None:
        """Start a probe task for every provider with a ``health_check`` (on the running
        loop)."""
        for name, pc in self.config.providers.items():
            if pc.health_check is not None:
                task = asyncio.get_running_loop().create_task(self._probe_loop(name, pc),
                                                              name=f"hapax-probe-{name}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop the probe tasks."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe_loop(self, name: str, pc: ProviderConfig) -> None:
        check = pc.health_check
        assert check is not None
        while True:
            try:
                async with asyncio.timeout(check.timeout):
                    error = await probe(pc, name)
            except TimeoutError:
                error = f"no answer within {check.timeout:g}s"
            except Exception as exc:  # a probe must never end the loop
                error = f"{type(exc).__name__}: {exc}"
            self.note_probe(name, error)
            await asyncio.sleep(check.interval)

    def note_probe(self, provider: str, error: str | None) -> None:
        """Record an active probe of ``provider``: ``error`` is None when it was healthy.
        A healthy probe half-opens the provider's open breakers; a failed one counts as a
        failed attempt on each of its targets."""
        healthy = error is None
        self.probes[provider] = (healthy, time.monotonic(), error)
        self.checks.inc((provider, "healthy" if healthy else "unhealthy"))
        for target, th in self.targets.items():
            if target.provider != provider:
                continue
            if error is None:
                th.half_open()
            elif th.state != OPEN:
                th.failure(f"health check: {error}")

    # -- GET /admin/health --------------------------------------------------------------

    def plans(self) -> dict[str, list[Target]]:
        """Every configured model alias with its targets in order (group members in their
        configured order).  Targets of the ``"*"`` catch-all that take the client's alias
        as model are the ones this worker has sent requests to."""
        named: set[Target] = set()
        plans: dict[str, list[Target]] = {}
        for alias, m in self.config.models.items():
            if alias == "*":
                continue
            plans[alias] = [Target(t.provider, t.model or alias)
                            for entry in m.targets for t in entry.members
                            if t.provider is not None]
            named.update(plans[alias])
        star = self.config.models.get("*")
        if star is not None:
            plans["*"] = []
            for entry in star.targets:
                for t in entry.members:
                    if t.model is not None and t.provider is not None:
                        plans["*"].append(Target(t.provider, t.model))
                    else:
                        plans["*"] += [seen for seen in self.targets if seen not in named
                                       and seen.provider == t.provider]
        return plans

    def report(self) -> dict[str, Any]:
        """The health document (``GET /admin/health``): every model alias with its targets
        in order, and an overall ``status``: ``ok``, ``degraded`` when some target's
        breaker is open, ``down`` when some model has no target that would take a
        request now."""
        now, wall = time.monotonic(), time.time()
        plans = self.plans()

        def when(t: float | None) -> float | None:
            return None if t is None else round(wall - (now - t), 3)

        status = "ok"
        models: dict[str, Any] = {}
        for alias, targets in plans.items():
            rows = []
            available = 0
            for target in targets:
                th = self.get(target)
                total, failed = th.window(now)
                probe_result = self.probes.get(target.provider)
                is_open = th.state == OPEN and th.retry_in(now) > 0
                available += not is_open
                if th.state == OPEN:
                    status = "degraded" if status == "ok" else status
                rows.append({
                    "provider": target.provider,
                    "model": target.model,
                    "breaker": STATE_NAMES[th.state] if th.breaker is not None else "off",
                    "consecutive_failures": th.failures,
                    "window_requests": total,
                    "error_rate": round(failed / total, 4) if total else 0.0,
                    "outstanding": th.outstanding,
                    "latency_ewma_ms": None if th.ewma is None else round(th.ewma * 1000, 2),
                    "last_error": th.last_error,
                    "last_success": when(th.last_success),
                    "last_failure": when(th.last_failure),
                    "probe": None if probe_result is None else {
                        "healthy": probe_result[0], "at": when(probe_result[1]),
                        "error": probe_result[2]},
                    "retry_in_s": round(th.retry_in(now), 3) if th.state == OPEN else None,
                })
            if targets and not available:
                status = "down"
            models[alias] = {"status": "ok" if available == len(targets) else (
                "degraded" if available else "down"), "targets": rows}
        return {"status": status, "pid": os.getpid(), "models": models}


async def probe(pc: ProviderConfig, name: str) -> str | None:
    """One active probe of a provider: ``GET {base_url}{path}`` with its credentials.
    None when it answered 2xx, else what went wrong (without secrets).  A provider with no
    ``base_url`` (``mock``) is always healthy."""
    check = pc.health_check
    if pc.base_url is None or check is None:
        return None
    url = urlsplit(pc.base_url)
    tls = url.scheme == "https"
    host = url.hostname or "localhost"
    port = url.port or (443 if tls else 80)
    headers = [("host", url.netloc.rpartition("@")[2]), ("user-agent", f"hapax/{__version__}"),
               ("accept", "application/json"), ("connection", "close")]
    if pc.api_key is not None:
        key = pc.api_key.reveal()
        if pc.kind == "anthropic":
            headers += [("x-api-key", key), ("anthropic-version", "2023-06-01")]
        else:
            headers.append(("authorization", f"Bearer {key}"))
    headers += list(pc.headers.items())
    path = url.path.rstrip("/") + check.path
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(cafile=pc.ca_file)
        if not pc.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except OSError as exc:
        return f"cannot connect to provider {name!r}: {exc.strerror or type(exc).__name__}"
    try:
        writer.write(head.encode())
        line = await reader.readline()
    except OSError as exc:
        return f"provider {name!r} failed: {exc.strerror or type(exc).__name__}"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return f"provider {name!r} sent no HTTP status line"
    status = int(parts[1])
    return None if 200 <= status < 300 else f"provider {name!r} answered {status}"


def seconds_header(seconds: float) -> bytes:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds))).encode()
