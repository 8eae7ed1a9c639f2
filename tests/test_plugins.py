"""The plugin system: loading, the environment switches, every hook through a real gateway,
and the plugin docs (every hook documented and exercised here; the examples run).

Each hook test registers a small plugin next to the built-ins, sends real requests with
the OpenAI SDK (or raw HTTP), and checks what the client got and what the fake provider
received.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.metadata
import inspect
import logging
import queue
import re
import sys
import textwrap
import tomllib
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from hapax import hookspecs
from hapax.cli import main
from hapax.config import from_dict, load, loads
from hapax.errors import BadRequest, ConfigError, PluginError
from hapax.pipeline.gateway import Gateway
from hapax.pipeline.hooks import PluginManager
from hapax.providers.base import Provider
from hapax.testing import config_for
from hapax.types import Denial, Principal, Response, RoutePlan, Target

ROOT = Path(__file__).resolve().parent.parent
HOOKS_MD = ROOT / "docs" / "reference" / "hooks.md"
PLUGINS_MD = ROOT / "docs" / "plugins.md"
HOOKS = hookspecs.HOOKS_IN_ORDER
NOWHERE = "http://127.0.0.1:9/v1"  # for gateways that are built but never send
HELLO = [{"role": "user", "content": "hello"}]
ANSWER = "Fake answer to: hello"


@pytest.fixture
def connect() -> Iterator[Callable[..., openai.OpenAI]]:
    """``connect(gw, api_key=..., **client_options)``: an OpenAI client that does not
    retry (a retried 429 or 500 would hide what the gateway answered)."""
    made: list[openai.OpenAI] = []

    def make(gw: Any, api_key: str = "unused", **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=gw.base_url, api_key=api_key, max_retries=0,
                               timeout=20, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``plugin_module(name, source)`` writes an importable module; forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


class AfterResponse:
    """Collects what ``hapax_after_response`` saw, keyed by request id (it runs after
    the client has its answer, so a test waits for it)."""

    def __init__(self) -> None:
        self.seen: queue.Queue[Any] = queue.Queue()

    def hapax_after_response(self, exchange: Any) -> None:
        self.seen.put(exchange)

    def wait(self, n: int) -> dict[str, Any]:
        return {ex.request_id: ex for ex in (self.seen.get(timeout=10) for _ in range(n))}


def header(request: Any, name: str) -> str | None:
    return {k.lower(): v for k, v in request.headers.items()}.get(name)


def plugin_names(gateway: Gateway) -> set[str]:
    return {info.name for info in gateway.plugin_infos}


# -- loading --------------------------------------------------------------------------


def test_installed_plugin_loads_through_its_entry_point(tmp_path: Path, capsys) -> None:
    version = importlib.metadata.version("hapax-redact")
    path = tmp_path / "pipeline.yaml"
    path.write_text("providers:\n  mock: {kind: mock}\n"
                    "models:\n  m: {targets: [{provider: mock}]}\n"
                    "plugins:\n  hapax-redact: {patterns: [email]}\n")
    gateway = Gateway(load(path))
    (info,) = [i for i in gateway.plugin_infos if i.name == "hapax-redact"]
    assert info.source == f"entry point (hapax-redact {version})"
    assert set(info.hooks) == {"hapax_configure", "hapax_transform_request"}
    assert gateway.hooks.transform_request.plugins == ["hapax-redact"]

    assert main(["plugins", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(f"hapax-redact  [entry point (hapax-redact {version})]")
    assert sorted(lines[at + 1:at + 3]) == ["    hapax_configure", "    hapax_transform_request"]


def test_module_named_in_config_loads_and_gets_its_settings(plugin_module, hapax_gateway,
                                                            fake_provider, connect) -> None:
    name = plugin_module("tenant_stamp", '''
        SETTINGS = []

        def hapax_configure(config):
            SETTINGS.append(config.plugin_settings("tenant_stamp"))

        def hapax_before_attempt(attempt):
            attempt.headers.append((b"x-tenant", SETTINGS[-1]["tenant"].encode()))
    ''')
    gw = hapax_gateway(config_for(fake_provider.base_url, plugins={name: {"tenant": "acme"}}))
    assert sys.modules[name].SETTINGS == [{"tenant": "acme"}]
    (info,) = [i for i in gw.gateway.plugin_infos if i.name == name]
    assert (info.source, set(info.hooks)) == ("config", {"hapax_configure",
                                                         "hapax_before_attempt"})
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)
    assert header(fake_provider.requests[0], "x-tenant") == "acme"


def test_a_plugin_class_gets_one_instance_per_gateway(plugin_module, hapax_gateway,
                                                      fake_provider, connect) -> None:
    module = plugin_module("house_style", '''
        class HouseStyle:
            def hapax_configure(self, config):
                self.rule = config.plugin_settings("house_style:HouseStyle")["rule"]

            def hapax_transform_request(self, exchange):
                exchange.json["messages"].insert(0, {"role": "system", "content": self.rule})
    ''')
    name = f"{module}:HouseStyle"
    brief = hapax_gateway(config_for(fake_provider.base_url, plugins={name: {"rule": "Be brief."}}))
    kind = hapax_gateway(config_for(fake_provider.base_url, plugins={name: {"rule": "Be kind."}}))
    connect(brief).chat.completions.create(model="test-model", messages=HELLO)
    connect(kind).chat.completions.create(model="test-model", messages=HELLO)
    assert [r.json["messages"][0]["content"] for r in fake_provider.requests] == [
        "Be brief.", "Be kind."]


def test_unknown_plugin_is_a_config_error() -> None:
    config = from_dict(config_for(NOWHERE, plugins={"hapax-nonexistent": {}}), "pipeline.yaml")
    with pytest.raises(ConfigError) as info:
        Gateway(config)
    [(path, message)] = info.value.problems
    assert path == "plugins.hapax-nonexistent"
    assert message.startswith("no such plugin: not an installed entry point (")
    assert "hapax-redact" in message  # the installed ones are listed
    assert str(info.value).startswith("pipeline.yaml: plugins.hapax-nonexistent: no such plugin")


def test_misspelled_hook_fails_at_start_up(plugin_module) -> None:
    name = plugin_module("typo_plugin", '''
        def hapax_authentcate(exchange):
            return None
    ''')
    with pytest.raises(PluginError) as info:
        Gateway(from_dict(config_for(NOWHERE, plugins={name: {}})))
    assert str(info.value).startswith("plugin 'typo_plugin': unknown hook 'hapax_authentcate'")


def test_misspelled_hook_or_argument_in_a_registered_object_fails(hapax_gateway,
                                                                  fake_provider) -> None:
    class Typo:
        def hapax_authentcate(self, exchange: Any) -> None:
            return None

    class WrongArgument:
        def hapax_authenticate(self, exchnage: Any) -> None:
            return None

    cfg = config_for(fake_provider.base_url)
    with pytest.raises(PluginError, match=r"^plugin 'typo': unknown hook 'hapax_authentcate'"):
        hapax_gateway(cfg, plugins=[("typo", Typo())])
    with pytest.raises(PluginError, match=r"(?s)^plugin 'wrong' .*'exchnage'"):
        hapax_gateway(cfg, plugins=[("wrong", WrongArgument())])


def test_block_plugins_switch(monkeypatch, plugin_module, hapax_gateway, fake_provider,
                              connect) -> None:
    shout = plugin_module("shout_plugin", '''
        def hapax_transform_request(exchange):
            for message in exchange.json["messages"]:
                message["content"] = message["content"].upper()
    ''')
    cfg = config_for(fake_provider.base_url, plugins={"hapax-redact": {}, shout: {}})
    mail = [{"role": "user", "content": "mail jane@example.com"}]

    monkeypatch.setenv("HAPAX_BLOCK_PLUGINS", f"hapax-redact, {shout}")
    gw = hapax_gateway(cfg)
    assert not plugin_names(gw.gateway) & {"hapax-redact", shout}
    connect(gw).chat.completions.create(model="test-model", messages=mail)
    assert fake_provider.requests[-1].json["messages"] == mail

    monkeypatch.delenv("HAPAX_BLOCK_PLUGINS")
    gw = hapax_gateway(cfg)
    connect(gw).chat.completions.create(model="test-model", messages=mail)
    # Both act; the one named in the config registered last, so it ran first.
    assert fake_provider.requests[-1].json["messages"][0]["content"] == "MAIL [EMAIL]"


def test_disable_autoload_switch(monkeypatch) -> None:
    def loaded(cfg: dict[str, Any]) -> set[str]:
        return plugin_names(Gateway(from_dict(cfg)))

    assert "hapax-redact" in loaded(config_for(NOWHERE))  # installed: loaded by default
    monkeypatch.setenv("HAPAX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "hapax-redact" not in loaded(config_for(NOWHERE))
    assert "hapax-redact" in loaded(config_for(NOWHERE, plugins={"hapax-redact": {}}))


def test_trace_plugins_switch_logs_hook_calls(monkeypatch, caplog, hapax_gateway,
                                              fake_provider, connect) -> None:
    caplog.set_level(logging.DEBUG, logger="hapax.plugins")

    def traced() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "hapax.plugins"]

    gw = hapax_gateway(config_for(fake_provider.base_url))
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)
    assert traced() == []

    monkeypatch.setenv("HAPAX_TRACE_PLUGINS", "1")
    gw = hapax_gateway(config_for(fake_provider.base_url))
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)
    lines = traced()
    assert any(line.startswith("hapax.builtins.auth.hapax_authenticate -> "
                               "Principal(name='anonymous'") for line in lines), lines
    assert any(re.match(r"hapax\.builtins\.routing\.hapax_route -> RoutePlan\(alias="
                        r"'test-model'.* \([\d.]+ µs\)$", line) for line in lines), lines


# -- first results ----------------------------------------------------------------------


class PartnerAuth:
    def __init__(self) -> None:
        self.calls = 0

    def hapax_authenticate(self, exchange: Any) -> Principal | None:
        self.calls += 1
        if exchange.headers.get("x-partner") == "acme":
            return Principal("acme-partner")
        return None


def test_plugin_authenticate_wins_and_none_falls_through(hapax_gateway, fake_provider,
                                                         connect) -> None:
    key = "hpx-plugin-test-key"
    auth, after = PartnerAuth(), AfterResponse()
    gw = hapax_gateway(config_for(fake_provider.base_url, keys=[{"name": "web", "key": key}]),
                       plugins=[("partner", auth), ("after", after)])
    # The plugin answers first: no gateway key needed.
    connect(gw, api_key="not-a-key", default_headers={"x-partner": "acme"}).chat.completions.create(
        model="test-model", messages=HELLO, extra_headers={"x-request-id": "partner"})
    # None falls through to the built-in key check.
    with pytest.raises(openai.AuthenticationError) as info:
        connect(gw, api_key="not-a-key").chat.completions.create(
            model="test-model", messages=HELLO, extra_headers={"x-request-id": "stranger"})
    assert info.value.code == "invalid_api_key"
    connect(gw, api_key=key).chat.completions.create(
        model="test-model", messages=HELLO, extra_headers={"x-request-id": "keyholder"})

    seen = after.wait(3)
    assert {rid: (ex.status, ex.principal and ex.principal.name) for rid, ex in seen.items()} == {
        "partner": (200, "acme-partner"), "stranger": (401, None), "keyholder": (200, "web")}
    assert auth.calls == 3
    assert len(fake_provider.requests) == 2


class SmartRouter:
    def hapax_route(self, exchange: Any) -> RoutePlan | None:
        if exchange.alias.startswith("smart-"):
            return RoutePlan(exchange.alias, (Target("fake", "upstream-" + exchange.alias[6:]),))
        return None


def test_plugin_route_overrides_routing(hapax_gateway, fake_provider, connect) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("router", SmartRouter())])
    client = connect(gw)
    reply = client.chat.completions.create(model="smart-small", messages=HELLO)
    assert reply.choices[0].message.content == ANSWER
    client.chat.completions.create(model="test-model", messages=HELLO)  # None: built-in route
    assert [r.json["model"] for r in fake_provider.requests] == ["upstream-small", "test-model"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="other", messages=HELLO)
    assert info.value.code == "model_not_found"


class AsyncHooks:
    def __init__(self) -> None:
        self.after: queue.Queue[int] = queue.Queue()

    async def hapax_transform_request(self, exchange: Any) -> None:
        await asyncio.sleep(0)
        exchange.json["messages"].insert(0, {"role": "system", "content": "async was here"})

    async def hapax_before_attempt(self, exchange: Any, attempt: Any) -> None:
        await asyncio.sleep(0)
        attempt.headers.append((b"x-async", b"awaited"))

    async def hapax_after_response(self, exchange: Any) -> None:
        await asyncio.sleep(0)
        self.after.put(exchange.status)


def test_async_hook_implementations_are_awaited(hapax_gateway, fake_provider, connect) -> None:
    plugin = AsyncHooks()
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("async", plugin)])
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)
    sent = fake_provider.requests[0]
    assert sent.json["messages"] == [{"role": "system", "content": "async was here"}, *HELLO]
    assert header(sent, "x-async") == "awaited"
    assert plugin.after.get(timeout=10) == 200


# -- refusals ---------------------------------------------------------------------------


class RegionGate:
    def hapax_authorize(self, exchange: Any, principal: Principal) -> Denial | None:
        if exchange.headers.get("x-region") == "xx":
            return Denial(451, f"{exchange.alias} is not available in your region",
                          "permission_error", "region_blocked")
        return None


def test_authorize_denial_reaches_the_client(hapax_gateway, fake_provider, connect) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("gate", RegionGate())])
    with pytest.raises(openai.APIStatusError) as info:
        connect(gw).chat.completions.create(model="test-model", messages=HELLO,
                                            extra_headers={"x-region": "xx"})
    assert info.value.status_code == 451
    assert info.value.code == "region_blocked"
    assert info.value.body["message"] == "test-model is not available in your region"
    assert info.value.body["type"] == "permission_error"
    assert fake_provider.requests == []
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)  # None: allowed
    assert len(fake_provider.requests) == 1


class Limiter:
    def __init__(self) -> None:
        self.plans: list[RoutePlan] = []

    def hapax_admit(self, exchange: Any, plan: RoutePlan) -> Denial | None:
        self.plans.append(plan)
        if len(self.plans) > 1:
            return Denial(429, "slow down", "rate_limit_error", "rate_limited",
                          ((b"retry-after", b"7"),))
        return None


def test_admit_denial_is_a_429_with_retry_after(hapax_gateway, fake_provider, connect) -> None:
    limiter = Limiter()
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("limiter", limiter)])
    client = connect(gw)
    client.chat.completions.create(model="test-model", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert (info.value.code, info.value.body["message"]) == ("rate_limited", "slow down")
    assert limiter.plans == [RoutePlan("test-model", (Target("fake", "test-model"),))] * 2
    assert len(fake_provider.requests) == 1


class Bouncer:
    def hapax_request_received(self, exchange: Any) -> None:
        if exchange.headers.get("x-client", "").endswith("-bot"):
            raise BadRequest("automated clients are not served here", code="bot_refused")


def test_request_received_can_refuse_before_authentication(hapax_gateway, fake_provider,
                                                           connect) -> None:
    key = "hpx-plugin-test-key"
    gw = hapax_gateway(config_for(fake_provider.base_url, keys=[{"name": "web", "key": key}]),
                       plugins=[("bouncer", Bouncer())])
    with pytest.raises(openai.BadRequestError) as info:  # not 401: it runs first
        connect(gw, api_key="not-a-key").chat.completions.create(
            model="test-model", messages=HELLO, extra_headers={"x-client": "crawler-bot"})
    assert (info.value.code, info.value.body["message"]) == (
        "bot_refused", "automated clients are not served here")
    assert fake_provider.requests == []
    connect(gw, api_key=key).chat.completions.create(model="test-model", messages=HELLO)
    assert len(fake_provider.requests) == 1


# -- around the provider ------------------------------------------------------------------


class TinyCache:
    def __init__(self) -> None:
        self.bodies: dict[bytes, bytes] = {}
        self.stored: list[Any] = []

    def hapax_cache_lookup(self, exchange: Any) -> Response | None:
        body = self.bodies.get(orjson.dumps(exchange.json["messages"]))
        if body is None:
            return None
        return Response(200, body, [(b"content-type", b"application/json"), (b"x-cache", b"hit")])

    def hapax_cache_store(self, exchange: Any, response: Response) -> None:
        self.stored.append(response.json)
        self.bodies[orjson.dumps(exchange.json["messages"])] = response.body


def test_cache_lookup_short_circuits_and_cache_store_gets_the_response(
        hapax_gateway, fake_provider, connect) -> None:
    cache = TinyCache()
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("cache", cache)])
    client = connect(gw)
    first = client.chat.completions.with_raw_response.create(model="test-model", messages=HELLO)
    assert first.headers.get("x-cache") is None
    [stored] = cache.stored
    assert stored["choices"][0]["message"]["content"] == ANSWER
    assert stored["usage"]["prompt_tokens"] == 7

    second = client.chat.completions.with_raw_response.create(model="test-model", messages=HELLO)
    assert second.headers["x-cache"] == "hit"
    assert second.parse().choices[0].message.content == ANSWER
    assert len(fake_provider.requests) == 1  # the provider never saw the second request
    assert len(cache.stored) == 1


class Stamp:
    def __init__(self) -> None:
        self.attempts: list[tuple[Target, int]] = []

    def hapax_before_attempt(self, exchange: Any, attempt: Any) -> None:
        self.attempts.append((attempt.target, attempt.number))
        attempt.headers.append((b"x-tenant", b"acme"))


def test_before_attempt_adds_an_upstream_header(hapax_gateway, fake_provider, connect) -> None:
    stamp = Stamp()
    gw = hapax_gateway(config_for(fake_provider.base_url, upstream_model="real-model"),
                       plugins=[("stamp", stamp)])
    connect(gw).chat.completions.create(model="test-model", messages=HELLO)
    assert header(fake_provider.requests[0], "x-tenant") == "acme"
    assert stamp.attempts == [(Target("fake", "real-model"), 1)]


class ShoutResponse:
    def hapax_transform_response(self, exchange: Any, response: Response) -> None:
        body = response.json
        message = body["choices"][0]["message"]
        message["content"] = message["content"].upper()
        response.set_json(body)
        response.headers.append((b"x-transformed", b"yes"))


def test_transform_response_edits_the_json(hapax_gateway, fake_provider, connect) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("shout", ShoutResponse())])
    raw = connect(gw).chat.completions.with_raw_response.create(model="test-model",
                                                                messages=HELLO)
    assert raw.headers["x-transformed"] == "yes"
    reply = raw.parse()
    assert reply.choices[0].message.content == ANSWER.upper()
    assert reply.usage is not None and reply.usage.prompt_tokens == 7  # the rest is kept


class ShoutChunks:
    def hapax_transform_chunk(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices", ()):
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()


class TagChunks:
    def hapax_transform_chunk(self, exchange: Any, chunk: dict[str, Any]) -> dict[str, Any]:
        return {**chunk, "system_fingerprint": f"tagged-{exchange.alias}"}


def test_transform_chunk_edits_streamed_chunks(hapax_gateway, fake_provider, connect) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url),
                       plugins=[("tag", TagChunks()), ("shout", ShoutChunks())])
    chunks = list(connect(gw).chat.completions.create(
        model="test-model", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER.upper()
    assert {c.system_fingerprint for c in chunks} == {"tagged-test-model"}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7


class Audit(AfterResponse):
    pass


def test_after_response_sees_status_and_usage(hapax_gateway, fake_provider, connect) -> None:
    audit = Audit()
    gw = hapax_gateway(config_for(fake_provider.base_url, upstream_model="real-model"),
                       plugins=[("audit", audit)])
    client = connect(gw)
    client.chat.completions.create(model="test-model", messages=HELLO,
                                   extra_headers={"x-request-id": "ok"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=HELLO,
                                       extra_headers={"x-request-id": "missing"})
    seen = audit.wait(2)
    ok, missing = seen["ok"], seen["missing"]
    assert (ok.status, ok.alias, ok.target, ok.error) == (
        200, "test-model", Target("fake", "real-model"), None)
    assert ok.usage == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert [a.status for a in ok.attempts] == [200]
    assert (missing.status, missing.usage, missing.target, missing.attempts) == (
        404, None, None, [])
    assert "does not exist" in missing.error


class EchoProvider(Provider):
    kind = "echo"

    async def send(self, exchange: Any, attempt: Any, endpoint: str, body: bytes) -> Response:
        request = orjson.loads(body)
        return Response(200, orjson.dumps({
            "id": "echo", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "echo: " + request["messages"][-1]["content"]}}]}))


class EchoKind:
    def hapax_register_providers(self, register: Callable[[str, Any], None]) -> None:
        register("echo", EchoProvider)


def test_register_providers_adds_a_provider_kind(hapax_gateway, connect) -> None:
    cfg = {"server": {"access_log": {"format": "off"}},
           "providers": {"local": {"kind": "echo"}},
           "models": {"m": {"targets": [{"provider": "local", "model": "echo-1"}]}}}
    with pytest.raises(ConfigError, match=r"providers\.local\.kind: unknown provider kind 'echo'"):
        Gateway(from_dict(cfg))
    gw = hapax_gateway(cfg, plugins=[("echo", EchoKind())])
    reply = connect(gw).chat.completions.create(model="m", messages=HELLO)
    assert (reply.model, reply.choices[0].message.content) == ("echo-1", "echo: hello")


# -- plugin failures --------------------------------------------------------------------


class Flaky:
    def __init__(self) -> None:
        self.failures = 1

    def hapax_transform_request(self, exchange: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ZeroDivisionError("division by zero")


def test_a_plugin_exception_is_a_500_and_the_gateway_keeps_serving(
        hapax_gateway, fake_provider, connect, caplog) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("flaky", Flaky())])
    client = connect(gw)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="test-model", messages=HELLO,
                                       extra_headers={"x-request-id": "boom"})
    assert info.value.status_code == 500
    assert (info.value.code, info.value.body["message"]) == (
        "plugin_error", "internal error in a gateway plugin")
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("boom" in r.getMessage() and "plugin 'flaky' failed in hapax_transform_request: "
               "ZeroDivisionError" in r.getMessage() for r in logged)
    reply = client.chat.completions.create(model="test-model", messages=HELLO)
    assert reply.choices[0].message.content == ANSWER
    assert len(fake_provider.requests) == 1


class BrokenChunks:
    def hapax_transform_chunk(self, chunk: dict[str, Any]) -> None:
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            raise KeyError("oops")


def test_a_chunk_transform_failure_ends_the_stream_with_an_error_event(
        hapax_gateway, fake_provider) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url), plugins=[("broken", BrokenChunks())])
    body = orjson.dumps({"model": "test-model", "messages": HELLO, "stream": True})
    for _ in range(2):  # the gateway keeps serving after the failure
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        events = [e for e in resp.read().split(b"\n\n") if e]
        conn.close()
        assert resp.status == 200
        assert b"data: [DONE]" not in events
        assert orjson.loads(events[-1].removeprefix(b"data: ")) == {"error": {
            "message": "internal error in a gateway plugin", "type": "server_error",
            "param": None, "code": "plugin_error"}}


# -- docs: every hook documented and exercised; the examples run ----------------------------


def hook_sections(text: str) -> dict[str, str]:
    """``{hook: section text}`` for each ``### hapax_*`` heading of the hook reference."""
    parts = re.split(r"^(?=#{2,3} )", text, flags=re.M)
    return {m.group(1): part for part in parts
            if (m := re.match(r"### (hapax_\w+)\n", part))}


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)


