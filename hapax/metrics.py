"""Metrics: cheap in-process counters and histograms, exposed in Prometheus text format.

Recording is a dict update (no locks: one event loop per worker); a histogram
observation is one call into the core's log-linear histogram (O(1), no search; see
:mod:`hapax._core.histogram`).  Exposition goes through ``prometheus_client`` (the
standard library for the format: escaping, types, ``# HELP``) with a custom collector,
so the per-request cost stays a few hundred ns.

Under ``--workers N`` each family can also :meth:`export` its state (plain JSON-able
data) and :meth:`collect` the sum of its own state and other workers' exports:
:mod:`hapax.node_metrics` uses that to make /metrics report the whole node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from math import inf
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from hapax._core.histogram import LogHistogram, nearest_bound

__all__ = ["Counter", "Histogram", "Gauge", "Metrics", "LATENCY_BUCKETS", "OVERHEAD_BUCKETS"]

# Exported `le` bounds must be boundaries of the core histogram's buckets (else the
# cumulative counts could not be exact): each is the boundary nearest to the round value
# in the comment.  Whole seconds and 2.5, 0.5, 0.25 are boundaries themselves.

#: Request and upstream latency (seconds): LLM calls take 0.1 s to minutes.
LATENCY_BUCKETS = (
    0.0048828125,  # 5 ms
    0.009765625,  # 10 ms
    0.025390625,  # 25 ms
    0.05078125,  # 50 ms
    0.1015625,  # 100 ms
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    288.0,  # 300 s
)
#: Time spent in the gateway itself (seconds): tens of microseconds to milliseconds.
OVERHEAD_BUCKETS = (
    4.9591064453125e-05,  # 50 µs
    9.918212890625e-05,  # 100 µs
    0.000244140625,  # 250 µs
    0.00048828125,  # 500 µs
    0.0009765625,  # 1 ms
    0.00244140625,  # 2.5 ms
    0.0048828125,  # 5 ms
    0.009765625,  # 10 ms
    0.025390625,  # 25 ms
    0.05078125,  # 50 ms
    0.1015625,  # 100 ms
    0.25, 1.0,
)


class Counter:
    __slots__ = ("name", "doc", "labels", "values")
    kind = "counter"

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, key: tuple[str, ...]) -> float:
        return self.values.get(key, 0.0)

    def export(self) -> list[Any]:
        return [[list(key), value] for key, value in self.values.items()]

    def absorb(self, data: Iterable[Any]) -> None:
        """Add an export (another worker's, or a predecessor's) to this counter."""
        values = self.values
        for key, value in data:
            k = tuple(key)
            values[k] = values.get(k, 0.0) + value

    def collect(self, others: Sequence[Any] = ()) -> Iterator[Any]:
        """The family: this worker's values plus the sum of ``others`` (exports)."""
        values = self.values
        if others:
            merged = Counter(self.name, self.doc, self.labels)
            merged.values = dict(values)
            for data in others:
                merged.absorb(data)
            values = merged.values
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in values.items():
            fam.add_metric(list(key), value)
        yield fam


