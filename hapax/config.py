"""pipeline.yaml -> frozen, validated configuration objects.

Load with :func:`load` (a file) or :func:`from_dict`.  Every problem is reported with
the file, the key path (``models.gpt-4o.targets[1].provider``) and what was expected;
all problems are collected before :class:`~hapax.errors.ConfigError` is raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from hapax._schema import (
    INVALID,
    Ctx,
    Secret,
    build,
    conv_bool,
    conv_duration,
    conv_enum,
    conv_int,
    conv_list,
    conv_map,
    conv_secret,
    conv_section,
    conv_size,
    conv_str,
    interpolate,
    setting,
)
from hapax.errors import ConfigError

__all__ = [
    "Config",
    "ServerConfig",
    "TLSConfig",
    "Limits",
    "AccessLogConfig",
    "ProviderConfig",
    "ProviderTimeouts",
    "PoolConfig",
    "ModelConfig",
    "TargetConfig",
    "BreakerConfig",
    "HealthCheckConfig",
    "BALANCE_STRATEGIES",
    "KeyConfig",
    "Secret",
    "load",
    "loads",
    "from_dict",
    "default_config",
    "PROVIDER_KINDS",
]

#: Provider kinds known to the built-in adapters.  Plugins may register more.
PROVIDER_KINDS = ("openai", "anthropic", "mock")


def _conv_shed_delay(value: Any, path: str, ctx: Ctx) -> Any:
    if value is False or value == "off" or value == 0:
        return 0.0  # YAML 1.1 reads a bare `off` as false
    return conv_duration(value, path, ctx)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Limits that protect the gateway from clients."""

    max_body: int = setting("Largest request body accepted; larger ones get 413.",
                            conv_size, 4 * 1024 * 1024, shown_default="4MiB")
    max_header: int = setting("Largest request head (request line + headers); larger gets 431.",
                              conv_size, 64 * 1024, shown_default="64KiB")
    header_timeout: float = setting("Time a client has to send a complete request head "
                                    "once it started one (408 after).",
                                    conv_duration, 10.0, shown_default="10s")
    body_timeout: float = setting("Longest pause allowed while a request body is arriving "
                                  "(408 after).", conv_duration, 30.0, shown_default="30s")
    keepalive: float = setting("How long an idle keep-alive connection is kept open.",
                               conv_duration, 75.0, shown_default="75s")
    send_timeout: float = setting("Longest time a client may leave a response unread (a stalled "
                                  "reader is disconnected after it).",
                                  conv_duration, 60.0, shown_default="60s")
    max_concurrent: int = setting("Requests in flight per worker beyond which new ones get 503.",
                                  conv_int(1), 10000)
    shed_delay: float = setting(
        "Refuse new requests with 503 `overloaded` while the worker's event loop runs this "
        "late (it is out of CPU: requests queue for it), so the ones it accepts keep their "
        "latency; `off` (or 0) never sheds on it.", _conv_shed_delay, 0.5,
        shown_default="500ms")
    max_pipeline: int = setting("Pipelined requests queued on one connection before the "
                                "gateway stops reading from it.", conv_int(1), 32)


_LOG_FORMAT = conv_enum("json", "text", "off")


def _conv_log_format(value: Any, path: str, ctx: Ctx) -> Any:
    # YAML 1.1 reads a bare `off` as false: take it as the "off" that was written.
    return _LOG_FORMAT("off" if value is False else value, path, ctx)


