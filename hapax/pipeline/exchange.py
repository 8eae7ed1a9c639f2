"""The Exchange: one request/response, whatever the protocol, seen by every hook."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson

from hapax.errors import BadRequest

__all__ = ["Exchange", "new_request_id"]

_ID_PREFIX = "req_" + os.urandom(4).hex()
_ids = itertools.count(1)


def new_request_id() -> str:
    """A unique id: a random per-process prefix plus a counter (cheaper than uuid4; the
    counter an ``itertools.count``: half the cost of a global ``+= 1``)."""
    return f"{_ID_PREFIX}{next(_ids):010x}"


def header_safe_id(rid: str) -> str:
    """``rid`` if it can go in a response header as it is — at most 200 printable
    latin-1 characters (a client's id is echoed only if so) — else a cleaned copy: a
    plugin may set any string as ``exchange.request_id``, and one with a line break
    would split the response head, one past latin-1 could not be written at all."""
    if len(rid) <= 200 and rid.isprintable() and (rid.isascii() or max(rid) <= "\xff"):
        return rid
    return "".join(c if c.isprintable() and c <= "\xff" else "?" for c in rid[:200]) \
        or new_request_id()


def _reseed_ids() -> None:  # called in each forked worker
    global _ID_PREFIX, _ids
    _ID_PREFIX = "req_" + os.urandom(4).hex()
    _ids = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


class Exchange:
    """A request on its way through the gateway and what became of it.

    Listener-provided: ``method``, ``path``, ``query``, ``headers`` (lower-case names;
    repeated headers joined with ``", "``), ``body`` (bytes), ``protocol``, ``client``.

    Filled by the pipeline: ``request_id``, ``principal``, ``alias`` (the ``model`` the
    client asked for), ``plan``, ``target`` (what served it), ``stream``, ``status``,
    ``usage`` (``{"prompt_tokens", "completion_tokens", "total_tokens"}`` when known),
    ``attempts``, ``response_headers`` (extra headers for the client), ``fingerprint``,
    ``error`` (message of the error answered, if any), ``deadline`` and the timings
    (``started``, ``upstream_started``, ``upstream_time``, ``finished``).

    ``state`` is a dict for plugins; use your plugin's name as key prefix.
    """

    __slots__ = (
        "method", "path", "query", "headers", "body", "protocol", "client", "request_id",
        "started", "state", "api", "route", "principal", "alias", "plan", "target", "stream",
        "status", "usage", "attempts", "response_headers", "error", "upstream_started",
        "upstream_time", "finished", "disconnected", "keep_alive", "fingerprint", "deadline",
        "_json",
    )

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                 *, query: str | None = None, protocol: str = "http/1.1",
                 client: tuple[str, int] | None = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.protocol = protocol
        self.client = client
        rid = headers.get("x-request-id")
        # A client's id is echoed only if it is short and printable (it lands in logs).
        self.request_id = rid if rid and len(rid) <= 200 and rid.isprintable() else new_request_id()
        self.started = time.perf_counter()
        self.state: dict[str, Any] = {}
        self.api = "openai"
        self.route: str = path
        self.principal: Any = None
        self.alias: str | None = None
        self.plan: Any = None
        self.target: Any = None
        self.stream = False
        self.status = 0
        self.usage: dict[str, int] | None = None
        self.attempts: list[Any] = []
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.error: str | None = None
        self.upstream_started = 0.0
        self.upstream_time = 0.0
        self.finished = 0.0
        self.disconnected = False
        self.keep_alive = True
        #: The request's fingerprint (16 bytes), computed once by
        #: ``Gateway.fingerprint`` when dedup or the cache first asks for it.
        self.fingerprint: bytes | None = None
        #: When the request must be answered by (``time.perf_counter()`` clock): set by
        #: the executor from the model's ``timeout`` and the ``x-hapax-timeout`` header.
        self.deadline = 0.0
        self._json: Any = None

    @property
    def json(self) -> Any:
        """The request body parsed as JSON, once (400 if it is not valid JSON)."""
        if self._json is None:
            try:
                self._json = orjson.loads(self.body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}",
                                 code="invalid_json") from None
        return self._json

    @json.setter
    def json(self, value: Any) -> None:
        self._json = value

    @property
    def gateway_time(self) -> float:
        """Seconds spent in the gateway itself (total minus upstream)."""
        end = self.finished or time.perf_counter()
        return max(0.0, end - self.started - self.upstream_time)

    def __repr__(self) -> str:
        return f"<Exchange {self.request_id} {self.method} {self.path} status={self.status}>"
