"""Rate limits (RPM/TPM, per key and per model) through the real server and the openai SDK."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proc import HapaxProcess

from hapax._core import NO_EXTENSIONS
from hapax.builtins import ratelimit
from hapax.builtins.ratelimit import _headers, duration, estimate_tokens
from hapax.limiter import Limit, Limiter, NodeLimiter
from hapax.node import NodeState
from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider, Reply
from hapax.testing.limiters import InterfaceOnly

HELLO = [{"role": "user", "content": "hello there"}]
KEYS = {"alice": "sk-alice-secret", "bob": "sk-bob-secret"}


def keyed(fake: FakeProvider, models: dict[str, Any] | None = None,
          **limits: dict[str, int]) -> dict[str, Any]:
    """Keys alice and bob (with ``limits[name]`` if given) on model ``gpt-test``."""
    cfg = config_for(fake.base_url, models=["gpt-test", "other"])
    cfg["keys"] = [{"name": n, "key": k, **({"limits": limits[n]} if n in limits else {})}
                   for n, k in KEYS.items()]
    for alias, extra in (models or {}).items():
        cfg["models"][alias].update(extra)
    return cfg


def client(gw: GatewayThread, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEYS.get(key, key), max_retries=0)


def chat(c: openai.OpenAI, model: str = "gpt-test", **kw: Any) -> Any:
    """A raw response (headers and parsed body)."""
    return c.chat.completions.with_raw_response.create(model=model, messages=kw.pop(
        "messages", HELLO), **kw)


def metric(gw: GatewayThread, line_start: str) -> float | None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- requests per minute ------------------------------------------------------------------


def test_rpm_exact_at_the_boundary(fake_provider: FakeProvider,
                                   hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, alice={"rpm": 3}))
    with client(gw) as c:
        raws = [chat(c) for _ in range(3)]
        with pytest.raises(openai.RateLimitError) as info:
            chat(c)
    assert len(fake_provider.requests) == 3
    assert [r.parse().choices[0].message.content for r in raws] == \
        ["Fake answer to: hello there"] * 3
    assert [r.headers["x-ratelimit-limit-requests"] for r in raws] == ["3"] * 3
    assert [r.headers["x-ratelimit-remaining-requests"] for r in raws] == ["2", "1", "0"]
    assert raws[0].headers["x-ratelimit-reset-requests"] == "20s"  # one request: 60 s / 3
    assert "x-ratelimit-limit-tokens" not in raws[0].headers  # no TPM limit here

    err = info.value
    assert err.status_code == 429
    assert err.body == {"message": err.body["message"], "type": "rate_limit_error",
                        "param": None, "code": "rate_limit_exceeded"}
    assert "key 'alice'" in err.message and "(RPM): limit 3" in err.message
    headers = err.response.headers
    # The next request is possible one interval (20 s) after the first one.
    assert 1 <= int(headers["retry-after"]) <= 20
    assert 0 < int(headers["retry-after-ms"]) <= 20_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert metric(gw, 'hapax_ratelimit_rejections_total{limit="requests",name="alice",'
                      'scope="key"}') == 1.0


def test_keys_do_not_share_limits(fake_provider: FakeProvider,
                                  hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, alice={"rpm": 1}, bob={"rpm": 1}))
    with client(gw, "alice") as alice, client(gw, "bob") as bob:
        chat(alice)
        with pytest.raises(openai.RateLimitError):
            chat(alice)
        raw = chat(bob)  # alice's exhausted limit is not bob's
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError):
            chat(bob)
    assert len(fake_provider.requests) == 2


def test_key_limit_covers_all_its_models(fake_provider: FakeProvider,
                                         hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, alice={"rpm": 2}))
    with client(gw) as c:
        chat(c, "gpt-test")
        chat(c, "other")
        with pytest.raises(openai.RateLimitError):
            chat(c, "gpt-test")
        with client(gw, "bob") as bob:  # a key without limits: no headers at all
            raw = chat(bob)
    assert not [h for h in raw.headers if h.startswith("x-ratelimit")]


def test_per_model_limit_is_shared_by_keys(fake_provider: FakeProvider,
                                           hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, {"gpt-test": {"limits": {"rpm": 2}}}))
    with client(gw, "alice") as alice, client(gw, "bob") as bob:
        assert chat(alice).headers["x-ratelimit-remaining-requests"] == "1"
        assert chat(bob).headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            chat(alice)
        assert "model 'gpt-test'" in info.value.message
        raw = chat(alice, "other")  # another alias is not limited
    assert "x-ratelimit-limit-requests" not in raw.headers
    assert len(fake_provider.requests) == 3
    assert metric(gw, 'hapax_ratelimit_rejections_total{limit="requests",name="gpt-test",'
                      'scope="model"}') == 1.0


def test_catchall_limit(fake_provider: FakeProvider,
                        hapax_gateway: Callable[..., GatewayThread]) -> None:
    cfg = config_for(fake_provider.base_url, models=["*"])
    cfg["models"]["*"]["limits"] = {"rpm": 2}
    gw = hapax_gateway(cfg)
    with client(gw, "sk-anything") as c:
        chat(c, "model-a")
        chat(c, "model-b")
        with pytest.raises(openai.RateLimitError) as info:
            chat(c, "model-c")  # one limit for every alias "*" catches
    assert "model '*'" in info.value.message


def test_the_tightest_limit_is_in_the_headers(
        fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, {"gpt-test": {"limits": {"rpm": 2}}},
                             alice={"rpm": 10}))
    with client(gw) as c:
        raw = chat(c)
        assert (raw.headers["x-ratelimit-limit-requests"],
                raw.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
        raw = chat(c, "other")
        assert (raw.headers["x-ratelimit-limit-requests"],
                raw.headers["x-ratelimit-remaining-requests"]) == ("10", "8")


# -- tokens per minute -------------------------------------------------------------------------


def usage_reply(total: int) -> Reply:
    return Reply(json={"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                       "model": "gpt-test", "choices": [{
                           "index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "ok"}}],
                       "usage": {"prompt_tokens": total - 1, "completion_tokens": 1,
                                 "total_tokens": total}})


def test_tpm_estimate_then_correction(fake_provider: FakeProvider,
                                      hapax_gateway: Callable[..., GatewayThread]) -> None:
    tpm = 6000  # refills 100 tokens a second
    gw = hapax_gateway(keyed(fake_provider, alice={"tpm": tpm, "rpm": 100}))
    prompt = [{"role": "user", "content": "x" * 400}]  # 100 tokens by the estimate
    # The provider reports more than estimated: the difference is charged afterwards.
    fake_provider.queue(usage_reply(2800), usage_reply(2800))
    with client(gw) as c:
        t0 = time.monotonic()
        first = chat(c, messages=prompt, max_tokens=900)  # estimate: 1000
        assert first.headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(tpm - 1000)
        assert first.headers["x-ratelimit-reset-tokens"] == "10s"  # 1000 of 6000 per minute
        # After the response, the debit becomes the 2800 tokens the provider reported.
        second = chat(c, messages=prompt, max_tokens=900)
        elapsed = time.monotonic() - t0
        left = int(second.headers["x-ratelimit-remaining-tokens"])
        refill = int(elapsed * tpm / 60) + 1
        assert tpm - 2800 - 1000 <= left <= tpm - 2800 - 1000 + refill
        # Now 5600 are used (until they refill, 100 a second): 1000 more are refused, on
        # TPM; the RPM charge is given back.
        with pytest.raises(openai.RateLimitError) as info:
            chat(c, messages=prompt, max_tokens=900)
    assert "(TPM)" in info.value.message and "key 'alice'" in info.value.message
    headers = info.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "98"
    assert int(headers["retry-after"]) >= 1
    assert len(fake_provider.requests) == 2


def test_tpm_request_larger_than_the_limit(fake_provider: FakeProvider,
                                           hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, {"gpt-test": {"limits": {"tpm": 500}}}))
    with client(gw) as c, pytest.raises(openai.RateLimitError) as info:
        chat(c, max_tokens=1000)
    assert "Request too large for model 'gpt-test'" in info.value.message
    assert "retry-after" not in info.value.response.headers  # waiting would not help
    assert fake_provider.requests == []


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n"])
def test_absurd_token_budget_is_too_large_not_an_error(
        fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread],
        field: str) -> None:
    """A budget past signed 64-bit integers (2**64 - 1: JSON parsers still read it as an
    integer) is refused as too large (429), like any request over the limit — not a
    500."""
    gw = hapax_gateway(keyed(fake_provider, {"gpt-test": {"limits": {"tpm": 500}}}))
    huge = 2**64 - 1
    extra = {"max_tokens": 10, "n": huge} if field == "n" else {field: huge}
    with client(gw) as c, pytest.raises(openai.RateLimitError) as info:
        chat(c, **extra)
    assert "Request too large for model 'gpt-test'" in info.value.message
    assert fake_provider.requests == []


def test_failed_upstream_call_refunds_tokens(fake_provider: FakeProvider,
                                             hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, alice={"tpm": 600}))  # 10 tokens a second
    fake_provider.queue(Reply(status=500, json={"error": {"message": "boom"}}))
    with client(gw) as c:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError):
            chat(c, max_tokens=300)  # 300 + 3 (prompt) estimated, then refunded
        raw = chat(c, max_tokens=300)
        left = int(raw.headers["x-ratelimit-remaining-tokens"])
        refill = int((time.monotonic() - t0) * 10) + 1
    assert 600 - 303 <= left <= 600 - 303 + refill


def test_streamed_usage_corrects_tokens(fake_provider: FakeProvider,
                                        hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, alice={"tpm": 600}))
    with client(gw) as c:
        t0 = time.monotonic()
        with c.chat.completions.with_streaming_response.create(
                model="gpt-test", messages=HELLO, max_tokens=200, stream=True,
                stream_options={"include_usage": True}) as raw:
            assert raw.headers["x-ratelimit-remaining-tokens"] == str(600 - 203)
            usage = [ch.usage for ch in raw.parse() if ch.usage][0]
        raw = chat(c, max_tokens=200)
        left = int(raw.headers["x-ratelimit-remaining-tokens"])
        refill = int((time.monotonic() - t0) * 10) + 1
    assert 600 - usage.total_tokens - 203 <= left <= 600 - usage.total_tokens - 203 + refill


def test_cache_hit_gives_tokens_back(fake_provider: FakeProvider,
                                    hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider, {"gpt-test": {"cache": {"ttl": "60s"}}},
                             alice={"tpm": 600}))
    with client(gw) as c:
        t0 = time.monotonic()
        first = chat(c, max_tokens=100).parse()  # 103 estimated, then its usage
        hit = chat(c, max_tokens=100)
        assert hit.headers["x-hapax-cache"] == "hit"
        after = chat(c, max_tokens=90)  # another request: the cache has not seen it
        left = int(after.headers["x-ratelimit-remaining-tokens"])
        refill = int((time.monotonic() - t0) * 10) + 1
    assert len(fake_provider.requests) == 2
    used = first.usage.total_tokens + 93  # the hit's estimate was given back
    assert 600 - used <= left <= 600 - used + refill


# -- no limits, no work -------------------------------------------------------------------------


def test_without_limits_the_plugin_leaves_the_request_path(
        fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(keyed(fake_provider))
    assert "hapax.builtins.ratelimit" not in gw.gateway.hooks.admit.plugins
    assert "hapax.builtins.ratelimit" not in gw.gateway.hooks.after_response.plugins
    with client(gw) as c:
        raw = chat(c)
    assert not [h for h in raw.headers if h.startswith("x-ratelimit")]


def test_unknown_setting_is_a_config_error(fake_provider: FakeProvider) -> None:
    cfg = keyed(fake_provider, alice={"rpm": 1})
    cfg["plugins"] = {"hapax.builtins.ratelimit": {"completion_token": 5}}
    with pytest.raises(Exception, match=r"plugins\.hapax\.builtins\.ratelimit\."
                                        r"completion_token: unknown setting"):
        GatewayThread(cfg).start().stop()


# -- helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (1, "1ms"), (20_000_000, "20ms"), (999_000_001, "1s"), (10**9, "1s"),
    (1_500_000_000, "1.5s"), (7_660_000_000, "7.66s"), (360 * 10**9, "6m0s"),
    (61_250_000_000, "1m1.25s"), (3723 * 10**9, "1h2m3s"),
])
def test_duration_format(ns: int, text: str) -> None:
    assert duration(ns) == text


def test_token_estimate() -> None:
    body = {"messages": [{"role": "system", "content": "a" * 10},
                         {"role": "user", "content": [{"type": "text", "text": "b" * 7},
                                                      {"type": "image_url", "image_url": {}}]}]}
    assert estimate_tokens(body, 4, 256) == 5 + 256  # ceil(17 / 4) + default completion
    assert estimate_tokens({**body, "max_tokens": 10}, 4, 256) == 15
    assert estimate_tokens({**body, "max_completion_tokens": 3, "max_tokens": 10, "n": 2},
                           4, 256) == 11
    assert estimate_tokens({"input": ["abcd", "efgh"]}, 4, 256) == 2  # embeddings
    assert estimate_tokens({"input": "abcdefghi"}, 4, 256) == 3


# -- the fast path and the generic one: the same answers ------------------------------------

T0 = 10**15  # a frozen clock: reset times and Retry-After are exact, not "about"


class FrozenClock(ratelimit.Plugin):
    """The built-in plugin (fast path: NodeLimiter.fast_path) on a clock that stands still."""

    def make_limiter(self, gateway: Any) -> Limiter:
        return NodeLimiter(gateway.node, clock=lambda: T0)


class GenericPath(FrozenClock):
    def make_limiter(self, gateway: Any) -> Limiter:
        return InterfaceOnly(super().make_limiter(gateway))


def transcript(gw: GatewayThread, fake: FakeProvider) -> list[Any]:
    """Status, rate-limit headers and error of a scripted series of requests, and the
    rejection metrics."""
    out: list[Any] = []
    script: list[tuple[str, str, int, Reply | None]] = [
        ("alice", "gpt-test", 100, None), ("alice", "gpt-test", 100, None),
        ("alice", "gpt-test", 100, None),  # the model's RPM: refused, the key's refunded
        ("alice", "other", 2000, None),  # over the key's TPM: too large, never passes
        ("alice", "other", 500, usage_reply(700)),  # corrected from 503 up to 700
        ("alice", "other", 300, None),  # the key's TPM: refused (its RPM refunded)
        ("bob", "gpt-test", 10, None),  # the model's RPM is every key's
        ("bob", "other", 10, None),  # no limit at all: no headers
        ("alice", "other", 1, None), ("alice", "other", 1, None),
        ("alice", "other", 1, None), ("alice", "other", 1, None),  # the key's RPM
    ]
    for key, model, max_tokens, reply in script:
        if reply is not None:
            fake.queue(reply)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "model": model, "messages": HELLO, "max_tokens": max_tokens}).encode(),
            {"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        out.append((resp.status, [(k, v) for k, v in resp.getheaders()
                                  if k.startswith(("x-ratelimit-", "retry-after"))],
                    body.get("error")))
    out.append([metric(gw, f'hapax_ratelimit_rejections_total{{limit="{kind}",name="{name}",'
                           f'scope="{scope}"}}')
                for scope, name in (("key", "alice"), ("model", "gpt-test"))
                for kind in ("requests", "tokens")])
    return out


def test_fast_and_generic_paths_answer_alike(
        fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = keyed(fake_provider, {"gpt-test": {"limits": {"rpm": 2}}},
                alice={"rpm": 6, "tpm": 1000})
    monkeypatch.setenv("HAPAX_BLOCK_PLUGINS", "hapax.builtins.ratelimit")
    runs = {}
    for name, plugin in (("fast", FrozenClock()), ("generic", GenericPath())):
        gw = hapax_gateway(cfg, plugins=[(name, plugin)])
        # In-node: one sync hook (no coroutine); another store: awaited by a companion.
        assert gw.gateway.hooks.admit.plugins == ([name] if name == "fast" else
                                                  [name, f"{name}.acquire"])
        assert gw.gateway.hooks.admit.all_sync is (name == "fast")
        runs[name] = transcript(gw, fake_provider)
        entries = [e for per_key in plugin._entries.values() for e in per_key.values()]
        assert entries and all((e[1] is not None) == (name == "fast") for e in entries)
    assert runs["fast"] == runs["generic"]
    *answers, metrics = runs["fast"]
    assert [status for status, _, _ in answers] == [200, 200, 429, 429, 200, 429, 429, 200,
                                                     200, 200, 200, 429]
    assert dict(answers[0][1]) == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "897", "x-ratelimit-reset-tokens": "6.18s"}
    assert answers[2][1][:3] == [("retry-after", "30"), ("retry-after-ms", "30000"),
                                 ("x-ratelimit-limit-requests", "2")]
    assert answers[3][2]["message"] == ("Request too large for key 'alice' on tokens per "
                                        "minute (TPM): limit 1000, requested 2003.")
    assert answers[7][1] == []
    assert "(TPM): limit 1000, requested 303. Please try again in" in answers[5][2]["message"]
    assert "(RPM): limit 6, requested 1. Please try again in 10s." in answers[11][2]["message"]
    assert metrics == [1.0, 2.0, 2.0, None]


def test_a_fast_path_must_cover_every_limit(
        fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class Partial(NodeLimiter):
        def fast_path(self, limits: Any) -> None:
            return None

    class UsesPartial(ratelimit.Plugin):
        def make_limiter(self, gateway: Any) -> Limiter:
            return Partial(gateway.node)

    monkeypatch.setenv("HAPAX_BLOCK_PLUGINS", "hapax.builtins.ratelimit")
    gw = hapax_gateway(keyed(fake_provider, alice={"rpm": 5}),
                       plugins=[("partial", UsesPartial())])
    with client(gw) as c, pytest.raises(openai.InternalServerError):
        chat(c)  # never let through unlimited
    assert "Partial.fast_path returned None" in caplog.text
    assert fake_provider.requests == []


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(["requests", "tokens"]), min_size=1, max_size=4),
       limits=st.lists(st.integers(1, 40), min_size=4, max_size=4),
       ops=st.lists(st.tuples(st.integers(0, 3 * 10**9), st.integers(0, 50),
                              st.integers(-30, 30)), max_size=25))
def test_fast_path_matches_the_limiter_interface(kinds: list[str], limits: list[int],
                                                 ops: list[tuple[int, int, int]]) -> None:
    """GCRAGroup (both twins) against NodeLimiter.charge + the plugin's generic headers."""
    import importlib

    twins = ["py"] if NO_EXTENSIONS else ["c", "py"]
    lims = [Limit("key" if i % 2 else "model", f"o{i}", kind, limits[i], 60 * 10**9)
            for i, kind in enumerate(kinds)]
    now = [T0]
    generic = NodeLimiter(NodeState(), clock=lambda: now[0])
    generic.prepare(lims)
    groups = []
    for twin in twins:
        mod = importlib.import_module(f"hapax._core._gcra_{twin}")
        node = NodeLimiter(NodeState(), clock=lambda: now[0])
        node.prepare(lims)
        cells = [mod.GCRA(c.counters, c.slot, c.limit, c.period_ns)
                 for c in (node._cells[lim] for lim in lims)]
        groups.append(mod.GCRAGroup(cells, kinds, node.clock))
    for step, tokens, delta in ops:
        now[0] += step
        states = generic.charge([(lim, 1 if lim.kind == "requests" else tokens)
                                 for lim in lims])
        want = _headers(states)
        refused = next(((i, s.retry_after_ns) for i, s in enumerate(states)
                        if not s.allowed), None)
        for group in groups:
            out: list[tuple[bytes, bytes]] = []
            assert group.charge(tokens, out) == refused
            assert out == want
            group.adjust(delta)
        for lim in lims:
            if lim.kind == "tokens":
                generic.adjust(lim, delta)


