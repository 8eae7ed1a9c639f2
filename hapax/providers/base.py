"""What a provider adapter is."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hapax.config import ProviderConfig
    from hapax.pipeline.exchange import Exchange
    from hapax.types import Attempt, Response, StreamResponse

__all__ = ["Provider", "ENDPOINTS", "configured_headers"]

#: Operations a front door may ask of a provider.
ENDPOINTS = ("chat/completions", "embeddings")


def configured_headers(config: ProviderConfig) -> list[tuple[bytes, bytes]]:
    """The provider's configured ``headers``, after ``accept-encoding: identity`` unless
    they set that header themselves: the gateway reads what providers answer (checks
    stream events, counts tokens, translates), so it asks for it uncompressed — a request
    without the header leaves the server free to compress (RFC 9110 §12.5.3)."""
    out = [(k.encode(), v.encode()) for k, v in config.headers.items()]
    if not any(k.lower() == "accept-encoding" for k in config.headers):
        out.insert(0, (b"accept-encoding", b"identity"))
    return out


class Provider:
    """Sends requests to one configured provider.

    Subclasses implement :meth:`send`.  ``start`` runs inside the worker's event loop
    before the first request, ``close`` on shutdown.
    """

    kind = "?"
    #: The wire format the provider speaks (``openai`` or ``anthropic``): when it is not
    #: the front door's (``exchange.api``), the gateway translates the request and the
    #: response (hapax.translate).
    api = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config

    async def start(self) -> None:
        """Open resources (connection pools) on the running loop."""

    async def close(self) -> None:
        """Release resources."""

    async def send(self, exchange: Exchange, attempt: Attempt, endpoint: str,
                   body: bytes) -> Response | StreamResponse:
        """Send ``body`` (OpenAI wire format, ``model`` already set for the target) to
        ``endpoint``.

        Returns a :class:`~hapax.types.Response` (any status; provider 4xx bodies pass
        through) or, for a successful streamed request, a
        :class:`~hapax.types.StreamResponse` whose events are complete SSE events.
        Raises :class:`~hapax.errors.UpstreamError` subclasses when the provider cannot
        be reached or answers garbage.
        """
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Gauges for /metrics (e.g. open and idle connections)."""
        return {}
