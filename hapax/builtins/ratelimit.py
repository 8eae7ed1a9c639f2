"""Rate limits: requests and tokens per minute, per gateway key and per model alias.

Limits come from ``keys[].limits`` (one key, all its models together) and
``models.<alias>.limits`` (one alias, all keys together; the ``"*"`` entry's limits are
shared by every alias it catches).  Each request is charged 1 against every applicable
RPM limit and its estimated tokens against every applicable TPM limit, all or nothing;
over a limit it gets 429 ``rate_limit_exceeded`` with ``Retry-After``.  After the
response, the token charge is corrected from the provider's reported usage.

Every response of a rate-limited key or model carries OpenAI's headers:
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.

The limits live in a :class:`hapax.limiter.Limiter`; :meth:`Plugin.make_limiter` picks
the in-node one (exact across the node's workers).  Without any limit configured the
plugin unregisters itself at start-up: no per-request cost at all.  The limits of each
(key, model) pair are resolved on its first request; with the in-node limiter (or any
with :meth:`~hapax.limiter.Limiter.fast_path`) a request is then one compiled call
(:class:`hapax._core.gcra.GCRAGroup`), headers included, in a synchronous hook: no
coroutine.  Another limiter is awaited through :meth:`~hapax.limiter.Limiter.acquire`
by a companion plugin (``<name>.acquire``) registered at start-up for it.

Settings (``plugins: {hapax.builtins.ratelimit: {...}}``, all optional):
``completion_tokens`` (256) — tokens assumed for the answer when the request sets no
``max_tokens``/``max_completion_tokens``; ``chars_per_token`` (4) — the prompt estimate.
"""

from __future__ import annotations

from typing import Any

from hapax._core.gcra import GCRAGroup
from hapax._core.gcra import duration as _duration
from hapax.errors import ConfigError
from hapax.limiter import Limit, Limiter, LimitState, NodeLimiter
from hapax.metrics import Counter
from hapax.pipeline.hooks import hookimpl
from hapax.types import Denial

__all__ = ["Plugin", "estimate_tokens", "duration"]

NAME = "hapax.builtins.ratelimit"
_STATE = "hapax.ratelimit"  # exchange.state: (the request's _Entry, token estimate)
_UPPER = {"requests": "RPM", "tokens": "TPM"}

# What applies to one (key, model) pair: its limits, the limiter's fast path for them (or
# None: through Limiter.acquire, by _Acquire), and whether any counts tokens.
_Entry = tuple[tuple[Limit, ...], GCRAGroup | None, bool]


_MAX_ESTIMATE = 1 << 62