@dataclass(frozen=True, kw_only=True)
class AccessLogConfig:
    """The access log: one line per request, written after the response."""

    format: str = setting("`json` (one JSON object per line), `text`, or `off`.",
                          lambda v, p, c: _conv_log_format(v, p, c), "json")
    path: str = setting("`-` for standard output, `stderr`, or a file path (appended to).",
                        conv_str(), "-")


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """TLS on the listener (docs/how-to/http3.md): HTTPS over TCP (TLS 1.2+, HTTP/1.1) and,
    with `http3`, HTTP/3 over QUIC (TLS 1.3) on the same port number over UDP.  The files
    are read at start-up and on every reload (a renewed certificate needs no restart)."""

    cert: str = setting("PEM file: the server certificate, then any intermediates.  Relative "
                        "paths are taken from the working directory.", conv_str())
    key: str = setting("PEM file: the certificate's private key (unencrypted).", conv_str())
    http3: bool = setting("Also serve HTTP/3 (QUIC) on UDP, same port, and advertise it to "
                          "HTTP/1.1 clients with `Alt-Svc`.", conv_bool, True)
    max_streams: int = setting("HTTP/3: requests a client may have in flight at once on one "
                               "connection (QUIC's bidirectional stream limit); the idle "
                               "timeout of a connection is `limits.keepalive`.",
                               conv_int(1, 10000), 100)
    max_connections: int = setting("HTTP/3: QUIC connections open at once; a new one beyond "
                                   "is refused at its first packet (CONNECTION_REFUSED), and "
                                   "the client falls back to HTTP/1.1 over TCP.",
                                   conv_int(1), 10000)
    early_data: str = setting(
        "HTTP/3 0-RTT (requests sent before the handshake completes, replayable by "
        "whoever captured them): `off` refuses them with 425 `too_early` (tickets then "
        "offer no early data); `safe` accepts a ticket's early data once — the anti-replay "
        "guard: later connections with the same ticket get 425 for their early requests; "
        "`on` accepts every replay too (dangerous: a replayed POST is a second paid call).",
        conv_enum("off", "safe", "on"), "safe")
    session_tickets: int = setting(
        "HTTP/3: session tickets remembered for resumption (and the anti-replay marks of "
        "their early data); past it the least recently issued or used is forgotten.  0 = "
        "issue none: every connection takes a full handshake.", conv_int(0, 1_000_000),
        10000)
    ticket_lifetime: float = setting(
        "HTTP/3: how long a session ticket may resume a session; a reload or restart "
        "forgets every ticket.", conv_duration, 86400.0, shown_default="24h")


def _conv_tls(value: Any, path: str, ctx: Ctx) -> Any:
    if value is None or value is False or value == "off":
        return None
    return conv_section(TLSConfig)(value, path, ctx)


_conv_tls.section = TLSConfig  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The listener and its worker processes."""

    host: str = setting("Address to listen on.", conv_str(), "127.0.0.1")
    port: int = setting("TCP port (0 picks a free one and logs it).", conv_int(0, 65535), 8080)
    workers: int = setting("Worker processes sharing the port (SO_REUSEPORT) under a supervisor.",
                           conv_int(1, 512), 1)
    backlog: int = setting("Listen backlog per worker socket.", conv_int(1), 2048)
    limits: Limits = setting("Client limits.", conv_section(Limits), default_factory=Limits)
    drain_timeout: float = setting("On SIGTERM, how long in-flight requests (streams included) "
                                   "may take to finish before the worker exits.",
                                   conv_duration, 30.0, shown_default="30s")
    access_log: AccessLogConfig = setting("Access log.", conv_section(AccessLogConfig),
                                          default_factory=AccessLogConfig)
    tls: TLSConfig | None = setting("TLS: HTTPS and HTTP/3 (off without this section).",
                                    _conv_tls, None)


@dataclass(frozen=True, kw_only=True)
class ProviderTimeouts:
    """Upstream timeouts; a request's own deadline is its model's `timeout`."""

    connect: float = setting("Time to open a connection (TCP and TLS) to the provider.",
                             conv_duration, 10.0, shown_default="10s")
    # first_byte and idle are floats once built: __post_init__ fills them (from `read`).
    first_byte: float = setting(
        "Longest wait from sending the request to the response head.  OpenAI, vLLM and "
        "Ollama send the head of a non-streamed answer only once it is fully generated, so "
        "this bounds the whole generation there; for a stream it bounds the queueing and "
        "prompt processing before the stream starts (504 `upstream_timeout`, or failover).",
        conv_duration, None, shown_default="600s")
    idle: float = setting(
        "Longest silence once the response head has arrived: a stalled stream (in-band "
        "error event, or failover before the first event), or a stalled body.  Generous "
        "by default because reasoning models and servers still loading a model may stay "
        "silent for minutes between the head and the first token.",
        conv_duration, None, shown_default="300s")
    read: float | None = setting(
        "Deprecated: sets `first_byte` and `idle` where they are not given (their defaults "
        "apply otherwise).", conv_duration, None)

    def __post_init__(self) -> None:
        # `read` (one timeout for every silence) predates first_byte/idle: keep it working.
        if self.first_byte is None:
            object.__setattr__(self, "first_byte", self.read if self.read is not None else 600.0)
        if self.idle is None:
            object.__setattr__(self, "idle", self.read if self.read is not None else 300.0)


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """The provider's keep-alive connection pool."""

    max_connections: int = setting("Connections open to the provider at once; requests beyond "
                                   "wait for a free one.", conv_int(1), 256)
    idle_timeout: float = setting("Idle pooled connections are closed after this; keep it below "
                                  "the provider's own keep-alive timeout.",
                                  conv_duration, 4.0, shown_default="4s")