def test_hook_list_matches_the_specs() -> None:
    specs = {name for name, fn in vars(hookspecs).items()
             if name.startswith("hapax_") and callable(fn)}
    assert set(HOOKS) == specs and len(HOOKS) == len(specs)


def test_every_hook_is_documented_and_tested() -> None:
    documented = list(hook_sections(HOOKS_MD.read_text(encoding="utf-8")))
    assert documented == HOOKS, "docs/reference/hooks.md: one section per hook, in order"
    source = Path(__file__).read_text(encoding="utf-8")
    untested = [hook for hook in HOOKS if not re.search(rf"\bdef {hook}\(", source)]
    assert untested == [], "hooks no test in tests/test_plugins.py implements"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_reference_section_matches_the_spec(hook: str) -> None:
    section = hook_sections(HOOKS_MD.read_text(encoding="utf-8"))[hook]
    spec = getattr(hookspecs, hook)
    signature = re.search(rf"^`{hook}\(([^)]*)\) -> [^`]+`", section, re.M)
    assert signature, f"{hook}: no signature line"
    assert signature.group(1).split(", ") == list(inspect.signature(spec).parameters)
    first = bool(spec.hapax_spec.get("firstresult")) if hasattr(spec, "hapax_spec") else False
    assert ("**first result**" in section) == first
    examples = code_blocks(section, "python")
    assert examples, f"{hook}: no example"
    for code in examples:
        # The example imports, and every hapax_* function in it is a hook whose arguments
        # the hook provides (pluggy checks names and arguments at registration).
        module = types.ModuleType(f"hooks_md_{hook}")
        exec(compile(code, f"hooks.md ({hook})", "exec"), module.__dict__)
        pm = PluginManager()
        pm.register(module, name=module.__name__)
        pm.check_pending()
        assert callable(getattr(module, hook, None)), f"{hook}: the example does not implement it"


