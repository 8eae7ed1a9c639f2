"""The Gateway: plugins, providers and the walk of a request through the stages.

A listener builds an :class:`~hapax.pipeline.exchange.Exchange`, awaits
:meth:`Gateway.handle` (which never raises: errors become error responses in the
front door's format), writes the response, then calls :meth:`Gateway.finish`, which
runs the after-response stage off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import orjson

from hapax import __version__
from hapax._core import IMPLEMENTATION
from hapax._core.json import find_value, replace_string_value
from hapax._core.sse import event_data
from hapax.config import Config
from hapax.errors import (
    AuthenticationError,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PluginError,
    RequestError,
    UpstreamError,
)
from hapax.metrics import Gauge, Metrics
from hapax.node import NodeState
from hapax.pipeline.admission import build_queues
from hapax.pipeline.deadlines import Deadlines
from hapax.pipeline.dedup import Dedup
from hapax.pipeline.encoding import decode_body
from hapax.pipeline.exchange import Exchange
from hapax.pipeline.executor import Executor
from hapax.pipeline.health import Health, TargetHealth
from hapax.pipeline.hooks import Hooks, configure_plugins, load_plugins
from hapax.pipeline.loopdelay import LoopDelay
from hapax.providers.base import Provider
from hapax.translate import anthropic as translate
from hapax.types import Attempt, Response, StreamResponse, Target

__all__ = ["Gateway", "error_response", "stream_error_event"]

log = logging.getLogger("hapax")

_JSON = b"application/json"
_CHAT = "chat/completions"
#: Routes answered even when overloaded: the gateway's own cheap endpoints.
_NEVER_SHED = frozenset({"healthz", "readyz", "metrics", "admin_health"})
#: The answer of an overloaded gateway (shared: errors are not mutated).
_OVERLOADED = Overloaded("the gateway is at its capacity; retry shortly",
                         headers=[(b"retry-after", b"1")])
_EMBEDDINGS = "embeddings"


def _unknown_route(ex: Exchange) -> None:
    """A path the gateway does not serve: route ``other``, and the error in Anthropic's
    format for what is evidently an Anthropic client (a path under ``/v1/messages/``,
    such as ``count_tokens``, or the ``anthropic-version`` header its SDKs send)."""
    ex.route = "other"
    if ex.path.startswith(("/v1/messages/", "/messages/")) or \
            "anthropic-version" in ex.headers:
        ex.api = "anthropic"


def _anthropic_type(exc: RequestError) -> str | None:
    # OpenAI files 404s, 413s… under invalid_request_error; Anthropic has a type per status.
    return None if exc.type == "invalid_request_error" else exc.type


def error_response(exchange: Exchange, exc: RequestError) -> Response:
    """Render ``exc`` in the error format of the exchange's front door: OpenAI's
    envelope, or Anthropic's for ``/v1/messages``."""
    if exchange.api == "anthropic":
        body = translate.anthropic_error_body(exc.status, exc.message, _anthropic_type(exc))
    else:
        body = orjson.dumps({"error": {"message": exc.message, "type": exc.type,
                                       "param": exc.param, "code": exc.code}})
    headers = [(b"content-type", _JSON), *exc.headers]
    return Response(exc.status, body, headers)