def _conv_ratio(value: Any, path: str, ctx: Ctx) -> Any:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return ctx.error(path, f"expected a number above 0 and at most 1 (0.5 = 50%), "
                               f"got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """The circuit breaker of each of the provider's targets (docs/reliability.md): it
    opens after `failures` consecutive failures, or when at least `min_requests` attempts
    in the last `window` failed at `error_rate` or more.  An open target is skipped; after
    `cooldown` it is half-open and lets `half_open_requests` attempts through: a success
    closes it, a failure opens it again for twice as long (up to `max_cooldown`).  Per
    worker."""

    failures: int = setting("Consecutive failed attempts that open the breaker.",
                            conv_int(1, 100000), 5)
    error_rate: float = setting("Share of failed attempts over `window` that opens the breaker "
                                "(0.5 = half of them).", _conv_ratio, 0.5)
    window: float = setting("The sliding window of the error rate.", conv_duration, 30.0,
                            shown_default="30s")
    min_requests: int = setting("Attempts needed in the window before `error_rate` applies.",
                                conv_int(1), 20)
    cooldown: float = setting("How long an open breaker skips the target before it lets "
                              "probe requests through (half-open).  Each failed probe "
                              "doubles it, up to `max_cooldown`; closing resets it.",
                              conv_duration, 30.0, shown_default="30s")
    max_cooldown: float = setting("The longest cooldown after repeated failed probes (at "
                                  "least `cooldown`).", conv_duration, 300.0,
                                  shown_default="5m")
    half_open_requests: int = setting("Attempts let through at once while half-open; their "
                                      "outcome closes or re-opens the breaker.",
                                      conv_int(1, 1000), 1)


def _conv_breaker(value: Any, path: str, ctx: Ctx) -> Any:
    if value is False or value == "off":
        return None  # YAML 1.1 reads a bare `off` as false
    return conv_section(BreakerConfig)(value, path, ctx)


_conv_breaker.section = BreakerConfig  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True)
class HealthCheckConfig:
    """Active health probes: every `interval`, each worker sends `GET {base_url}{path}` to
    the provider (with its API key and headers); a 2xx answer is healthy.  A healthy probe
    half-opens an open breaker; a failed one counts as a failed attempt."""

    interval: float = setting("Time between two probes.", conv_duration, 10.0,
                              shown_default="10s")
    timeout: float = setting("Longest a probe may take (connecting included).", conv_duration,
                             5.0, shown_default="5s")
    path: str = setting("Path probed, after the provider's `base_url`.",
                        conv_str(r"/\S*", "a path starting with /"), "/models")


def _conv_health_check(value: Any, path: str, ctx: Ctx) -> Any:
    if value is None or value is False or value == "off":
        return None
    return conv_section(HealthCheckConfig)(value, path, ctx)


_conv_health_check.section = HealthCheckConfig  # type: ignore[attr-defined]


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """Requests waiting for a provider that is at its `max_concurrent`."""

    size: int = setting("Requests that may wait, across all workers; when full, new ones get "
                        "429 at once with Retry-After.", conv_int(0), 1000)
    timeout: float = setting("Longest wait in the queue; a request that would wait longer "
                             "(estimated from the drain rate) is refused at once.",
                             conv_duration, 30.0, shown_default="30s")


@dataclass(frozen=True, kw_only=True)
class RateLimits:
    """Rate limits: requests and tokens per minute (GCRA: a full minute's quota may be used
    at once, then it refills continuously)."""

    rpm: int | None = setting("Requests per minute.", conv_int(1), None)
    tpm: int | None = setting("Tokens per minute (prompt estimate before the call, corrected "
                              "from the provider's usage after it).", conv_int(1), None)


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """Exact-match response cache for one model alias."""

    ttl: float = setting("How long an answer stays fresh.", conv_duration, 600.0,
                         shown_default="10m")


@dataclass(frozen=True, kw_only=True)
class FingerprintConfig:
    """What makes two requests "the same" (dedup and cache)."""

    ignore: tuple[str, ...] = setting("Top-level request fields that do not count.",
                                      conv_list(conv_str()), ("user", "metadata"),
                                      shown_default="[user, metadata]")
    scope: str = setting("`key`: requests of different gateway keys never share; `global`: "
                         "they do.", conv_enum("key", "global"), "key")


class _MaskedDict(dict[str, str]):
    """Upstream headers: values may carry credentials, so repr shows only the names."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '***'" for k in self) + "}"