# -- exact under two workers --------------------------------------------------------------------


@pytest.mark.slow
def test_rpm_exact_under_two_workers(tmp_path: Path) -> None:
    rpm = 4
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server: {{host: 127.0.0.1, access_log: {{format: "off"}}}}
providers:
  local: {{kind: mock}}
models:
  mock-chat: {{targets: [{{provider: local}}]}}
keys:
  - {{name: alice, key: sk-alice-secret, limits: {{rpm: {rpm}}}}}
""")
    body = json.dumps({"model": "mock-chat", "messages": HELLO}).encode()
    statuses: dict[int, list[int]] = {}
    with HapaxProcess(cfg, "--workers", "2") as hp:
        hp.wait_ready(workers=2)
        # One fresh connection per request (the kernel spreads connections over the
        # workers), then /healthz on the same connection: which worker answered.  Until
        # each worker alone has seen more requests than the limit.
        for _ in range(300):
            conn = http.client.HTTPConnection(hp.host, hp.port, timeout=10)
            try:
                conn.request("POST", "/v1/chat/completions", body, {
                    "authorization": "Bearer sk-alice-secret",
                    "content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                conn.request("GET", "/healthz")
                pid = json.loads(conn.getresponse().read())["pid"]
            finally:
                conn.close()
            statuses.setdefault(pid, []).append(resp.status)
            if len(statuses) == 2 and min(map(len, statuses.values())) > rpm:
                break
    assert len(statuses) == 2, statuses
    every = [s for ss in statuses.values() for s in ss]
    assert set(every) == {200, 429}
    assert every.count(200) == rpm  # not rpm per worker
