"""Metrics: cheap in-process counters and histograms, exposed in Prometheus text format.

Recording is a dict update (no locks: one event loop per worker).  Exposition goes
through ``prometheus_client`` (the standard library for the format: escaping, types,
``# HELP``) with a custom collector, so the per-request cost stays a few hundred ns.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

__all__ = ["Counter", "Histogram", "Gauge", "Metrics", "LATENCY_BUCKETS", "OVERHEAD_BUCKETS"]

#: Request and upstream latency (seconds): LLM calls take 0.1 s to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
#: Time spent in the gateway itself (seconds): tens of microseconds to milliseconds.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0)


class Counter:
    __slots__ = ("name", "doc", "labels", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, key: tuple[str, ...]) -> float:
        return self.values.get(key, 0.0)

    def collect(self) -> Iterator[Any]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            fam.add_metric(list(key), value)
        yield fam


class Histogram:
    __slots__ = ("name", "doc", "labels", "bounds", "series")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...],
                 bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        # per label set: [count per bucket..., +Inf count, sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value

    def count(self, key: tuple[str, ...]) -> int:
        s = self.series.get(key)
        return int(sum(s[:-1])) if s else 0

    def collect(self) -> Iterator[Any]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, s in self.series.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip(self.bounds, s, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            cumulative += s[len(self.bounds)]
            buckets.append(("+Inf", cumulative))
            fam.add_metric(list(key), buckets, s[-1])
        yield fam


class Gauge:
    """A gauge read at scrape time from a callable returning ``{labels: value}``."""

    __slots__ = ("name", "doc", "labels", "read")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...],
                 read: Callable[[], dict[tuple[str, ...], float]]) -> None:
        self.name, self.doc, self.labels, self.read = name, doc, labels, read

    def collect(self) -> Iterator[Any]:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.read().items():
            fam.add_metric(list(key), value)
        yield fam


class Metrics:
    """The metric families of one worker.  Plugins may add their own with :meth:`add`."""

    def __init__(self) -> None:
        self.families: list[Any] = []
        self.requests = self.add(Counter(
            "hapax_requests_total", "Requests answered, by route, model alias, provider "
            "and status.", ("route", "model", "provider", "status")))
        self.request_duration = self.add(Histogram(
            "hapax_request_duration_seconds", "Total time from request to the end of the "
            "response, by route.", ("route",)))
        self.upstream_latency = self.add(Histogram(
            "hapax_upstream_latency_seconds", "Time spent waiting on the provider, by "
            "provider.", ("provider",)))
        self.gateway_overhead = self.add(Histogram(
            "hapax_gateway_overhead_seconds", "Time spent in the gateway itself (total minus "
            "upstream), by route.", ("route",), OVERHEAD_BUCKETS))
        self.tokens = self.add(Counter(
            "hapax_tokens_total", "Tokens reported by providers, by model alias, provider and "
            "direction (prompt|completion).", ("model", "provider", "direction")))
        self.upstream_errors = self.add(Counter(
            "hapax_upstream_errors_total", "Upstream failures, by provider and kind.",
            ("provider", "kind")))

    def add(self, family: Any) -> Any:
        self.families.append(family)
        return family

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.families))
        return generate_latest(registry)


class _Collector:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        for fam in self.families:
            yield from fam.collect()
