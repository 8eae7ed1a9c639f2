"""The HTTP/3 listener's counters, in a module of their own: every worker registers them
(so they read 0 without HTTP/3) without importing aioquic, and the listener gets the
same families back (``Metrics.add`` is get-or-create)."""

from __future__ import annotations

from dataclasses import dataclass

from hapax.metrics import Counter, Metrics

__all__ = ["H3Counters", "h3_counters"]


@dataclass(frozen=True, slots=True)
class H3Counters:
    early_data: Counter
    handshakes: Counter
    migrations: Counter
    stream_resets: Counter
    refused: Counter


def h3_counters(metrics: Metrics) -> H3Counters:
    """Register (or find) the HTTP/3 counters in ``metrics``."""
    counters = H3Counters(
        early_data=metrics.add(Counter(
            "hapax_http3_early_data_total", "HTTP/3 requests received in 0-RTT early data, "
            "by result (accepted|refused).", ("result",))),
        handshakes=metrics.add(Counter(
            "hapax_http3_handshakes_total", "HTTP/3 (QUIC) handshakes completed, by session "
            "(new|resumed).", ("session",))),
        migrations=metrics.add(Counter(
            "hapax_http3_migrations_total", "HTTP/3 connections that moved to a new client "
            "address (NAT rebinding, network change) and kept going.", ())),
        stream_resets=metrics.add(Counter(
            "hapax_http3_stream_resets_total", "HTTP/3 request streams reset, by who reset "
            "them (client|gateway).", ("by",))),
        refused=metrics.add(Counter(
            "hapax_http3_connections_refused_total", "New HTTP/3 connections refused "
            "because server.tls.max_connections were open.", ())),
    )
    counters.migrations.inc((), 0.0)  # series from the start (they have no labels)
    counters.refused.inc((), 0.0)
    return counters
