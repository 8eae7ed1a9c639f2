"""Records every request into the worker's metrics (off the hot path).

Per request it bumps the requests counter, three histograms and the two token
counters.  The label tuples and the histogram objects of each (route, alias, provider,
status) seen are kept, so a request costs one lookup instead of building six keys and
finding four series (bounded: aliases are chosen by clients under a ``"*"`` route;
beyond the bound, the keys are built per request as before).
"""

from __future__ import annotations

from typing import Any

#: Label combinations remembered (clients choose aliases under a "*" route).
_MEMO = 4096


class Plugin:
    def __init__(self) -> None:
        self.metrics: Any = None
        self._series: dict[tuple[str, str | None, str, int],
                           tuple[Any, Any, Any, Any, Any, Any]] = {}

    def hapax_configure(self, gateway: Any) -> None:
        self.metrics = gateway.metrics
        self._series = {}

    def _resolve(self, route: str, alias: str, provider: str,
                 status: int) -> tuple[Any, Any, Any, Any, Any, Any]:
        """(requests key, duration histogram, overhead histogram, upstream histogram or
        None, prompt tokens key, completion tokens key)."""
        m = self.metrics
        # No upstream series for requests that never reached a provider.
        upstream = m.upstream_latency.series_for((provider,)) if provider else None
        return ((route, alias, provider, str(status)),
                m.request_duration.series_for((route,)), m.gateway_overhead.series_for((route,)),
                upstream, (alias, provider, "prompt"), (alias, provider, "completion"))

    def hapax_after_response(self, exchange: Any) -> None:
        m = self.metrics
        target = exchange.target
        provider = target.provider if target else ""
        route = exchange.route
        alias = exchange.alias or ""
        memo = (route, alias, provider, exchange.status)
        series = self._series.get(memo)
        if series is None:
            series = self._resolve(route, alias, provider, exchange.status)
            if len(self._series) < _MEMO:
                self._series[memo] = series
        key, duration, overhead, upstream, prompt, completion = series
        values = m.requests.values
        values[key] = values.get(key, 0.0) + 1.0
        total = exchange.finished - exchange.started
        duration.record(total)
        upstream_time = exchange.upstream_time
        overhead.record(max(0.0, total - upstream_time))
        if upstream_time:
            if upstream is None:
                m.upstream_latency.observe((provider,), upstream_time)
            else:
                upstream.record(upstream_time)
        usage = exchange.usage
        if usage:
            values = m.tokens.values
            values[prompt] = values.get(prompt, 0.0) + (usage.get("prompt_tokens") or 0)
            values[completion] = values.get(completion, 0.0) + (
                usage.get("completion_tokens") or 0)
