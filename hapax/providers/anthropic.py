"""Adapter for Anthropic's Messages API (``POST {base_url}/v1/messages``).

It speaks Anthropic's wire format (``api = "anthropic"``): the gateway hands it an
Anthropic request body, translated first when the client came in through the OpenAI
front door (see :mod:`hapax.translate.anthropic` and docs/anthropic.md).  The pooled
connections, TLS and timeouts are the OpenAI adapter's; only the request head, the
status handling and the stream checks differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from hapax import __version__
from hapax._core.sse import SSEDecoder, event_data
from hapax.errors import BadRequest, UpstreamError
from hapax.providers.base import configured_headers
from hapax.providers.openai import OpenAIProvider, error_message
from hapax.providers.upstream import UpstreamResponse
from hapax.translate.anthropic import anthropic_error_body

if TYPE_CHECKING:
    from hapax.config import ProviderConfig
    from hapax.pipeline.exchange import Exchange

__all__ = ["AnthropicProvider", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://api.anthropic.com"

#: The one operation Anthropic's API serves (the gateway's name for it).
_CHAT = "chat/completions"


class AnthropicProvider(OpenAIProvider):
    """``kind: anthropic``: the key goes in ``x-api-key``, ``anthropic-version`` is set
    from the config, and the client's ``anthropic-beta`` header is forwarded."""

    kind = "anthropic"
    api = "anthropic"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        # The SDKs' convention is the root; a base_url ending in /v1 (OpenAI's) works too.
        base = base.removesuffix("/v1")
        super().__init__(name, dataclasses.replace(config, base_url=base))
        url = urlsplit(base)
        host_header = url.netloc.rpartition("@")[2]
        common = [(b"host", host_header.encode("idna" if not host_header.isascii() else "ascii")),
                  (b"user-agent", f"hapax/{__version__}".encode()),
                  (b"content-type", b"application/json"),
                  (b"anthropic-version", config.anthropic_version.encode())]
        if config.api_key is not None:
            common.append((b"x-api-key", config.api_key.reveal().encode()))
        common += configured_headers(config)
        # Built once per provider: the request line and the constant headers.
        self._head = f"POST {url.path}/v1/messages HTTP/1.1\r\n".encode() + b"".join(
            n + b": " + v + b"\r\n" for n, v in common)

    request_id_header = b"request-id"
    ratelimit_prefix = b"anthropic-ratelimit-"

    def _request_head(self, exchange: Exchange, endpoint: str) -> bytes:
        """The Messages request head; the client's ``anthropic-beta`` is forwarded.
        ``endpoint`` must be the chat operation (no embeddings at Anthropic)."""
        if endpoint != _CHAT:
            raise BadRequest(f"provider {self.name!r} (kind anthropic) cannot serve "
                             f"{endpoint}: route this model to an OpenAI-compatible provider",
                             code="unsupported_endpoint")
        beta = exchange.headers.get("anthropic-beta")
        if beta:
            return self._head + b"anthropic-beta: " + beta.encode("latin-1", "replace") + b"\r\n"
        return self._head

    def _stream(self, resp: UpstreamResponse) -> AsyncIterator[list[bytes]]:
        return self._events(resp)

    def _error_body(self, status: int, data: bytes) -> bytes:
        return anthropic_error_body(status, error_message(data))

    async def _events(self, resp: UpstreamResponse) -> AsyncIterator[list[bytes]]:
        """Complete SSE events, a list per upstream read.  The stream must end with
        ``message_stop``: an ``error`` event, an event whose data is not a JSON object, or
        an end without ``message_stop`` raises :class:`UpstreamError`."""
        decoder = SSEDecoder()
        complete = False
        async for piece in resp:
            events = decoder.feed(piece)
            if events:
                for ev in events:
                    complete = self._check(ev) or complete
                yield events
        tail = decoder.flush()
        if tail.strip():
            tail += b"\n\n"
            complete = self._check(tail) or complete
            yield [tail]
        if not complete:
            raise UpstreamError(f"provider {self.name!r} ended the stream without "
                                f"message_stop")

    def _check(self, event: bytes) -> bool:
        """Whether ``event`` is ``message_stop``; raise on an error or a malformed event."""
        data = event_data(event)
        if data is None:
            return False  # a comment or a bare `event:` line: nothing to check
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise UpstreamError(f"provider {self.name!r} sent a malformed stream event: "
                                f"{data[:100].decode('utf-8', 'replace')!r}")
        kind = obj.get("type")
        if kind == "error":
            err = obj.get("error")
            message = err.get("message") if isinstance(err, dict) else None
            if not isinstance(message, str):
                message = data[:200].decode("utf-8", "replace")
            raise UpstreamError(f"provider {self.name!r} sent an error mid-stream: {message}")
        return kind == "message_stop"