def _conv_headers(value: Any, path: str, ctx: Ctx) -> Any:
    out = conv_map(conv_str(what="a non-empty string"))(value, path, ctx)
    return out if out is INVALID else _MaskedDict(out)


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """One upstream provider."""

    kind: str = setting("Adapter: `openai` (any OpenAI-compatible server), `anthropic` "
                        "(Anthropic's Messages API) or `mock` (built-in, answers locally).",
                        conv_str())
    base_url: str | None = setting("Base URL up to and including the API version, e.g. "
                                   "https://api.openai.com/v1 (not used by `mock`); for "
                                   "`anthropic`, the server's root, by default "
                                   "https://api.anthropic.com.",
                                   conv_str(r"https?://[^\s/]+(/\S*)?",
                                            "an http:// or https:// URL"),
                                   None)
    api_key: Secret | None = setting("The provider's API key, normally \"${ENV_VAR}\"; sent as "
                                     "`Authorization: Bearer` (`x-api-key` for `anthropic`).",
                                     conv_secret, None)
    anthropic_version: str = setting("`anthropic` only: the `anthropic-version` header sent "
                                     "with every request.", conv_str(), "2023-06-01")
    headers: dict[str, str] = setting("Extra headers sent with every upstream request (values "
                                      "may be secrets: they are never shown).",
                                      lambda v, p, c: _conv_headers(v, p, c),
                                      default_factory=dict)
    timeouts: ProviderTimeouts = setting("Timeouts.", conv_section(ProviderTimeouts),
                                         default_factory=ProviderTimeouts)
    pool: PoolConfig = setting("Connection pool.", conv_section(PoolConfig),
                               default_factory=PoolConfig)
    verify_tls: bool = setting("Verify the provider's TLS certificate (https only).",
                               conv_bool, True)
    ca_file: str | None = setting("PEM bundle of CAs to trust instead of the system store.",
                                  conv_str(), None)
    # mock only
    chunks: int = setting("`mock` only: number of content chunks in a streamed answer.",
                          conv_int(1, 10000), 4)
    chunk_delay: float = setting("`mock` only: pause between streamed chunks.",
                                 conv_duration, 0.0, shown_default="0s")
    latency: float = setting("`mock` only: time before the first byte of an answer.",
                             conv_duration, 0.0, shown_default="0s")
    dimensions: int = setting("`mock` only: length of embedding vectors (unless the request "
                              "sets `dimensions`).", conv_int(1, 65536), 16)
    max_concurrent: int | None = setting(
        "Requests sent to this provider at once, across all workers of the node; more wait "
        "in the provider's queue.  Unset: no limit.", conv_int(1), None)
    queue: QueueConfig = setting("The provider's request queue (used with `max_concurrent`).",
                                 conv_section(QueueConfig), default_factory=QueueConfig)
    breaker: BreakerConfig | None = setting(
        "Circuit breaker of each target of this provider; `off` disables it.",
        _conv_breaker, default_factory=BreakerConfig)
    health_check: HealthCheckConfig | None = setting(
        "Active health probes; unset: health is judged from live traffic only.",
        _conv_health_check, None)