def stream_error_event(exchange: Exchange, exc: RequestError) -> bytes:
    """The in-band event that ends a failed stream, in the front door's stream format
    (never followed by the success terminator: ``[DONE]`` or ``message_stop``)."""
    if exchange.api == "anthropic":
        return b"event: error\ndata: " + translate.anthropic_error_body(
            exc.status, exc.message, _anthropic_type(exc)) + b"\n\n"
    return b"data: " + orjson.dumps({"error": {
        "message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}) \
        + b"\n\n"


class Gateway:
    """One worker's pipeline: built from a :class:`~hapax.config.Config`."""

    def __init__(self, config: Config, *, plugins: Iterable[tuple[str, Any]] = (),
                 node: NodeState | None = None, previous: Gateway | None = None) -> None:
        """``previous``: the gateway this one replaces on a configuration reload.  Its
        metrics (totals never go back), retry budget and target health carry over;
        everything else (plugins, providers and their pools) is built anew.  Limiter and
        queue state survive by living in ``node`` slots named after what they count."""
        self.config = config
        #: State shared by the node's workers (created before they fork); plugins
        #: allocate their slots from it in hapax_configure.
        self.node = node if node is not None else NodeState()
        self.metrics: Metrics = previous.metrics if previous is not None else Metrics()
        #: In-flight deduplication (and the fingerprint policy per model alias).
        self.dedup = Dedup(self, config)
        #: Retries with backoff and failover across a model's targets.
        self.executor = Executor(self)
        #: Request deadlines: one periodic sweep for the worker (hapax.pipeline.deadlines).
        self.deadlines = Deadlines()
        #: The worker's event loop, once started (asking asyncio for it costs a getpid()
        #: system call per request on Python 3.11).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Circuit breakers, load and latency of every target; active probes.
        self.health = Health(self)
        self.pm, self.plugin_infos = load_plugins(config, plugins)
        configure_plugins(self.pm, config, self)
        self.hooks = Hooks(self.pm)
        self.providers = self._build_providers(config)
        #: Admission control: a queue per provider with a max_concurrent (docs/queue.md).
        self.queues = build_queues(config, self.node, self.metrics)
        self.max_concurrent = config.server.limits.max_concurrent
        self.in_flight = 0
        #: The loop's lateness: past ``server.limits.shed_delay`` new requests get 503.
        self.delay = LoopDelay(config.server.limits.shed_delay, lambda: self.in_flight)
        self.ready = False
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._escaped: dict[str, bytes] = {}
        self._transform = bool(self.hooks.transform_request)
        self._after = self.hooks.after_response
        self._routing = self.pm.get_plugin("hapax.builtins.routing")
        # path -> (methods, handler, route name, front door format: what errors look like)
        routes: dict[str, tuple[tuple[str, ...], Callable[[Exchange], Awaitable[Any]], str,
                                str]] = {}
        # The proxied routes call _proxy directly (a partial, not a method awaiting it:
        # one coroutine less per request).
        chat = partial(self._proxy, endpoint=_CHAT)
        for prefix in ("/v1", ""):
            routes[f"{prefix}/chat/completions"] = (("POST",), chat, "chat", "openai")
            routes[f"{prefix}/messages"] = (("POST",), chat, "messages", "anthropic")
            routes[f"{prefix}/embeddings"] = (("POST",), partial(self._proxy,
                                                                 endpoint=_EMBEDDINGS),
                                              "embeddings", "openai")
            routes[f"{prefix}/models"] = (("GET", "HEAD"), self._models, "models", "openai")
        routes["/healthz"] = (("GET", "HEAD"), self._healthz, "healthz", "openai")
        routes["/readyz"] = (("GET", "HEAD"), self._readyz, "readyz", "openai")
        routes["/metrics"] = (("GET", "HEAD"), self._metrics, "metrics", "openai")
        routes["/admin/health"] = (("GET", "HEAD"), self._admin_health, "admin_health",
                                   "openai")
        self._routes = routes
        self.metrics.add(Gauge("hapax_requests_in_flight", "Requests being handled now.", (),
                               lambda: {(): float(self.in_flight)}))
        self.metrics.add(Gauge("hapax_loop_delay_seconds", "How late the worker's event "
                               "loop ran its probe timer, last sample (taken while requests "
                               "come in); above server.limits.shed_delay new requests get "
                               "503.", (), lambda: {(): self.delay.delay},
                               merge="none"))
        self.metrics.add(Gauge("hapax_upstream_connections", "Upstream connections by "
                               "provider and state (open|idle).", ("provider", "state"),
                               self._pool_stats))
        if previous is not None:
            self.executor.budget = previous.executor.budget
            for name, queue in self.queues.items():
                if name in previous.queues:
                    queue.carry_over(previous.queues[name])
            self.health.carry_over(previous.health)

    def _build_providers(self, config: Config) -> dict[str, Provider]:
        kinds: dict[str, Callable[..., Provider]] = {}
        self.pm.hook.hapax_register_providers(register=kinds.__setitem__)
        providers, problems = {}, []
        for name, pc in config.providers.items():
            factory = kinds.get(pc.kind)
            if factory is None:
                problems.append((f"providers.{name}.kind", f"unknown provider kind {pc.kind!r} "
                                 f"(known: {', '.join(sorted(kinds))})"))
                continue
            providers[name] = factory(name, pc)
        if problems:
            raise ConfigError(problems, config.source)
        return providers

    def _pool_stats(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for name, p in self.providers.items():
            for state, value in p.stats().items():
                out[(name, state)] = float(value)
        return out

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for provider in self.providers.values():
            await provider.start()
        self.health.start()
        self.ready = True

    async def close(self, *, drain: float | None = None) -> None:
        """Stop: wait for after-response tasks (up to 5 s), then close the providers.

        ``drain``: first wait up to that many seconds for the requests in flight —
        streams included — to finish (a gateway retired by a configuration reload; the
        listener no longer hands it new requests)."""
        self.ready = False
        if drain is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain
            while self.in_flight > 0 and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if self.in_flight > 0:
                log.warning("closing a retired gateway with %d request(s) still in flight "
                            "after %.1fs", self.in_flight, drain)
            await asyncio.sleep(0)  # finish() schedules the after-response stage
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.dedup.close()
        self.delay.stop()
        await self.health.stop()
        self.deadlines.close()
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                log.exception("closing provider %s", provider.name)

    # -- the request walk ---------------------------------------------------------

    async def handle(self, ex: Exchange) -> Response | StreamResponse:
        """Answer one exchange.  Never raises (but for cancellation)."""
        self.in_flight += 1
        if self.in_flight > self.max_concurrent or self.delay.late:
            refusal = self.refuse(ex)
            if refusal is not None:
                return refusal
        if not self.delay.seen:
            self.delay.mark(self.loop or asyncio.get_running_loop())
        try:
            entry = self._routes.get(ex.path)
            if entry is None:
                _unknown_route(ex)
                raise NotFound(f"Unknown request URL: {ex.method} {ex.path}",
                               code="unknown_url")
            methods, handler, ex.route, ex.api = entry
            if ex.method not in methods:
                raise MethodNotAllowed(f"{ex.method} is not allowed on {ex.path}",
                                       headers=[(b"allow", ", ".join(methods).encode())])
            resp = await handler(ex)
        except RequestError as exc:
            ex.error = exc.message
            resp = error_response(ex, exc)
        except PluginError as exc:
            log.error("request %s: %s", ex.request_id, exc, exc_info=exc.__cause__)
            ex.error = str(exc)
            resp = error_response(ex, RequestError("internal error in a gateway plugin",
                                                   code="plugin_error"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s failed", ex.request_id)
            ex.error = f"{type(exc).__name__}: {exc}"
            resp = error_response(ex, RequestError("internal gateway error",
                                                   code="internal_error"))
        ex.status = resp.status
        return resp

    def refuse(self, ex: Exchange) -> Response | None:
        """The 503 ``overloaded`` answer to ``ex`` while the gateway is overloaded
        (``max_concurrent`` requests in flight, or the loop running later than
        ``shed_delay``: hapax.pipeline.loopdelay; callers test that inline), in the error
        format of its front door; no hook runs before it (the caller counts it in
        :attr:`in_flight` and finishes it with :meth:`finish`, as any other).  None for
        the gateway's own endpoints (health, readiness, metrics), which are cheap and
        are what operators look at during an overload.  The listener calls it directly
        for a request that arrives while overloaded (no task, no coroutine)."""
        entry = self._routes.get(ex.path)
        if entry is None:
            _unknown_route(ex)
        else:
            if entry[2] in _NEVER_SHED:
                return None
            ex.route, ex.api = entry[2], entry[3]
            if ex.api == "anthropic":
                ex.response_headers.append((b"request-id", ex.request_id.encode("latin-1")))
        exc = _OVERLOADED
        ex.error = exc.message
        resp = error_response(ex, exc)
        ex.status = resp.status
        return resp

    async def _proxy(self, ex: Exchange, endpoint: str) -> Response | StreamResponse:
        """Chat completions and embeddings; Anthropic's Messages API is the chat
        operation with ``ex.api == "anthropic"`` (translated when the target speaks
        OpenAI's format).

        A stage whose implementations are all sync is run without a coroutine
        (``Stage.run``); an empty one is skipped."""
        if ex.api == "anthropic":
            # Anthropic's SDKs and consoles look for `request-id`.
            ex.response_headers.append((b"request-id", ex.request_id.encode("latin-1")))
        coding = ex.headers.get("content-encoding")
        if coding is not None:  # a compressed body: everything after sees it decoded
            ex.body = decode_body(ex.body, coding, self.config.server.limits.max_body)
            del ex.headers["content-encoding"]
        hooks = self.hooks
        stage = hooks.request_received
        if stage.impls and (pending := stage.start(ex)) is not None:
            await pending
        stage = hooks.authenticate
        principal = stage.run(ex) if stage.sync else await stage(ex)
        if principal is None:
            raise AuthenticationError("no authentication plugin accepted the request")
        ex.principal = principal
        body = ex.json
        if type(body) is not dict:
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", param="model",
                             code="missing_model")
        ex.alias = model
        if endpoint is _CHAT:
            stream = body.get("stream")
            if stream is not None and type(stream) is not bool:
                raise BadRequest("'stream' must be a boolean", param="stream")
            ex.stream = stream is True
            messages = body.get("messages")
            if type(messages) is not list or not messages:
                raise BadRequest("'messages' must be a non-empty array", param="messages")
            if ex.api == "anthropic":
                max_tokens = body.get("max_tokens")
                if type(max_tokens) is not int or max_tokens < 1:
                    raise BadRequest("max_tokens: required, an integer of at least 1",
                                     param="max_tokens")
        elif "input" not in body:
            raise BadRequest("you must provide an input parameter", param="input")
        stage = hooks.authorize
        denial = stage.run(ex, principal) if stage.sync else await stage(ex, principal)
        if denial is not None:
            raise denial.to_error()
        if self._transform and (pending := hooks.transform_request.start(ex)) is not None:
            await pending
            model = ex.json.get("model")
            if isinstance(model, str) and model:
                ex.alias = model
        stage = hooks.route
        plan = stage.run(ex) if stage.sync else await stage(ex)
        if plan is None:
            raise NotFound(f"The model `{ex.alias}` does not exist or you do not have access "
                           f"to it.", code="model_not_found", param="model")
        ex.plan = plan
        stage = hooks.admit
        if stage.impls:
            denial = stage.run(ex, plan) if stage.sync else await stage(ex, plan)
            if denial is not None:
                raise denial.to_error()
        stage = hooks.cache_lookup
        if stage.impls:
            cached = stage.run(ex) if stage.sync else await stage(ex)
            if cached is not None:
                return cached
        # Retries and failover around _attempt (docs/reliability.md).
        return await self.executor.run(ex, plan, endpoint)

    def _upstream_body(self, ex: Exchange, target: Target) -> bytes:
        if self._transform:
            obj = ex.json
            if obj.get("model") != target.model:
                obj = {**obj, "model": target.model}
            return orjson.dumps(obj)
        if target.model == ex.alias:
            return ex.body
        escaped = self._escaped.get(target.model)
        if escaped is None:
            escaped = self._escaped[target.model] = orjson.dumps(target.model)[1:-1]
        body = replace_string_value(ex.body, b"model", escaped)
        if body is None:  # e.g. duplicate keys or odd input: fall back to re-serialising
            body = orjson.dumps({**ex.json, "model": target.model})
        return body

    def fingerprint(self, ex: Exchange) -> bytes:
        """The request's fingerprint, computed once per exchange (dedup and the cache use
        the same value): route, model alias, canonical body without the model's
        ``fingerprint.ignore`` fields, scoped by the caller's key unless the model's
        ``fingerprint.scope`` is ``global``."""
        fp = ex.fingerprint
        if fp is None:
            fp = ex.fingerprint = self.dedup.fingerprint(ex)
        return fp

    async def _attempt(self, ex: Exchange, provider: Provider, target: Target,
                       endpoint: str, th: TargetHealth | None = None
                       ) -> Response | StreamResponse:
        """One upstream call: admission (the provider's queue, if it has a
        max_concurrent: the slot is held until the response is read or the stream
        ends), then :meth:`_call`.

        Its outcome feeds the target's health (hapax.pipeline.health): the attempt is
        outstanding until its answer is in (a stream: until it ends); an UpstreamError or
        a status in the model's ``retry_on`` is a failure, any other answer a success
        whose time to answer (to the first event of a stream) goes into the latency
        average; an attempt cancelled or refused before the provider answered is
        neither.  ``th``: the target's health, when the caller has it at hand."""
        health = self.health
        if th is None:
            th = health.targets.get(target) or health.get(target)
        th.outstanding += 1
        t0 = time.perf_counter()
        try:
            queue = self.queues.get(target.provider) if self.queues else None
            if queue is not None:
                resp = await queue.run(ex, self._call, ex, provider, target, endpoint)
            else:
                resp = await self._call(ex, provider, target, endpoint)
        except UpstreamError as exc:
            th.outstanding -= 1
            th.failure(exc.message)
            health.attempts.inc((target.provider, "failure"))
            raise
        except BaseException:
            th.outstanding -= 1
            health.attempts.inc((target.provider, "aborted"))
            raise
        if resp.status in health.retry_on(ex.alias):
            th.failure(f"provider {target.provider!r} answered {resp.status}")
            health.attempts.inc((target.provider, "failure"))
        else:
            th.success(time.perf_counter() - t0)
            health.attempts.inc((target.provider, "success"))
        if isinstance(resp, StreamResponse):
            resp.close = _outstanding_until_closed(th, resp.close)
        else:
            th.outstanding -= 1
        return resp

    async def _call(self, ex: Exchange, provider: Provider, target: Target,
                    endpoint: str) -> Response | StreamResponse:
        """Send, first events.  When the provider speaks another format than the front
        door (``provider.api != ex.api``), the request and the answer are translated here
        (hapax.translate): plugins, the cache and dedup see the client's format."""
        attempt = Attempt(target, len(ex.attempts) + 1)
        ex.attempts.append(attempt)
        hooks = self.hooks
        stage = hooks.before_attempt
        if stage.impls and (pending := stage.start(ex, attempt)) is not None:
            await pending
        # The front door and the provider may speak different formats: translate.
        crossed = provider.api != ex.api
        body = (self._translated_body(ex, provider, target, endpoint) if crossed
                else self._upstream_body(ex, target))
        ex.target = target
        t0 = attempt.started = ex.upstream_started = time.perf_counter()
        try:
            resp = await provider.send(ex, attempt, endpoint, body)
        except UpstreamError as exc:
            attempt.latency = time.perf_counter() - t0
            ex.upstream_time += attempt.latency
            attempt.error = str(exc)
            attempt.status = exc.status
            self.metrics.upstream_errors.inc((target.provider, exc.code or "error"))
            raise
        attempt.status = resp.status
        if isinstance(resp, StreamResponse):
            # Wait for the first events before answering: until something is sent, a
            # failure can still become a proper error response (and, later, a failover).
            events = (self._translated_events(ex, target, resp.events) if crossed
                      else resp.events.__aiter__())
            try:
                first = await events.__anext__()
            except StopAsyncIteration:
                first = []
            except UpstreamError as exc:
                if resp.close is not None:
                    resp.close()
                attempt.latency = ex.upstream_time = time.perf_counter() - t0
                attempt.error = str(exc)
                self.metrics.upstream_errors.inc((target.provider, exc.code or "error"))
                raise
            except BaseException:
                if resp.close is not None:
                    resp.close()
                raise
            return StreamResponse(resp.status, self._relay(ex, events, first, attempt,
                                                           resp.close),
                                  resp.headers, close=resp.close)
        attempt.latency = ex.upstream_time = time.perf_counter() - t0
        if crossed:
            resp = self._translated_response(ex, target, resp)
        if 200 <= resp.status < 300:
            ex.state["response"] = resp
            for stage in (hooks.transform_response, hooks.cache_store):
                if stage.impls and (pending := stage.start(ex, resp)) is not None:
                    await pending
        return resp

    def _translated_body(self, ex: Exchange, provider: Provider, target: Target,
                         endpoint: str) -> bytes:
        """The request in the provider's format (``hapax.translate``), for ``target``."""
        if endpoint != _CHAT:
            raise BadRequest(f"provider {target.provider!r} (kind {provider.kind}) cannot "
                             f"serve {endpoint}: route this model to an OpenAI-compatible "
                             f"provider", code="unsupported_endpoint")
        if ex.api == "anthropic":
            obj = translate.anthropic_to_openai_request(ex.json)
        else:
            obj = translate.openai_to_anthropic_request(ex.json)
        obj["model"] = target.model
        return orjson.dumps(obj)

    @staticmethod
    def _translated_response(ex: Exchange, target: Target, resp: Response) -> Response:
        """A complete provider answer in the front door's format (bodies of 2xx answers
        and of error answers alike); the provider's headers are kept."""
        status = resp.status
        if status >= 400:
            body = (translate.openai_error_to_anthropic(status, resp.body)
                    if ex.api == "anthropic"
                    else translate.anthropic_error_to_openai(status, resp.body))
            return Response(status, body, resp.headers)
        obj = resp.json
        if not isinstance(obj, dict):
            raise UpstreamError(f"provider {target.provider!r} answered {status} with a "
                                f"body that is not a JSON object")
        if ex.api == "anthropic":
            obj = translate.openai_to_anthropic_response(obj, model=target.model)
        else:
            obj = translate.anthropic_to_openai_response(obj, model=target.model)
        return Response(status, orjson.dumps(obj), resp.headers)

    @staticmethod
    async def _translated_events(ex: Exchange, target: Target,
                                 events: AsyncIterator[list[bytes]]
                                 ) -> AsyncIterator[list[bytes]]:
        """The provider's stream in the front door's format.  The translator raises
        UpstreamError on a provider's in-band error or a malformed event; a stream that
        ends before its terminator raises too."""
        translator: (translate.OpenAIToAnthropicStream
                     | translate.AnthropicToOpenAIStream)
        if ex.api == "anthropic":
            translator = translate.OpenAIToAnthropicStream(target.model)
        else:
            opts = ex.json.get("stream_options")
            translator = translate.AnthropicToOpenAIStream(
                target.model, include_usage=isinstance(opts, dict)
                and opts.get("include_usage") is True)
        feed = translator.feed
        async for batch in events:
            out: list[bytes] = []
            for ev in batch:
                out += feed(ev)
            if translator.usage is not None:
                ex.usage = translator.usage
            if out:
                yield out
        if not translator.complete:
            end = "[DONE]" if ex.api == "anthropic" else "message_stop"
            raise UpstreamError(f"provider {target.provider!r} ended the stream without "
                                f"{end}")

    async def _relay(self, ex: Exchange, events: AsyncIterator[list[bytes]], first: list[bytes],
                     attempt: Attempt, close: Callable[[], None] | None = None
                     ) -> AsyncIterator[list[bytes]]:
        """Relay upstream events; note usage; run chunk transforms if any exist.

        A failure once the stream has started ends it with an in-band error event and
        no ``[DONE]``, so the client can never take a cut stream for a complete one.
        The request's deadline holds for the whole stream: when it passes, the deadline
        sweep (hapax.pipeline.deadlines) aborts the upstream (``close``); without
        ``close`` it is checked between reads.
        """
        deadline = ex.deadline
        expired: list[bool] = []
        watched = False
        if deadline:
            if close is not None:

                def expire() -> None:
                    expired.append(True)
                    close()

                self.deadlines.watch(ex, deadline, expire)
                watched = True
            else:
                deadline = -deadline  # checked by hand below
        # Per event, a bool (Stage.__bool__ is a Python call).
        transform = bool(self.hooks.transform_chunk.impls)
        # Token counts: OpenAI's are in one chunk (`include_usage`); Anthropic's come in
        # two events (message_start: input, message_delta: output).
        if ex.api == "anthropic":
            marker, note_usage = b'"usage"', self._note_anthropic_usage
        else:
            marker, note_usage = b'"prompt_tokens"', self._note_usage
        batch: list[bytes] | None = first
        # A cache asked for this stream (hapax_cache_lookup set a byte budget): keep the
        # events, and offer a completed stream to hapax_cache_store.
        budget: int | None = ex.state.get("cache_stream")
        kept: list[bytes] = []
        next_batch = events.__anext__
        try:
            while True:
                if batch is None:
                    if deadline < 0 and time.perf_counter() > -deadline:
                        raise UpstreamError("stream cut: deadline")  # reported as such below
                    try:
                        batch = await next_batch()
                    except StopAsyncIteration:
                        if budget is not None:
                            await self._offer_stream(ex, kept, attempt)
                        return
                if transform:
                    batch = await self._transform_events(ex, batch)
                for ev in batch:
                    if marker in ev:
                        note_usage(ex, ev)
                if budget is not None:
                    kept += batch
                    budget -= sum(map(len, batch))
                    if budget < 0:  # too big to cache: stop keeping it
                        budget, kept = None, []
                yield batch
                batch = None
        except UpstreamError as cut:
            exc = cut
            if expired or (deadline < 0 and time.perf_counter() > -deadline):
                exc = DeadlineExceeded(f"the request's deadline of "
                                       f"{abs(deadline) - ex.started:.3g}s passed mid-stream")
            ex.error = exc.message
            attempt.error = exc.message
            self.metrics.upstream_errors.inc((attempt.target.provider, exc.code or "error"))
            yield [stream_error_event(ex, exc)]
        except (PluginError, RequestError) as exc:
            # A hapax_transform_chunk implementation failed: same in-band ending.
            if isinstance(exc, PluginError):
                log.error("request %s: %s", ex.request_id, exc, exc_info=exc.__cause__)
                ex.error = str(exc)
                exc = RequestError("internal error in a gateway plugin", code="plugin_error")
            else:
                ex.error = exc.message
            yield [stream_error_event(ex, exc)]
        finally:
            if watched:
                self.deadlines.unwatch(ex)
            attempt.latency = ex.upstream_time = time.perf_counter() - attempt.started

    async def _offer_stream(self, ex: Exchange, events: list[bytes], attempt: Attempt) -> None:
        """A stream ended: a complete one (its terminator last: ``[DONE]``, or
        ``message_stop`` for Anthropic's format) goes to hapax_cache_store as one SSE
        body.  The client already has every event: a failure here is only logged."""
        status = attempt.status or 0
        if not (events and 200 <= status < 300):
            return
        last = event_data(events[-1])
        if ex.api == "anthropic":
            if last is None or b'"message_stop"' not in last:
                return
        elif last != b"[DONE]":
            return
        try:
            await self.hooks.cache_store(ex, Response(status, b"".join(events),
                                                      content_type=b"text/event-stream"))
        except Exception:
            log.exception("request %s: storing the stream failed", ex.request_id)

    @staticmethod
    def _note_usage(ex: Exchange, event: bytes) -> None:
        try:
            obj = orjson.loads(event[event.index(b"{"):])
        except (ValueError, orjson.JSONDecodeError):
            return
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            ex.usage = usage

    @staticmethod
    def _note_anthropic_usage(ex: Exchange, event: bytes) -> None:
        """Merge the usage of an Anthropic ``message_start`` / ``message_delta`` event
        into ``ex.usage`` (OpenAI's fields, as everywhere)."""
        try:
            obj = orjson.loads(event[event.index(b"{"):])
        except (ValueError, orjson.JSONDecodeError):
            return
        if not isinstance(obj, dict):
            return
        message = obj.get("message")
        usage = (message.get("usage") if isinstance(message, dict) else None) \
            or obj.get("usage")
        if not isinstance(usage, dict):
            return
        seen: dict[str, Any] = ex.state.setdefault("hapax.anthropic_usage", {})
        seen.update((k, v) for k, v in usage.items() if v is not None)
        ex.usage = translate.openai_usage(seen)

    async def _transform_events(self, ex: Exchange, events: list[bytes]) -> list[bytes]:
        out = []
        for ev in events:
            start = ev.find(b"{")
            if not ev.startswith(b"data:") or start < 0:
                out.append(ev)
                continue
            try:
                chunk = orjson.loads(ev[start:])
            except orjson.JSONDecodeError:
                out.append(ev)
                continue
            stage = self.hooks.transform_chunk
            chunk = (stage.run(ex, chunk, chain=True) if stage.sync
                     else await stage(ex, chunk, chain=True))
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return out

    # -- gateway endpoints ----------------------------------------------------------

    async def _models(self, ex: Exchange) -> Response:
        principal = await self.hooks.authenticate(ex)
        if principal is None:
            raise AuthenticationError("no authentication plugin accepted the request")
        ex.principal = principal
        aliases = self._routing.aliases() if self._routing is not None else []
        data = [{"id": a, "object": "model", "created": 0, "owned_by": "hapax"}
                for a in aliases if principal.may_use(a)]
        return Response(200, orjson.dumps({"object": "list", "data": data}))

    async def _healthz(self, ex: Exchange) -> Response:
        return Response(200, orjson.dumps({"status": "ok", "version": __version__,
                                           "pid": os.getpid(), "core": IMPLEMENTATION}))

    async def _readyz(self, ex: Exchange) -> Response:
        if self.ready and not self.draining:
            return Response(200, b'{"status":"ready"}')
        return Response(503, b'{"status":"draining"}' if self.draining
                        else b'{"status":"starting"}')

    async def _admin_health(self, ex: Exchange) -> Response:
        """Breakers, load, latency and probe results of every model's targets, as this
        worker sees them (docs/reference/endpoints.md)."""
        return Response(200, orjson.dumps(self.health.report()))

    async def _metrics(self, ex: Exchange) -> Response:
        return Response(200, self.metrics.render(),
                        content_type=b"text/plain; version=0.0.4; charset=utf-8")

    # -- after the response -------------------------------------------------------------

    def finish(self, ex: Exchange) -> None:
        """The response is written (or abandoned): run after-response work off the
        hot path."""
        ex.finished = time.perf_counter()
        self.in_flight -= 1
        (self.loop or asyncio.get_running_loop()).call_soon(self._after_response, ex)

    def _after_response(self, ex: Exchange) -> None:
        if ex.usage is None:
            resp = ex.state.pop("response", None)
            if resp is not None:
                usage = _usage_of(resp)
                if isinstance(usage, dict):
                    ex.usage = translate.openai_usage(usage) if ex.api == "anthropic" \
                        else usage
        if not self._after.impls:  # (not Stage.__bool__: a Python call)
            return
        try:
            pending = self._after.call_sync(ex)
        except Exception:
            log.exception("after-response hook failed for request %s", ex.request_id)
            return
        for coro in pending:
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("after-response hook failed", exc_info=task.exception())


def _usage_of(resp: Response) -> Any:
    """The ``usage`` object of a JSON answer: only that value is parsed (the Cython core
    finds it), unless a plugin already parsed the whole body."""
    if resp._json is not None:
        obj = resp._json
        return obj.get("usage") if isinstance(obj, dict) else None
    span = find_value(resp.body, b"usage")
    if span is None:
        return None
    try:
        return orjson.loads(resp.body[span[0]:span[1]])
    except orjson.JSONDecodeError:
        return None


def _outstanding_until_closed(th: TargetHealth,
                              close: Callable[[], None] | None) -> Callable[[], None]:
    """``close`` for a stream, which also ends its attempt's time in flight (once)."""
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            th.outstanding -= 1
        if close is not None:
            close()

    return release
