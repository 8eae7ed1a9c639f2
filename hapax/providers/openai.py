"""Adapter for OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp…)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from hapax import __version__
from hapax._core.sse import SSEDecoder
from hapax.errors import UpstreamError
from hapax.providers.base import ENDPOINTS, Provider
from hapax.providers.upstream import UpstreamPool, UpstreamResponse
from hapax.types import Response, StreamResponse

if TYPE_CHECKING:
    from hapax.config import ProviderConfig
    from hapax.pipeline.exchange import Exchange
    from hapax.types import Attempt

__all__ = ["OpenAIProvider", "UpstreamStatusError", "error_message"]


class UpstreamStatusError(UpstreamError):
    """The provider answered 5xx (or another status that is not a usable answer)."""

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


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


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


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
        common += [(k.encode(), v.encode()) for k, v in config.headers.items()]
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
            read_timeout=cfg.timeouts.read, idle_timeout=cfg.pool.idle_timeout)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def stats(self) -> dict[str, int]:
        if self.pool is None:
            return {}
        return {"open": self.pool.open_connections, "idle": self.pool.idle_connections}

    async def send(self, exchange: Exchange, attempt: Attempt, endpoint: str,
                   body: bytes) -> Response | StreamResponse:
        head = self._heads[endpoint]
        if attempt.headers:
            head += b"".join(n + b": " + v + b"\r\n" for n, v in attempt.headers)
        if exchange.stream:
            head += b"accept: text/event-stream\r\n"
        assert self.pool is not None, "provider not started"
        resp = await self.pool.request(b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
        status = resp.status
        headers = [(b"content-type", _header(resp.headers, b"content-type")
                    or b"application/json")]
        upstream_id = _header(resp.headers, b"x-request-id")
        if upstream_id:
            headers.append((b"x-upstream-request-id", upstream_id))
        if status >= 400:
            # A provider's back-off advice reaches the client (SDKs honour it).
            headers += [(n, v) for n, v in resp.headers
                        if n in _RETRY_HEADERS or n.startswith(b"x-ratelimit-")]
        if 200 <= status < 300 and exchange.stream:
            ctype = headers[0][1]
            if ctype.startswith(b"text/event-stream"):
                return StreamResponse(status, _relay(resp), headers, close=resp.close)
            # The provider answered a streamed request with one body: pass it on as is.
        try:
            data = await resp.read()
        except BaseException:
            resp.close()
            raise
        if status >= 500 or status < 200 or 300 <= status < 400:
            raise UpstreamStatusError(f"provider {self.name!r} answered {status}: "
                                      f"{error_message(data)}", status)
        if status >= 400 and not data.lstrip().startswith(b"{"):
            data = orjson.dumps({"error": {"message": error_message(data), "type":
                                 "invalid_request_error", "code": None, "param": None}})
            headers[0] = (b"content-type", b"application/json")
        return Response(status, data, headers)


async def _relay(resp: UpstreamResponse) -> AsyncIterator[list[bytes]]:
    """Complete SSE events, a list per upstream read, as they arrive."""
    decoder = SSEDecoder()
    feed = decoder.feed
    async for piece in resp:
        events = feed(piece)
        if events:
            yield events
    tail = decoder.flush()
    if tail.strip():
        yield [tail + b"\n\n"]