def marked_blocks(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of the blocks marked ``<!-- tested: name -->``."""
    return {name: (lang, code) for name, lang, code in re.findall(
        r"^<!-- tested: ([\w-]+) -->\n```(\w+)\n(.*?)^```$", text, re.M | re.S)}


PLUGINS_DOC = PLUGINS_MD.read_text(encoding="utf-8")
EXAMPLES = marked_blocks(PLUGINS_DOC)


def test_every_code_example_in_the_plugin_guide_is_tested() -> None:
    fences = re.findall(r"^```(python|yaml|toml)$", PLUGINS_DOC, re.M)
    tested = [lang for lang, _ in EXAMPLES.values() if lang in ("python", "yaml", "toml")]
    assert sorted(tested) == sorted(fences), \
        "every python/yaml/toml block in docs/plugins.md needs a <!-- tested: name --> mark"
    assert set(EXAMPLES) == {"example-plugin", "example-config", "example-error",
                             "example-async", "example-pyproject", "example-paths",
                             "example-test"}


@pytest.fixture
def example_plugin(plugin_module) -> Any:
    """The guide's example plugin, as the importable module ``hapax_defaults``."""
    plugin_module("hapax_defaults", EXAMPLES["example-plugin"][1])
    import hapax_defaults  # type: ignore[import-not-found]

    return hapax_defaults


def test_plugin_guide_example_test_passes(example_plugin, hapax_gateway, fake_provider) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(EXAMPLES["example-test"][1], "plugins.md (example-test)", "exec"), namespace)
    [test] = [fn for name, fn in namespace.items() if name.startswith("test_")]
    test(hapax_gateway, fake_provider)
    assert [r.json["temperature"] for r in fake_provider.requests] == [0.2, 1.0]


