"""The values that flow through the hooks: who is calling, where a request goes,
what came back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from hapax.errors import RequestError

__all__ = [
    "aclose_events",
    "Principal",
    "Denial",
    "Target",
    "RoutePlan",
    "Attempt",
    "Response",
    "StreamResponse",
    "FinalBatch",
    "ANONYMOUS",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller.

    :param name: shown in logs and metrics (a key's name, never the key).
    :param models: aliases this caller may use; ``None`` means all.
    :param attributes: free-form facts from the authenticator (tenant, roles…).
    """

    name: str
    models: frozenset[str] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models


#: The caller of an open gateway (no `keys` section).
ANONYMOUS = Principal("anonymous")


@dataclass(frozen=True, slots=True)
class Denial:
    """A refusal returned by ``hapax_authorize`` or ``hapax_admit``."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def to_error(self) -> RequestError:
        return RequestError(self.message, status=self.status, type=self.type, code=self.code,
                            headers=list(self.headers))


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: a provider name and the model it knows."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Ordered targets for one request."""

    alias: str
    targets: tuple[Target, ...]


@dataclass(slots=True)
class Attempt:
    """One try at one target (recorded on ``exchange.attempts``).

    ``target``: where it went; ``number`` counts the exchange's attempts from 1;
    ``headers``: extra upstream request headers (``hapax_before_attempt`` adds them);
    ``status``: the provider's status (or the error's, when it failed without one);
    ``error``: what went wrong, without secrets (None when it answered);
    ``started``: ``time.perf_counter()`` when it was sent; ``latency``: seconds until its
    answer (a stream: until it ended); ``reason``: why the request did not keep this
    attempt's answer and retried, failed over or gave up — the status (``"429"``,
    ``"503"``) or the error code (``"upstream_unreachable"``, ``"deadline_exceeded"``…);
    None when the attempt's answer was the answer.
    """

    target: Target
    number: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    started: float = 0.0
    latency: float | None = None
    reason: str | None = None


class Response:
    """A complete response: status, headers, body bytes (JSON parsed on demand)."""

    __slots__ = ("status", "headers", "body", "_json")
    streaming = False

    def __init__(self, status: int, body: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None,
                 content_type: bytes = b"application/json") -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else [(b"content-type", content_type)]
        self._json: Any = None

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None`` when it is not JSON)."""
        if self._json is None:
            try:
                self._json = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                return None
        return self._json

    def set_json(self, obj: Any) -> None:
        """Replace the body with ``obj`` serialised as JSON."""
        self._json = obj
        self.body = orjson.dumps(obj)


class StreamResponse:
    """A streamed response: ``events`` yields lists of complete SSE events (raw bytes,
    each ending with a blank line), a list per upstream read, in order.

    ``close`` (if set) is called exactly once when the stream ends or is abandoned,
    and releases what feeds it (e.g. the upstream connection).
    """

    __slots__ = ("status", "headers", "events", "close")
    streaming = True

    def __init__(self, status: int, events: AsyncIterator[list[bytes]],
                 headers: list[tuple[bytes, bytes]] | None = None,
                 close: Callable[[], None] | None = None) -> None:
        self.status = status
        self.events = events
        self.headers = headers if headers is not None else [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        self.close = close

    async def release(self) -> None:
        """What a consumer does once it stops reading, at the end or midway: call
        ``close`` and close the ``events`` generator (its ``finally`` blocks run now)."""
        if self.close is not None:
            self.close()
        await aclose_events(self.events)


class FinalBatch(list):  # type: ignore[type-arg]
    """A batch of events after which the stream yields nothing more (OpenAI's
    ``[DONE]`` has been seen).  A listener may end its response with it: HTTP/1.1 sends
    the chunked terminator in the same write, instead of a second write once the
    iterator ends (which can wait for the provider to finish its response).  Anything
    that rebuilds a batch (a translation, a chunk transform) yields a plain list, and
    the stream ends the usual way."""

    __slots__ = ()


async def aclose_events(events: AsyncIterator[list[bytes]]) -> None:
    """Close an events iterator if it is an async generator (run its ``finally`` now)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
