"""The exact-match response cache (``models.<alias>.cache``), on the cache hooks.

Key: the request fingerprint (``Gateway.fingerprint``, shared with in-flight dedup: the
route, the alias, the canonical body minus ``fingerprint.ignore``, and the caller's key
name unless ``fingerprint.scope`` is ``global``).  ``stream: true`` is part of the body, so a
streamed and a non-streamed request never share an entry.

Stored: successful (2xx) answers only — a complete response as (status, headers, body);
a stream only once it has ended with ``[DONE]`` (the gateway offers it to
``hapax_cache_store`` as one SSE body), replayed on a hit as the same events.  A hit
calls no provider; ``x-hapax-provider`` still names the provider that served the
original answer.  ``Cache-Control: no-cache`` from the client skips the lookup but stores
the fresh answer; ``no-store`` does neither.  Every response of a cached alias carries
``x-hapax-cache: hit|miss|bypass``.

Memory: one byte-bounded LRU for the whole node (:mod:`hapax._core.shmcache`), in memory
shared by the worker processes (made before they fork), so an answer stored by one worker
is a hit in every other and the node never holds more than ``cache.max_bytes``.

When no alias has a cache, this plugin registers no request hook at all: the gateway's
cache stages are empty and cost nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily

from hapax._core.shmcache import SharedLRU
from hapax.metrics import Counter, Gauge
from hapax.types import Response, StreamResponse, Target

__all__ = ["Plugin", "ENTRY_OVERHEAD"]

#: Room kept for an entry's own record (status, headers, target) when a stream is
#: collected for the cache: a stream bigger than the store minus this is not kept.
ENTRY_OVERHEAD = 256

_HEADER = b"x-hapax-cache"
_HIT, _MISS, _BYPASS = b"hit", b"miss", b"bypass"
_SSE = b"text/event-stream"
_PENDING = f"{__name__}.pending"  # exchange.state: (key, ttl) of an answer to store


def _directives(value: str) -> set[str]:
    """The directive names of a Cache-Control header value (lower case, no arguments)."""
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


async def _replay(body: bytes) -> AsyncIterator[list[bytes]]:
    yield [body]


def _pack(status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes, target: Target,
          stream: bool) -> bytes:
    """One entry as bytes (the shared store holds bytes): a JSON record, NUL, the body.
    orjson escapes control characters, so the record never contains a NUL."""
    record = orjson.dumps([status, stream, target.provider, target.model,
                           [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]])
    return record + b"\0" + body


def _unpack(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, Target, bool]:
    cut = data.index(b"\0")
    status, stream, provider, model, headers = orjson.loads(data[:cut])
    return (status, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            data[cut + 1:], Target(provider, model), stream)


class _StoreCounter:
    """A counter read from the node-wide store: every worker sees the same value, so it is
    reported as is, never added up across workers."""

    kind = "counter"
    labels: tuple[str, ...] = ()

    def __init__(self, name: str, doc: str, read: Any) -> None:
        self.name, self.doc, self.read = name, doc, read

    def collect(self, others: Sequence[Any] = ()) -> Iterator[Any]:
        fam = CounterMetricFamily(self.name, self.doc, labels=())
        fam.add_metric([], float(self.read()))
        yield fam


class _Metrics:
    """The cache's metric families: exposed even without a cached alias (all zero), so
    dashboards and alerts need not know whether a node caches.  Plain counters and
    summed gauges, so a node-wide /metrics adds up the workers."""

    def __init__(self, metrics: Any) -> None:
        self.lru: Any = None
        self.requests = metrics.add(Counter(
            "hapax_cache_requests_total", "Requests for cached model aliases, by alias and "
            "result (hit|miss|bypass).", ("model", "result")))
        metrics.add(_StoreCounter(
            "hapax_cache_evictions_total", "Cached answers evicted to make room (least "
            "recently used first).", lambda: self._read("evictions")))
        # The store is node-wide: each worker reads the same totals (no sum).
        metrics.add(Gauge("hapax_cache_bytes", "Bytes held by the response cache.", (),
                          lambda: {(): self._read("bytes")}, merge="none"))
        metrics.add(Gauge("hapax_cache_entries", "Answers held by the response cache.", (),
                          lambda: {(): self._read("entries")}, merge="none"))

    def _read(self, what: str) -> float:
        lru = self.lru
        if lru is None:
            return 0.0
        return float(len(lru) if what == "entries" else getattr(lru, what))


class _Cache:
    """The request-time half, registered only when some alias is cached."""

    def __init__(self, config: Any, gateway: Any, ttls: dict[str, float],
                 metrics: _Metrics) -> None:
        self.gateway = gateway
        self.ttls = ttls
        self.listed = frozenset(config.models)  # aliases that do not fall back to "*"
        store = getattr(gateway.node, "cache_store", None)
        if store is None:  # one process (no supervisor): the store need not be shared
            store = SharedLRU(config.cache.max_bytes)
        self.lru = metrics.lru = store
        self.requests = metrics.requests

    def _ttl(self, alias: str | None) -> float | None:
        if alias is None:
            return None
        ttl = self.ttls.get(alias)
        if ttl is None and alias not in self.listed:
            ttl = self.ttls.get("*")
        return ttl

    def hapax_cache_lookup(self, exchange: Any) -> Response | StreamResponse | None:
        alias = exchange.alias
        ttl = self._ttl(alias)
        if ttl is None:
            return None
        lookup = True
        cc = exchange.headers.get("cache-control")
        if cc:
            directives = _directives(cc)
            if "no-store" in directives or "no-cache" in directives:
                lookup = False
                self.requests.inc((alias, "bypass"))
                exchange.response_headers.append((_HEADER, _BYPASS))
                if "no-store" in directives:
                    return None
        key = self.gateway.fingerprint(exchange)
        if lookup:
            found = self.lru.get(key, time.monotonic_ns())
            if found is not None:
                self.requests.inc((alias, "hit"))
                exchange.response_headers.append((_HEADER, _HIT))
                status, headers, body, target, stream = _unpack(found)
                exchange.target = target
                if stream:
                    return StreamResponse(status, _replay(body), list(headers))
                return Response(status, body, list(headers))
            self.requests.inc((alias, "miss"))
            exchange.response_headers.append((_HEADER, _MISS))
        exchange.state[_PENDING] = (key, ttl)
        if exchange.stream:
            # Ask the gateway to keep the stream's events, up to what could be stored.
            exchange.state["cache_stream"] = self.lru.max_bytes - ENTRY_OVERHEAD
        return None

    def hapax_cache_store(self, exchange: Any, response: Response) -> None:
        pending = exchange.state.pop(_PENDING, None)
        if pending is None or not 200 <= response.status < 300:
            return
        key, ttl = pending
        headers = tuple(response.headers)
        stream = any(n == b"content-type" and v.startswith(_SSE) for n, v in headers)
        target = exchange.target or Target("cache", exchange.alias or "")
        self.lru.put(key, _pack(response.status, headers, response.body, target, stream),
                     time.monotonic_ns() + int(ttl * 1e9))


class Plugin:
    def __init__(self) -> None:
        self.cache: _Cache | None = None

    def hapax_configure(self, config: Any, gateway: Any) -> None:
        metrics = _Metrics(gateway.metrics)
        ttls = {alias: m.cache.ttl for alias, m in config.models.items() if m.cache is not None}
        if not ttls:
            return
        self.cache = _Cache(config, gateway, ttls, metrics)
        # Registered now, before the gateway resolves its hook stages: with no cached
        # alias the cache stages stay empty and the request path never calls them.
        gateway.pm.register(self.cache, name=f"{__name__}.store")
