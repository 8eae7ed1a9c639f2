"""Records every request into the worker's metrics (off the hot path)."""

from __future__ import annotations

from typing import Any


class Plugin:
    def __init__(self) -> None:
        self.metrics: Any = None

    def hapax_configure(self, gateway: Any) -> None:
        self.metrics = gateway.metrics

    def hapax_after_response(self, exchange: Any) -> None:
        m = self.metrics
        target = exchange.target
        provider = target.provider if target else ""
        route = exchange.route
        m.requests.inc((route, exchange.alias or "", provider, str(exchange.status)))
        m.request_duration.observe((route,), exchange.finished - exchange.started)
        m.gateway_overhead.observe((route,), exchange.gateway_time)
        if exchange.upstream_time:
            m.upstream_latency.observe((provider,), exchange.upstream_time)
        usage = exchange.usage
        if usage:
            alias = exchange.alias or ""
            m.tokens.inc((alias, provider, "prompt"), usage.get("prompt_tokens") or 0)
            m.tokens.inc((alias, provider, "completion"), usage.get("completion_tokens") or 0)