#: How a group picks among its members (docs/reliability.md#load-balanced-groups).
BALANCE_STRATEGIES = ("weighted", "least_outstanding", "p2c")


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    """One place a model alias can be served from: a target (`provider`, `model`), or a
    group of targets of equal priority (`group`, `balance`) that share the load."""

    provider: str | None = setting("Name of a provider in `providers` (required unless "
                                   "`group` is given).", conv_str(), None)
    model: str | None = setting("Model name sent to the provider (default: the alias itself).",
                                conv_str(), None)
    weight: int = setting("In a group: the member's share of the traffic, relative to the "
                          "others'.", conv_int(1, 1_000_000), 1)
    group: tuple[TargetConfig, ...] | None = setting(
        "Instead of `provider`: targets of equal priority that share the traffic, each a "
        "`{provider, model, weight}` mapping.", lambda v, p, c: _conv_group(v, p, c), None)
    balance: str = setting("With `group`: `weighted` (smooth weighted round-robin), "
                           "`least_outstanding` (fewest requests in flight) or `p2c` (the "
                           "better of two random members by latency and load).",
                           conv_enum(*BALANCE_STRATEGIES), "weighted")

    @property
    def members(self) -> tuple[TargetConfig, ...]:
        """The targets of this entry: the group's members, or the target itself."""
        return self.group if self.group is not None else (self,)


def _conv_target(value: Any, path: str, ctx: Ctx) -> Any:
    """A `targets` entry: a target, or a group (exactly one of `provider`/`group`)."""
    target = conv_section(TargetConfig)(value, path, ctx)
    if target is INVALID:
        return INVALID
    given = value if isinstance(value, dict) else {}
    if target.group is not None:
        extra = [k for k in ("provider", "model", "weight") if k in given]
        if extra:
            return ctx.error(f"{path}.{extra[0]}", "a group entry takes only `group` and "
                             "`balance`: put providers, models and weights on its members")
    elif target.provider is None:
        return ctx.error(f"{path}.provider", "is required: name a provider of `providers` "
                         "(or give `group`, a list of targets)")
    else:
        extra = [k for k in ("weight", "balance") if k in given]
        if extra:
            return ctx.error(f"{path}.{extra[0]}", "only meaningful in a group: write "
                             "`{group: [{provider: a, weight: 3}, ...], balance: ...}`")
    return target


_conv_target.section = TargetConfig  # type: ignore[attr-defined]


def _conv_member(value: Any, path: str, ctx: Ctx) -> Any:
    member = conv_section(TargetConfig)(value, path, ctx)
    if member is INVALID:
        return INVALID
    given = value if isinstance(value, dict) else {}
    for key in ("group", "balance"):
        if key in given:
            return ctx.error(f"{path}.{key}", "groups do not nest: a member is "
                             "`{provider, model, weight}`")
    if member.provider is None:
        return ctx.error(f"{path}.provider", "is required: name a provider of `providers`")
    return member