def test_plugin_guide_example_counts_on_metrics(example_plugin, hapax_gateway, fake_provider,
                                                connect) -> None:
    cfg = config_for(fake_provider.base_url,
                     plugins={"hapax-defaults": {"temperature": 0.2, "max_tokens": 64}})
    gw = hapax_gateway(cfg, plugins=[("hapax-defaults", example_plugin.DefaultsPlugin())])
    connect(gw).chat.completions.create(model="test-model", messages=HELLO, temperature=1.0)
    connect(gw).embeddings.create(model="test-model", input="hello")  # left alone
    chat, embeddings = (r.json for r in fake_provider.requests)
    assert (chat["temperature"], chat["max_tokens"]) == (1.0, 64)
    assert "max_tokens" not in embeddings
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'hapax_defaults_filled_total{parameter="max_tokens"} 1.0' in metrics
    assert 'parameter="temperature"' not in metrics


def test_plugin_guide_config_and_error_are_real(example_plugin) -> None:
    text = EXAMPLES["example-config"][1]
    env = {"OPENAI_API_KEY": "sk-test"}
    plugin = ("hapax-defaults", example_plugin.DefaultsPlugin)
    Gateway(loads(text, "pipeline.yaml", env), plugins=[plugin])  # valid
    with pytest.raises(ConfigError) as info:
        Gateway(loads(text.replace("temperature", "temprature"), "pipeline.yaml", env),
                plugins=[plugin])
    assert str(info.value) == EXAMPLES["example-error"][1].strip()