class Histogram:
    """Latency histogram per label set.  ``bounds`` (seconds) are the exported ``le``
    buckets: each is moved to the nearest boundary of the core histogram's buckets (by
    less than 6.25%; the constants above already are boundaries), which keeps every
    cumulative count exact, also when several workers' histograms are merged."""

    __slots__ = ("name", "doc", "labels", "bounds", "series")
    kind = "histogram"

    def __init__(self, name: str, doc: str, labels: tuple[str, ...],
                 bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.bounds = tuple(sorted({nearest_bound(b) for b in bounds if b != inf}))
        self.series: dict[tuple[str, ...], LogHistogram] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        self.series_for(key).record(value)

    def series_for(self, key: tuple[str, ...]) -> LogHistogram:
        """The histogram of one label set (created empty on first use); callers on a hot
        path may keep it and ``record`` into it directly."""
        h = self.series.get(key)
        if h is None:
            h = self.series[key] = LogHistogram()
        return h

    def count(self, key: tuple[str, ...]) -> int:
        h = self.series.get(key)
        return h.count if h is not None else 0

    def export(self) -> list[Any]:
        return [[list(key), h.counts(), h.sum] for key, h in self.series.items()]

    def absorb(self, data: Iterable[Any]) -> None:
        """Add an export (another worker's, or a predecessor's): counts add exactly."""
        series = self.series
        for key, counts, total in data:
            k = tuple(key)
            h = series.get(k)
            if h is None:
                h = series[k] = LogHistogram()
            h.add_counts(counts, total)

    def collect(self, others: Sequence[Any] = ()) -> Iterator[Any]:
        """The family: this worker's series plus the sum of ``others`` (exports)."""
        series = self.series
        if others:
            merged = Histogram(self.name, self.doc, self.labels, self.bounds)
            for key, h in series.items():
                m = merged.series[key] = LogHistogram()
                m.merge(h)
            for data in others:
                merged.absorb(data)
            series = merged.series
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        bounds = self.bounds
        labels = [repr(b) for b in bounds]
        labels.append("+Inf")
        for key, h in series.items():
            cumulative = h.cumulative((*bounds, inf))
            fam.add_metric(list(key), list(zip(labels, cumulative, strict=True)), h.sum)
        yield fam


class Gauge:
    """A gauge read at scrape time from a callable returning ``{labels: value}``.

    ``merge`` says what the node-wide value is under ``--workers N``: ``"sum"`` (the
    default) adds the workers' readings (each reads its own state: requests in flight,
    pool connections); ``"none"`` takes the answering worker's reading alone, for a
    gauge that already reads node-wide state (e.g. a :class:`~hapax.node.NodeState`
    slot, which every worker sees) and would be counted N times by a sum.
    """

    __slots__ = ("name", "doc", "labels", "read", "merge")
    kind = "gauge"

    def __init__(self, name: str, doc: str, labels: tuple[str, ...],
                 read: Callable[[], dict[tuple[str, ...], float]], *,
                 merge: str = "sum") -> None:
        if merge not in ("sum", "none"):
            raise ValueError(f"Gauge merge must be 'sum' or 'none', not {merge!r}")
        self.name, self.doc, self.labels, self.read = name, doc, labels, read
        self.merge = merge

    def export(self) -> list[Any] | None:
        if self.merge != "sum":
            return None
        return [[list(key), value] for key, value in self.read().items()]

    def absorb(self, data: Iterable[Any]) -> None:
        """Gauges are not carried over from a predecessor: its readings ended with it."""

    def collect(self, others: Sequence[Any] = ()) -> Iterator[Any]:
        values = dict(self.read())
        if self.merge == "sum":
            for data in others:
                for key, value in data or ():
                    k = tuple(key)
                    values[k] = values.get(k, 0.0) + value
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in values.items():
            fam.add_metric(list(key), value)
        yield fam


class Metrics:
    """The metric families of one worker.  Plugins may add their own with :meth:`add`."""

    def __init__(self) -> None:
        self.families: list[Any] = []
        #: Set under ``--workers N`` (hapax.node_metrics): returns the other workers'
        #: latest exports, which :meth:`render` adds to this worker's own state.
        self.peers: Callable[[], Sequence[dict[str, Any]]] | None = None
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
        """Register ``family``; return the family to record into.

        Get-or-create by name: when a family of the same name, kind and labels is
        already registered (a gateway rebuilt by a configuration reload re-adds its
        families to the metrics it carries over), counters and histograms keep the one
        they have, so their totals never go back; a gauge keeps its place but takes the
        new family's reading, which reads the new gateway's state.  Any other family of
        the same name is replaced by the new one.
        """
        for i, known in enumerate(self.families):
            if known.name != family.name:
                continue
            same = (type(known) is type(family) and getattr(known, "kind", None) ==
                    getattr(family, "kind", None) and getattr(known, "labels", None) ==
                    getattr(family, "labels", None))
            if same and isinstance(known, Counter):
                return known
            if same and isinstance(known, Histogram):
                known.bounds = family.bounds  # exported bounds only: the counts are exact
                return known
            if same and isinstance(known, Gauge):
                known.doc, known.read, known.merge = family.doc, family.read, family.merge
                return known
            self.families[i] = family
            return family
        self.families.append(family)
        return family

    def export(self) -> dict[str, Any]:
        """This worker's state, as plain data: ``{name: [kind, data]}`` for every family
        that can be merged across workers (Counter, Histogram, Gauge)."""
        out = {}
        for fam in self.families:
            if isinstance(fam, (Counter, Histogram, Gauge)):
                data = fam.export()
                if data is not None:
                    out[fam.name] = [fam.kind, data]
        return out

    def absorb(self, exported: dict[str, Any]) -> None:
        """Add an :meth:`export` to this worker's counters and histograms (a restarted
        worker carries its predecessor's totals forward, so counters never go back)."""
        for fam in self.families:
            if isinstance(fam, (Counter, Histogram)):
                entry = exported.get(fam.name)
                if entry is not None and entry[0] == fam.kind:
                    fam.absorb(entry[1])

    def render(self, others: Sequence[dict[str, Any]] = ()) -> bytes:
        """The Prometheus text of this worker's families, each summed with the same
        family in ``others`` (other workers' :meth:`export`)."""
        if not others and self.peers is not None:
            others = self.peers()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.families, others))
        return generate_latest(registry)


class _Collector:
    def __init__(self, families: list[Any], others: Sequence[dict[str, Any]]) -> None:
        self.families = families
        self.others = others

    def collect(self) -> Iterator[Any]:
        others = self.others
        for fam in self.families:
            if others and isinstance(fam, (Counter, Histogram, Gauge)):
                parts = []
                for exported in others:
                    entry = exported.get(fam.name)
                    if entry is not None and entry[0] == fam.kind:
                        parts.append(entry[1])
                yield from fam.collect(parts)
            else:
                yield from fam.collect()