def estimate_tokens(body: dict[str, Any], chars_per_token: int, completion_default: int) -> int:
    """A cheap upper-ish guess of the tokens a request will use: prompt text length over
    ``chars_per_token``, plus the completion budget it asks for (times ``n``)."""
    chars = 0
    messages = body.get("messages")
    if type(messages) is list:
        # Anthropic's Messages API keeps the system prompt out of `messages`.
        system = body.get("system")
        for m in (messages if system is None else [{"content": system}, *messages]):
            content = m.get("content") if type(m) is dict else None
            if type(content) is str:
                chars += len(content)
            elif type(content) is list:
                for part in content:
                    text = part.get("text") if type(part) is dict else None
                    if type(text) is str:
                        chars += len(text)
        completion = body.get("max_completion_tokens")
        if type(completion) is not int:
            completion = body.get("max_tokens")
        if type(completion) is not int or completion < 0:
            completion = completion_default
        n = body.get("n")
        completion *= n if type(n) is int and n > 0 else 1
    else:  # embeddings: only input
        completion = 0
        inp = body.get("input")
        items = inp if type(inp) is list else [inp]
        for item in items:
            if type(item) is str:
                chars += len(item)
            elif type(item) is int:  # an input given as token ids
                chars += chars_per_token
            elif type(item) is list:
                chars += len(item) * chars_per_token
    # Bounded: a client may ask for any max_tokens (2**64 - 1 included); the limiters
    # count in signed 64-bit integers, and no limit is that high anyway.
    return min(-(-chars // chars_per_token) + completion, _MAX_ESTIMATE)


def duration(ns: int) -> str:
    """OpenAI's (Go's) duration format, rounded up to the millisecond: ``20ms``, ``1s``,
    ``6m0s``, ``1h2m3.5s``."""
    return _duration(ns).decode()


def _limits_of(scope: str, owner: str, cfg: Any) -> tuple[Limit, ...]:
    if cfg is None:
        return ()
    out = []
    if cfg.rpm is not None:
        out.append(Limit(scope, owner, "requests", cfg.rpm))
    if cfg.tpm is not None:
        out.append(Limit(scope, owner, "tokens", cfg.tpm))
    return tuple(out)


class Plugin:
    def __init__(self) -> None:
        self.limiter: Limiter | None = None
        self.by_key: dict[str, tuple[Limit, ...]] = {}
        self.by_alias: dict[str, tuple[Limit, ...]] = {}
        self.catchall: tuple[Limit, ...] = ()
        # key name -> model alias -> _Entry, filled as requests come: the key names and
        # aliases with limits of their own, None for all the others (bounded by config).
        self._entries: dict[str, dict[str | None, _Entry]] = {}
        self._others: dict[str | None, _Entry] = {}
        self.chars_per_token = 4
        self.completion_tokens = 256
        self.rejections: Counter | None = None
        self._fast = True  # the limiter has a fast path (else _Acquire is registered)

    def make_limiter(self, gateway: Any) -> Limiter:
        """The limiter to use; override for another store, e.g. a cluster-wide one
        (called once, in ``hapax_configure``: whether it has a
        :meth:`~hapax.limiter.Limiter.fast_path` decides how requests are admitted)."""
        return NodeLimiter(gateway.node)

    def hapax_configure(self, config: Any, gateway: Any) -> None:
        self._settings(config.plugin_settings(NAME))
        self.by_key = {k.name: lims for k in (config.keys or ())
                       if (lims := _limits_of("key", k.name, k.limits))}
        self.by_alias = {alias: _limits_of("model", alias, m.limits)
                         for alias, m in config.models.items() if alias != "*"}
        star = config.models.get("*")
        self.catchall = _limits_of("model", "*", star.limits) if star is not None else ()
        every = [lim for lims in self.by_key.values() for lim in lims]
        every += [lim for lims in self.by_alias.values() for lim in lims] + list(self.catchall)
        # Registered even without limits, so /metrics always shows the family.
        self.rejections = gateway.metrics.add(Counter(
            "hapax_ratelimit_rejections_total", "Requests refused by a rate limit, by scope "
            "(key|model), key name or model alias, and limit (requests|tokens).",
            ("scope", "name", "limit")))
        if not every:
            # Nothing to limit: leave the request path entirely.
            gateway.pm.unregister(self)
            return
        self.limiter = self.make_limiter(gateway)
        self.limiter.prepare(every)
        self._entries = {name: {} for name in self.by_key}
        self._others = {}
        self._fast = type(self.limiter).fast_path is not Limiter.fast_path
        if not self._fast:
            # A store without a fast path is awaited: an async hook of its own, so the
            # in-node case keeps a sync one (no coroutine per request).
            name = gateway.pm.get_name(self) or NAME
            gateway.pm.register(_Acquire(self), name=f"{name}.acquire")

    def _settings(self, settings: dict[str, Any]) -> None:
        problems = []
        for name in settings:
            if name not in ("completion_tokens", "chars_per_token"):
                problems.append((name, "unknown setting (known: completion_tokens, "
                                       "chars_per_token)"))
        for name, low in (("completion_tokens", 0), ("chars_per_token", 1)):
            value = settings.get(name, getattr(self, name))
            if type(value) is not int or value < low:
                problems.append((name, f"expected an integer >= {low}"))
            else:
                setattr(self, name, value)
        if problems:
            raise ConfigError(problems)

    def _entry(self, name: str, alias: str) -> _Entry:
        per_key = self._entries.get(name, self._others)
        # Every alias the catch-all serves shares one entry: client-chosen names must not
        # grow this cache.
        model = alias if alias in self.by_alias else None
        entry = per_key.get(model)
        if entry is None:
            lims = self.by_key.get(name, ()) + (self.catchall if model is None
                                                else self.by_alias[model])
            assert self.limiter is not None
            fast = self.limiter.fast_path(lims) if lims and self._fast else None
            if lims and self._fast and fast is None:
                raise TypeError(f"{type(self.limiter).__name__}.fast_path returned None: "
                                f"a limiter with a fast path must have one for any limits")
            entry = (lims, fast, any(lim.kind != "requests" for lim in lims))
            per_key[model] = entry
        return entry

    def hapax_admit(self, exchange: Any, plan: Any) -> Denial | None:
        name = exchange.principal.name
        entry = self._entries.get(name, self._others).get(plan.alias)
        if entry is None:
            entry = self._entry(name, plan.alias)
        lims, fast, counts_tokens = entry
        if fast is None:
            return None  # no limit here (or another store: _Acquire charges it)
        # Estimated once, if a TPM limit applies.
        tokens = estimate_tokens(exchange.json, self.chars_per_token,
                                 self.completion_tokens) if counts_tokens else 0
        refused = fast.charge(tokens, exchange.response_headers)
        if refused is not None:
            lim = lims[refused[0]]
            return self._deny(lim, 1 if lim.kind == "requests" else tokens, refused[1])
        if counts_tokens:
            exchange.state[_STATE] = (entry, tokens)
        return None

    async def _acquire(self, exchange: Any, plan: Any) -> Denial | None:
        """:meth:`hapax_admit` through :meth:`Limiter.acquire` (see :class:`_Acquire`)."""
        name = exchange.principal.name
        entry = self._entries.get(name, self._others).get(plan.alias)
        if entry is None:
            entry = self._entry(name, plan.alias)
        lims, fast, counts_tokens = entry
        if fast is not None or not lims:
            return None
        tokens = estimate_tokens(exchange.json, self.chars_per_token,
                                 self.completion_tokens) if counts_tokens else 0
        charges = [(lim, 1 if lim.kind == "requests" else tokens) for lim in lims]
        assert self.limiter is not None
        states = await self.limiter.acquire(charges)
        exchange.response_headers.extend(_headers(states))
        for st, (_, cost) in zip(states, charges, strict=True):
            if not st.allowed:
                return self._deny(st.limit, cost, st.retry_after_ns)
        if counts_tokens:
            exchange.state[_STATE] = (entry, tokens)
        return None

    def _deny(self, lim: Limit, cost: int, retry_after_ns: int) -> Denial:
        if self.rejections is not None:
            self.rejections.inc((lim.scope, lim.owner, lim.kind))
        what = f"key {lim.owner!r}" if lim.scope == "key" else f"model {lim.owner!r}"
        per = f"{lim.kind} per minute ({_UPPER[lim.kind]})"
        if retry_after_ns < 0:
            return Denial(429, f"Request too large for {what} on {per}: limit {lim.limit}, "
                          f"requested {cost}.", "rate_limit_error", "rate_limit_exceeded")
        return Denial(
            429, f"Rate limit reached for {what} on {per}: limit {lim.limit}, requested "
            f"{cost}. Please try again in {duration(retry_after_ns)}.",
            "rate_limit_error", "rate_limit_exceeded",
            ((b"retry-after", b"%d" % -(-retry_after_ns // 1_000_000_000)),
             (b"retry-after-ms", b"%d" % -(-retry_after_ns // 1_000_000))))

    def hapax_after_response(self, exchange: Any) -> None:
        noted = exchange.state.get(_STATE)
        if noted is None:
            return
        (lims, fast, _), estimate = noted
        usage = exchange.usage
        if not exchange.attempts:
            delta = -estimate  # answered without a provider (e.g. from the cache)
        elif usage:
            total = usage.get("total_tokens")
            if type(total) is not int:
                total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
            delta = total - estimate
        elif exchange.status >= 400:
            delta = -estimate  # no answer: nothing was used
        else:
            return  # an answer without usage (a stream without include_usage): keep it
        if delta:
            if fast is not None:
                fast.adjust(delta)
                return
            assert self.limiter is not None
            for lim in lims:
                if lim.kind != "requests":
                    self.limiter.adjust(lim, delta)


class _Acquire:
    """The admission of a limiter without a fast path: an ``async`` hook, registered next
    to the plugin at start-up only for such a limiter.  Last among the admission hooks,
    where the built-in plugin's own runs (registered first, called last)."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    @hookimpl(trylast=True)
    async def hapax_admit(self, exchange: Any, plan: Any) -> Denial | None:
        return await self.plugin._acquire(exchange, plan)


def _headers(states: list[LimitState]) -> list[tuple[bytes, bytes]]:
    """One set of headers per kind: the refused limit if any, else the tightest."""
    best: dict[str, LimitState] = {}
    for st in states:
        cur = best.get(st.limit.kind)
        if cur is None or (cur.allowed and (not st.allowed or st.remaining < cur.remaining)):
            best[st.limit.kind] = st
    out = []
    for kind, st in best.items():
        out.append((b"x-ratelimit-limit-" + kind.encode(), b"%d" % st.limit.limit))
        out.append((b"x-ratelimit-remaining-" + kind.encode(), b"%d" % st.remaining))
        out.append((b"x-ratelimit-reset-" + kind.encode(), _duration(st.reset_ns)))
    return out