def _conv_group(value: Any, path: str, ctx: Ctx) -> Any:
    return conv_list(_conv_member, min_items=1)(value, path, ctx)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A model alias that clients put in the `model` field."""

    targets: tuple[TargetConfig, ...] = setting(
        "Ordered targets, each a target or a load-balanced `group`; the first available one "
        "serves the request, the next ones are its failover (docs/reliability.md).",
        conv_list(_conv_target, min_items=1))
    dedup: str = setting("Coalesce identical requests in flight into one upstream call: "
                         "`always`, `deterministic` (only when temperature is 0 or a seed is "
                         "set) or `off`.", conv_enum("always", "deterministic", "off"),
                         "deterministic")
    cache: CacheSettings | None = setting("Exact-match response cache; unset: no caching.",
                                          lambda v, p, c: _conv_cache(v, p, c), None)
    limits: RateLimits | None = setting("Rate limits for this alias, all keys together.",
                                        conv_section(RateLimits), None)
    fingerprint: FingerprintConfig = setting("What counts when comparing requests.",
                                             conv_section(FingerprintConfig),
                                             default_factory=FingerprintConfig)
    timeout: float = setting("Deadline of a request, queueing included.", conv_duration, 600.0,
                             shown_default="600s")
    retries: int = setting("Extra attempts on the same target before failing over to the next "
                           "one (docs/reliability.md).", conv_int(0, 10), 2)
    retry_on: tuple[int, ...] = setting("Upstream statuses that are retried (then failed over); "
                                        "connection errors and timeouts always are.",
                                        conv_list(conv_int(400, 599)),
                                        (429, 500, 502, 503, 504, 529))


def _conv_cache(value: Any, path: str, ctx: Ctx) -> Any:
    if value is False or value == "off":
        return None
    return conv_section(CacheSettings)(value, path, ctx)


_SHA256 = r"[0-9a-fA-F]{64}"


@dataclass(frozen=True, kw_only=True)
class KeyConfig:
    """A gateway API key that clients send as `Authorization: Bearer <key>`."""

    name: str = setting("Name shown in logs and metrics (never the key itself).",
                        conv_str(_NAME, "a name of letters, digits, '.', '_' or '-'"))
    key: Secret | None = setting("The key in clear, normally \"${ENV_VAR}\".", conv_secret, None)
    key_sha256: str | None = setting("Hex SHA-256 of the key, so the file holds no secret "
                                     "(`printf %s KEY | sha256sum`).",
                                     lambda v, p, c: _conv_sha256(v, p, c), None)
    models: tuple[str, ...] = setting("Model aliases this key may use; `\"*\"` for all.",
                                      lambda v, p, c: _conv_models(v, p, c), ("*",),
                                      shown_default='"*"')
    limits: RateLimits | None = setting("Rate limits for this key (all its models together).",
                                        conv_section(RateLimits), None)
    priority: str = setting("Queue priority class: `interactive` before `standard` before "
                            "`batch`; keys of one class share fairly.",
                            conv_enum("interactive", "standard", "batch"), "standard")

    @property
    def digest(self) -> bytes:
        """SHA-256 digest of the key."""
        if self.key is not None:
            return hashlib.sha256(self.key.reveal().encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


def _conv_sha256(value: Any, path: str, ctx: Ctx) -> Any:
    if isinstance(value, str) and re.fullmatch(_SHA256, value):
        return value
    # Never echo the value: a key in clear put here by mistake must not reach a log.
    return ctx.error(path, "expected 64 hex digits: the SHA-256 of the key, not the key "
                           "itself (`printf %s KEY | sha256sum`)")


def _conv_models(value: Any, path: str, ctx: Ctx) -> Any:
    if value == "*":
        return ("*",)
    return conv_list(conv_str())(value, path, ctx)


def _conv_plugin_settings(value: Any, path: str, ctx: Ctx) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return ctx.error(path, "expected a mapping of settings for this plugin (or nothing)")
    return value


@dataclass(frozen=True, kw_only=True)
class CacheStoreConfig:
    """The response cache's memory."""

    max_bytes: int = setting("Memory for cached responses; least recently used answers are "
                             "evicted beyond it.", conv_size, 64 * 1024 * 1024,
                             shown_default="64MiB")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole pipeline.yaml."""

    server: ServerConfig = setting("Listener, limits, workers, access log.",
                                   conv_section(ServerConfig), default_factory=ServerConfig)
    providers: dict[str, ProviderConfig] = setting(
        "Upstream providers by name.", conv_map(conv_section(ProviderConfig),
                                                key=conv_str(_NAME, "a provider name")),
        default_factory=dict)
    models: dict[str, ModelConfig] = setting(
        "Model aliases by name; `\"*\"` catches every alias not listed.",
        conv_map(conv_section(ModelConfig)), default_factory=dict)
    keys: tuple[KeyConfig, ...] | None = setting(
        "Gateway API keys.  Without this section the gateway is open (no authentication).",
        conv_list(conv_section(KeyConfig)), None)
    cache: CacheStoreConfig = setting("The response cache store (shared by the workers).",
                                      conv_section(CacheStoreConfig),
                                      default_factory=CacheStoreConfig)
    plugins: dict[str, dict[str, Any]] = setting(
        "Plugins to load (entry-point name or `module.path`), each with its own settings.",
        conv_map(_conv_plugin_settings), default_factory=dict)
    #: Where the config was read from (not a YAML key).
    source: str = field(default="<config>", compare=False)

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The settings block of plugin ``name`` (empty if not configured)."""
        return self.plugins.get(name) or {}


