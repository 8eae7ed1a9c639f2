"""Adapter for OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp…).

Streams are checked as they are relayed, so that a broken one can never reach the client
looking complete: an event whose data is neither a JSON object nor ``[DONE]``, an error
event from the provider, or the stream ending without ``data: [DONE]`` raises
:class:`~hapax.errors.UpstreamError` (the gateway fails over before the first event,
and ends the stream with an in-band error event after it).  Events after ``[DONE]`` are
dropped.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from hapax import __version__
from hapax._core.sse import SSEDecoder, event_data
from hapax.errors import UpstreamError
from hapax.providers.base import ENDPOINTS, Provider, configured_headers
from hapax.providers.upstream import UpstreamPool, UpstreamResponse
from hapax.types import FinalBatch, Response, StreamResponse

if TYPE_CHECKING:
    from hapax.config import ProviderConfig
    from hapax.pipeline.exchange import Exchange
    from hapax.types import Attempt

__all__ = ["OpenAIProvider", "UpstreamStatusError", "error_message"]


class UpstreamStatusError(UpstreamError):
    """The provider answered 5xx (or another status that is not a usable answer).

    ``retry_headers`` are the provider's ``retry-after``/``retry-after-ms`` headers: the
    executor's backoff honours them, and they reach the client with the error.
    """

    def __init__(self, message: str, upstream_status: int,
                 retry_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message, headers=retry_headers)
        self.upstream_status = upstream_status
        self.retry_headers = retry_headers or []


def error_message(body: bytes) -> str:
    """The message of an error body in OpenAI's (or a similar) envelope, else its text."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text or "(empty body)"
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"][:500]
    if isinstance(err, str):
        return err[:500]
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        return obj["message"][:500]
    return body[:200].decode("utf-8", "replace")


_RETRY_HEADERS = (b"retry-after", b"retry-after-ms")


class OpenAIProvider(Provider):
    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        assert config.base_url
        url = urlsplit(config.base_url)
        self.tls = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.tls else 80)
        prefix = url.path.rstrip("/")
        host_header = url.netloc.rpartition("@")[2]
        common = [(b"host", host_header.encode("idna" if not host_header.isascii() else "ascii")),
                  (b"user-agent", f"hapax/{__version__}".encode()),
                  (b"content-type", b"application/json")]
        if config.api_key is not None:
            common.append((b"authorization", b"Bearer " + config.api_key.reveal().encode()))
        common += configured_headers(config)
        head = b"".join(n + b": " + v + b"\r\n" for n, v in common)
        # The request line and the constant headers are built once per provider.
        self._heads = {ep: f"POST {prefix}/{ep} HTTP/1.1\r\n".encode() + head for ep in ENDPOINTS}
        self.pool: UpstreamPool | None = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def start(self) -> None:
        cfg = self.config
        self.pool = UpstreamPool(
            self.name, self.host, self.port, ssl_context=self._ssl_context(),
            max_connections=cfg.pool.max_connections, connect_timeout=cfg.timeouts.connect,
            first_byte_timeout=cfg.timeouts.first_byte, idle_timeout=cfg.timeouts.idle,
            keepalive_timeout=cfg.pool.idle_timeout)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def stats(self) -> dict[str, int]:
        if self.pool is None:
            return {}
        return {"open": self.pool.open_connections, "idle": self.pool.idle_connections}

    #: The provider's own request id header (relayed as ``x-upstream-request-id``) and the
    #: prefix of its rate-limit headers (relayed with a 4xx, with ``retry-after``).
    request_id_header = b"x-request-id"
    ratelimit_prefix = b"x-ratelimit-"

    def _request_head(self, exchange: Exchange, endpoint: str) -> bytes:
        """Request line and constant headers for ``endpoint``."""
        return self._heads[endpoint]

    def _stream(self, resp: UpstreamResponse) -> AsyncIterator[list[bytes]]:
        """The checked events of a streamed answer."""
        return _relay(resp, self.name)

    def _error_body(self, status: int, data: bytes) -> bytes:
        """An error body that is not JSON, put in the provider's own error envelope."""
        return orjson.dumps({"error": {"message": error_message(data), "type":
                             "invalid_request_error", "code": None, "param": None}})

    async def send(self, exchange: Exchange, attempt: Attempt, endpoint: str,
                   body: bytes) -> Response | StreamResponse:
        head = self._request_head(exchange, endpoint)
        if attempt.headers:
            head += b"".join(n + b": " + v + b"\r\n" for n, v in attempt.headers)
        if exchange.stream:
            head += b"accept: text/event-stream\r\n"
        assert self.pool is not None, "provider not started"
        # join, not one %-format of head and body: ~60 ns less per request.
        resp = await self.pool.request(
            b"".join((head, b"content-length: %d\r\n\r\n" % len(body), body)))
        status = resp.status
        # The two headers relayed, found in one pass (the first of each counts).
        ctype = upstream_id = None
        id_header = self.request_id_header
        for n, v in resp.headers:
            if n == b"content-type":
                if ctype is None:
                    ctype = v
            elif n == id_header and upstream_id is None:
                upstream_id = v
        headers = [(b"content-type", ctype or b"application/json")]
        if upstream_id:
            headers.append((b"x-upstream-request-id", upstream_id))
        if status >= 400:
            # A provider's back-off advice reaches the client (SDKs honour it).
            headers += [(n, v) for n, v in resp.headers
                        if n in _RETRY_HEADERS or n.startswith(self.ratelimit_prefix)]
        if 200 <= status < 300 and exchange.stream:
            ctype = headers[0][1]
            if ctype.startswith(b"text/event-stream"):
                return StreamResponse(status, self._stream(resp), headers, close=resp.close)
            # The provider answered a streamed request with one body: pass it on as is.
        try:
            data = await resp.read()
        except BaseException:
            resp.close()
            raise
        if status >= 500 or status < 200 or 300 <= status < 400:
            raise UpstreamStatusError(f"provider {self.name!r} answered {status}: "
                                      f"{error_message(data)}", status,
                                      [(n, v) for n, v in resp.headers if n in _RETRY_HEADERS])
        if status >= 400 and not data.lstrip().startswith(b"{"):
            data = self._error_body(status, data)
            headers[0] = (b"content-type", b"application/json")
        return Response(status, data, headers)