def test_plugin_guide_pyproject_names_the_entry_point(example_plugin) -> None:
    project = tomllib.loads(EXAMPLES["example-pyproject"][1])["project"]
    [(name, value)] = project["entry-points"]["hapax"].items()
    assert name == project["name"] == "hapax-defaults"
    assert name in loads(EXAMPLES["example-config"][1], env={"OPENAI_API_KEY": "x"}).plugins
    entry_point = importlib.metadata.EntryPoint(name, value, "hapax")
    assert entry_point.load() is example_plugin.DefaultsPlugin
    assert "hapax" in project["dependencies"]


def test_plugin_guide_module_paths_are_what_the_loader_looks_up() -> None:
    config = loads(EXAMPLES["example-paths"][1], "pipeline.yaml",
                   env={"AUDIT_URL": "https://audit.example/v1"})
    assert config.plugin_settings("mycompany.audit") == {"endpoint": "https://audit.example/v1"}
    with pytest.raises(ConfigError) as info:
        Gateway(config)
    assert [path for path, _ in info.value.problems] == [
        "plugins.mycompany.audit", "plugins.mycompany.auth:PartnerAuth"]
    assert "No module named 'mycompany'" in info.value.problems[0][1]


def test_plugin_guide_async_example_runs(hapax_gateway, fake_provider, connect) -> None:
    module = types.ModuleType("partner_auth")
    exec(compile(EXAMPLES["example-async"][1], "plugins.md (example-async)", "exec"),
         module.__dict__)
    assert inspect.iscoroutinefunction(module.hapax_authenticate)
    key = "hpx-plugin-test-key"
    cfg = config_for(fake_provider.base_url, models=("gpt-4o-mini", "gpt-4o"),
                     keys=[{"name": "web", "key": key}])
    gw = hapax_gateway(cfg, plugins=[("partner_auth", module)])
    partner = connect(gw, api_key="none", default_headers={"x-partner-token": "token-for-acme"})
    assert partner.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    with pytest.raises(openai.PermissionDeniedError):  # the principal's model list applies
        partner.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.AuthenticationError) as info:
        connect(gw, api_key="none", default_headers={"x-partner-token": "guess"}) \
            .chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.body["message"] == "unknown partner token"
    # No partner token: the gateway keys decide.
    assert connect(gw, api_key=key).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert len(fake_provider.requests) == 2
