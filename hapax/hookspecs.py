"""Every Hapax hook, in the order a request meets them.

A plugin is any module, class (instantiated once per gateway) or object with functions
named after these hooks (the ``hapax_`` prefix is enough;
``@hapax.pipeline.hooks.hookimpl`` adds options such as ``tryfirst``).
An implementation may accept any subset of a hook's arguments, by name.  Request-path
hooks may be ``async def``; Hapax awaits them.  A function whose name starts with
``hapax_`` but matches no hook below is an error at start-up (it is a typo).

Implementations run last-registered first: third-party plugins before the built-in
ones, so a plugin can answer a *first result* hook before the default does.  A hook
marked *first result* stops at the first implementation that returns something other
than ``None``; the others run every implementation.

Errors: an implementation that wants the client to get an error raises a
:class:`hapax.errors.RequestError` (or returns a :class:`hapax.types.Denial` where the
hook says so); the gateway renders it in the front door's error format.  Any other
exception is a plugin bug: the client gets a 500 and the traceback is logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from hapax.config import Config
    from hapax.pipeline.exchange import Exchange
    from hapax.pipeline.gateway import Gateway
    from hapax.types import Attempt, Denial, Principal, Response, RoutePlan, StreamResponse

hookspec = pluggy.HookspecMarker("hapax")

# -- start-up -----------------------------------------------------------------------


@hookspec
def hapax_configure(config: Config, gateway: Gateway) -> None:
    """Called once the configuration is validated, before the first request.

    :param config: the whole :class:`hapax.config.Config`.
    :param gateway: the :class:`hapax.pipeline.gateway.Gateway` being built; plugins
        may add metric families with ``gateway.metrics.add(...)``.  A plugin finds its own
        settings with ``config.plugin_settings("my-plugin")`` and raises
        :class:`hapax.errors.ConfigError` (paths relative to its block, e.g.
        ``[("patterns[1]", "unknown pattern 'ssn'")]``) when they are wrong; the gateway
        then refuses to start and reports them under ``plugins.<name>``.
    """


@hookspec
def hapax_register_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register provider kinds.

    :param register: ``register(kind, factory)``; ``factory(name, provider_config)``
        returns a :class:`hapax.providers.base.Provider`.  The built-in kinds
        ``openai`` and ``mock`` are registered through this same hook.
    """


# -- request ------------------------------------------------------------------------


@hookspec
def hapax_request_received(exchange: Exchange) -> None:
    """A complete request arrived (head and body), before authentication.

    Good for request ids, early rejection (raise a RequestError) and bookkeeping in
    ``exchange.state``.  All implementations run.
    """


@hookspec(firstresult=True)
def hapax_authenticate(exchange: Exchange) -> Principal | None:
    """Decide who is calling.  *First result.*

    :return: a :class:`hapax.types.Principal`, or ``None`` to let the next
        implementation decide.  Raise :class:`hapax.errors.AuthenticationError` to
        refuse (401).  The built-in implementation checks the gateway keys of
        pipeline.yaml (``Authorization: Bearer``) and admits everyone when there is no
        ``keys`` section.
    """


@hookspec(firstresult=True)
def hapax_authorize(exchange: Exchange, principal: Principal) -> Denial | None:
    """May this principal make this request?  *First result.*

    :return: a :class:`hapax.types.Denial` to refuse (its status and message reach the
        client), or ``None`` to allow.  The built-in implementation enforces each key's
        ``models`` allow-list.
    """


@hookspec
def hapax_transform_request(exchange: Exchange) -> None:
    """Change the request before it is routed: edit ``exchange.json`` in place.

    All implementations run.  When at least one implementation is installed the body
    sent upstream is re-serialised from ``exchange.json``; otherwise the client's bytes
    are forwarded untouched (only ``model`` rewritten).
    """


@hookspec(firstresult=True)
def hapax_route(exchange: Exchange) -> RoutePlan | None:
    """Choose where the request goes.  *First result.*

    :return: a :class:`hapax.types.RoutePlan` (ordered targets), or ``None`` to let the
        next implementation decide.  The built-in implementation maps ``model`` through
        the ``models`` section (404 ``model_not_found`` for an unknown alias).
    """


@hookspec(firstresult=True)
def hapax_admit(exchange: Exchange, plan: RoutePlan) -> Denial | None:
    """Admission control (rate limits, quotas, queues).  *First result.*

    :return: a :class:`hapax.types.Denial` (e.g. 429 with ``Retry-After``) or ``None``.
    """


@hookspec(firstresult=True)
def hapax_cache_lookup(exchange: Exchange) -> Response | StreamResponse | None:
    """Answer from a cache.  *First result.*

    To be offered a streamed answer once it completes, set
    ``exchange.state["cache_stream"]`` to the most bytes you would store.

    :return: a :class:`hapax.types.Response` (or a
        :class:`hapax.types.StreamResponse` replaying a stream) to answer without
        calling a provider, or ``None``.
    """


# -- upstream -----------------------------------------------------------------------


@hookspec
def hapax_before_attempt(exchange: Exchange, attempt: Attempt) -> None:
    """Called before each upstream attempt.  All implementations run.

    ``attempt.headers`` (a list of ``(bytes, bytes)``) may be extended with headers to
    send upstream; ``attempt.target`` says where it goes.
    """


# -- response -----------------------------------------------------------------------


@hookspec
def hapax_transform_response(exchange: Exchange, response: Response) -> None:
    """Change a complete (non-streamed) response before the client gets it.

    Read ``response.json`` and call ``response.set_json(obj)`` to replace the body, or
    edit ``response.headers``.  All implementations run.
    """


@hookspec
def hapax_transform_chunk(exchange: Exchange, chunk: dict[str, Any]) -> dict[str, Any] | None:
    """Change one parsed event of a streamed response (an OpenAI chunk object).

    Return a replacement object, or ``None`` to keep ``chunk`` (edited in place or not).
    Only called, and events only parsed, when at least one implementation exists.
    """


@hookspec
def hapax_cache_store(exchange: Exchange, response: Response) -> None:
    """A successful response is complete: store it if you cache.  All run.

    A stream that ended with ``[DONE]`` comes here too (if ``hapax_cache_lookup`` asked
    for it), as a response whose body is every event and whose content type is
    ``text/event-stream``.
    """


# -- after --------------------------------------------------------------------------


@hookspec
def hapax_after_response(exchange: Exchange) -> None:
    """The response has been written (or the client went away).

    Runs off the hot path, after the client has its answer: usage accounting, audit,
    access log, metrics.  ``exchange.status``, ``exchange.usage``, ``exchange.timings``
    and ``exchange.attempts`` describe what happened.  All implementations run;
    exceptions are logged, never sent to anyone.
    """


#: Hook names in pipeline order (used by the docs test and `hapax plugins`).
HOOKS_IN_ORDER = [
    "hapax_configure",
    "hapax_register_providers",
    "hapax_request_received",
    "hapax_authenticate",
    "hapax_authorize",
    "hapax_transform_request",
    "hapax_route",
    "hapax_admit",
    "hapax_cache_lookup",
    "hapax_before_attempt",
    "hapax_transform_response",
    "hapax_transform_chunk",
    "hapax_cache_store",
    "hapax_after_response",
]