async def _relay(resp: UpstreamResponse, provider: str) -> AsyncIterator[list[bytes]]:
    """Complete SSE events, a list per upstream read, as they arrive, checked (see the
    module docstring).  Nothing is JSON-parsed unless it looks like an error."""
    decoder = SSEDecoder()
    feed = decoder.feed
    async for piece in resp:
        events = feed(piece)
        if not events:
            continue
        for event in events:
            # The usual chunk, a JSON object whose first key is not "error" (nor "object",
            # as in vLLM's old error form): indexing costs ~65 ns an event, method calls
            # three times that (benchmarks/test_bench_upstream.py::test_stream_checks).
            if event[-3] == 0x7D and event[:7] == b"data: {" and event[8] not in b"eo ":
                continue
            i = events.index(event)  # an equal event before would have raised or ended it
            try:
                done = _check(event, provider)
            except UpstreamError:
                if i:
                    yield events[:i]  # what came before the bad event is good
                raise
            if done:  # [DONE]: the stream is complete
                yield FinalBatch(events[:i + 1])
                await _drain(resp)
                return
        yield events
    tail = decoder.flush()
    if tail.strip() and _check(tail + b"\n\n", provider):  # "[DONE]" without a blank line
        yield [tail + b"\n\n"]
        return
    raise UpstreamError(f"stream from provider {provider!r} ended without its final DONE event")


def _check(event: bytes, provider: str) -> bool:
    """True for ``data: [DONE]``; raises UpstreamError for an event that is malformed or
    reports an error; False for any other event (comments and named events included)."""
    data = event_data(event)
    if event.startswith((b"event: error\n", b"event:error\n")):
        raise UpstreamError(f"provider {provider!r} sent an error in its stream: "
                            f"{error_message(data or b'')}")
    if data is None:
        return False  # a comment (": keep-alive") or a named event without data
    data = data.strip()
    if data == b"[DONE]":
        return True
    if not (data.startswith(b"{") and data.endswith(b"}")):
        raise UpstreamError(f"provider {provider!r} sent a malformed stream event: "
                            f"{_snippet(data)}")
    if b'"error"' in data[:32]:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {provider!r} sent a malformed stream event: "
                                f"{_snippet(data)}") from None
        if isinstance(obj, dict) and (obj.get("error") or obj.get("object") == "error"):
            raise UpstreamError(f"provider {provider!r} sent an error in its stream: "
                                f"{error_message(data)}")
    return False


def _snippet(data: bytes) -> str:
    """The start of a bad event, for the error message (provider output, not a secret)."""
    text = data[:80].decode("utf-8", "replace")
    return repr(text + ("…" if len(data) > 80 else ""))


#: How long what follows ``[DONE]`` may take to end before the connection is dropped.
_DRAIN_GRACE = 1.0


async def _drain(resp: UpstreamResponse) -> None:
    """Read what follows ``[DONE]`` to the end of the response (usually only the chunked
    terminator, so the connection is reused), discarding it.  A provider that keeps the
    response open after ``[DONE]`` must not hold the client's complete stream open:
    after ``_DRAIN_GRACE`` its connection is dropped instead."""
    if resp.done:
        return
    try:
        async with asyncio.timeout(_DRAIN_GRACE):
            async for _ in resp:
                pass
    except (UpstreamError, TimeoutError):
        resp.close()