def _check(cfg: Config, ctx: Ctx) -> None:
    """Cross-field checks that need the whole tree."""
    if cfg.server.tls is not None:
        _check_tls(cfg.server.tls, ctx)
    for name, prov in cfg.providers.items():
        path = f"providers.{name}"
        if prov.kind == "openai" and not prov.base_url:
            ctx.error(f"{path}.base_url", "is required for kind openai "
                                          "(e.g. https://api.openai.com/v1)")
        if prov.kind == "anthropic" and not prov.base_url and prov.api_key is None:
            ctx.error(f"{path}.api_key", "is required for kind anthropic with the default "
                                         "base_url (https://api.anthropic.com): e.g. "
                                         "api_key: \"${ANTHROPIC_API_KEY}\"")
        if prov.base_url and urlsplit(prov.base_url).query:
            ctx.error(f"{path}.base_url", "must not contain a query string")
    for alias, model in cfg.models.items():
        for i, entry in enumerate(model.targets):
            for j, target in enumerate(entry.members):
                if target.provider not in cfg.providers:
                    known = ", ".join(cfg.providers) or "none defined"
                    where = f"models.{alias}.targets[{i}]" + (
                        f".group[{j}]" if entry.group is not None else "")
                    ctx.error(f"{where}.provider",
                              f"unknown provider {target.provider!r} (providers: {known})")
    if cfg.keys is not None:
        names: set[str] = set()
        digests: dict[bytes, str] = {}
        for i, key in enumerate(cfg.keys):
            path = f"keys[{i}]"
            if (key.key is None) == (key.key_sha256 is None):
                ctx.error(path, "give exactly one of `key` or `key_sha256`")
                continue
            if key.name in names:
                ctx.error(f"{path}.name", f"duplicate key name {key.name!r}")
            names.add(key.name)
            if key.digest in digests:
                ctx.error(path, f"same key as {digests[key.digest]!r}")
            digests[key.digest] = key.name
            for j, alias in enumerate(key.models):
                if alias != "*" and alias not in cfg.models and "*" not in cfg.models:
                    ctx.error(f"{path}.models[{j}]", f"unknown model alias {alias!r}")


def _check_tls(tls: TLSConfig, ctx: Ctx) -> None:
    """The certificate and key files exist, parse, and belong together."""
    import ssl

    bad = False
    for name in ("cert", "key"):
        file = getattr(tls, name)
        try:
            with open(file, "rb") as f:
                head = f.read(64 * 1024)
        except OSError as exc:
            ctx.error(f"server.tls.{name}", f"cannot read {file}: {exc.strerror}")
            bad = True
            continue
        if b"-----BEGIN " not in head:
            ctx.error(f"server.tls.{name}", f"{file} is not a PEM file (no -----BEGIN line)")
            bad = True
    if bad:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        # Never echo file contents: the key file holds a secret.
        ctx.error("server.tls", f"cannot use certificate {tls.cert} with key {tls.key}: "
                                f"{exc.reason or exc} (is the key the certificate's, "
                                f"unencrypted, and are both PEM?)")


def from_dict(raw: Any, file: str = "<config>", env: Any = None) -> Config:
    """Validate a parsed YAML document."""
    import os

    ctx = Ctx()
    raw = interpolate(raw, "", ctx, os.environ if env is None else env)
    cfg = build(Config, raw, "", ctx)
    if cfg is not INVALID:  # every field converted: cross-checks can run (and add problems)
        _check(cfg, ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, file)
    return dataclasses.replace(cfg, source=file)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, but a key given twice in one mapping is an error: PyYAML would
    keep the last silently (a second ``gpt-4o:`` under ``models`` replacing the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"duplicate key {key!r}", key_node.start_mark)
                    seen.add(key)
                except TypeError:  # an unhashable (complex) key: PyYAML reports it
                    continue
        return super().construct_mapping(node, deep)


def loads(text: str, file: str = "<config>", env: Any = None) -> Config:
    """Parse and validate YAML text."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"{where}invalid YAML: {problem}")], file) from None
    return from_dict(raw, file, env)


def load(path: str | Path, env: Any = None) -> Config:
    """Read and validate a pipeline.yaml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror}")], str(p)) from None
    return loads(text, str(p), env)


DEFAULT_YAML = """\
# Hapax built-in default: a local mock provider, no key, no network.
server: {host: 127.0.0.1, port: 8080}
providers:
  mock: {kind: mock}
models:
  "*": {targets: [{provider: mock}]}
"""


def default_config() -> Config:
    """The built-in default used by `hapax serve` with no file."""
    return loads(DEFAULT_YAML, "<built-in default>")

