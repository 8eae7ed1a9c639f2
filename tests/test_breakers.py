"""Circuit breakers, health and GET /admin/health (docs/reliability.md) through the real
server: the openai SDK as client (its own retries off), fake providers as targets."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from helpers import GatewayFactory, chat, closed_port, two_targets, wait_for

from hapax.config import from_dict
from hapax.errors import ConfigError
from hapax.pipeline.gateway import Gateway
from hapax.pipeline.health import CLOSED, HALF_OPEN, OPEN
from hapax.testing import GatewayThread
from hapax.testing.fake_provider import FakeProvider, Reply
from hapax.types import Target


def config(primary: str, secondary: str, breaker: Any = None, *,
           primary_extra: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    """Model ``m``: primary then secondary, no retries (one attempt per target)."""
    return two_targets(primary, secondary, provider={
        "api_key": "sk-secret-primary", **({"breaker": breaker} if breaker is not None else {}),
        **(primary_extra or {})}, **{"retries": 0, **model})


def posts(fake: FakeProvider) -> int:
    """Chat requests the fake received (active probes are GETs)."""
    return sum(1 for r in fake.requests if r.method == "POST")


def metrics(gw: GatewayThread) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def admin_health(gw: GatewayThread) -> dict[str, Any]:
    with urllib.request.urlopen(gw.url + "/admin/health", timeout=10) as resp:
        assert resp.headers["content-type"] == "application/json"
        return dict(json.loads(resp.read()))


def test_opens_after_consecutive_failures_and_skips_the_target(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
        second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 3, "cooldown": "60s"}))
    for _ in range(6):
        raw = chat(gw)
        assert raw.headers["x-hapax-provider"] == "secondary"
    assert posts(fake_provider) == 3  # then open: no more requests reach it
    assert len(second.requests) == 6
    text = metrics(gw)
    assert 'hapax_breaker_state{model="m",provider="primary"} 2.0' in text
    assert 'hapax_breaker_state{model="m",provider="secondary"} 0.0' in text
    assert 'hapax_breaker_transitions_total{model="m",provider="primary",to="open"} 1.0' in text
    assert 'hapax_breaker_skipped_total{model="m",provider="primary"} 3.0' in text
    assert 'hapax_upstream_attempts_total{outcome="failure",provider="primary"} 3.0' in text
    assert 'hapax_upstream_attempts_total{outcome="success",provider="secondary"} 6.0' in text
    assert 'hapax_failovers_total{model="m"} 3.0' in text  # skips are not failovers


def test_opens_on_the_error_rate(hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
                                 second: FakeProvider) -> None:
    fake_provider.queue(Reply(), Reply(status=500), Reply(), Reply(status=503))
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 100, "error_rate": 0.5, "min_requests": 4,
                               "cooldown": "60s"}))
    served = [chat(gw).headers["x-hapax-provider"] for _ in range(6)]
    # 2 failures out of 4 attempts reach 50%: open, although never 2 in a row.
    assert served == ["primary", "secondary", "primary", "secondary", "secondary",
                      "secondary"]
    assert posts(fake_provider) == 4


def test_below_min_requests_the_error_rate_does_not_open(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
        second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=500), Reply(), Reply(status=500))
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 100, "error_rate": 0.5, "min_requests": 10}))
    served = [chat(gw).headers["x-hapax-provider"] for _ in range(4)]
    assert served == ["secondary", "primary", "secondary", "primary"]


def test_recovers_by_itself_after_the_cooldown(hapax_gateway: GatewayFactory,
                                               fake_provider: FakeProvider,
                                               second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=500), Reply(status=500))  # then healthy again
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 2, "cooldown": "1s"}))
    assert [chat(gw).headers["x-hapax-provider"] for _ in range(3)] == ["secondary"] * 3
    assert posts(fake_provider) == 2
    time.sleep(1.1)
    # Half-open: one probe request goes through, succeeds, and closes the breaker.
    assert [chat(gw).headers["x-hapax-provider"] for _ in range(3)] == ["primary"] * 3
    text = metrics(gw)
    for state, n in (("open", 1), ("half_open", 1), ("closed", 1)):
        assert (f'hapax_breaker_transitions_total{{model="m",provider="primary",to="{state}"}}'
                f' {n}.0') in text
    assert 'hapax_breaker_state{model="m",provider="primary"} 0.0' in text


def test_a_failed_probe_request_opens_it_again(hapax_gateway: GatewayFactory,
                                               fake_provider: FakeProvider,
                                               second: FakeProvider) -> None:
    fake_provider.default = Reply(status=502)
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 1, "cooldown": "1s"}))
    chat(gw)
    time.sleep(1.1)
    assert chat(gw).headers["x-hapax-provider"] == "secondary"  # probe failed over
    assert posts(fake_provider) == 2
    assert chat(gw).headers["x-hapax-provider"] == "secondary"  # open again: skipped
    assert posts(fake_provider) == 2
    assert admin_health(gw)["models"]["m"]["targets"][0]["breaker"] == "open"


def test_each_failed_probe_doubles_the_cooldown_up_to_max_cooldown(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
        second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=500), Reply(status=500), Reply(status=500))
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 1, "cooldown": "400ms", "max_cooldown": "1s"}))
    th = gw.gateway.health.get(Target("primary", "m"))
    chat(gw)  # opens for 0.4 s
    assert th.cooldown == pytest.approx(0.4)
    time.sleep(0.45)
    chat(gw)  # the probe fails: open again, for 0.8 s
    assert posts(fake_provider) == 2 and th.cooldown == pytest.approx(0.8)
    time.sleep(0.45)
    assert chat(gw).headers["x-hapax-provider"] == "secondary"  # 0.4 s would be over
    assert posts(fake_provider) == 2
    time.sleep(0.4)
    chat(gw)  # a probe again, failing: capped at max_cooldown
    assert posts(fake_provider) == 3 and th.cooldown == pytest.approx(1.0)
    time.sleep(1.05)
    assert chat(gw).headers["x-hapax-provider"] == "primary"  # healthy now: closed
    assert th.state == CLOSED and th.cooldown == pytest.approx(0.4)


def test_half_open_lets_exactly_the_configured_probes_through(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
        second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=500), Reply(delay=1.5), Reply(delay=1.5))
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 1, "cooldown": "300ms", "half_open_requests": 2}))
    chat(gw)  # opens
    time.sleep(0.4)
    with ThreadPoolExecutor(5) as pool:
        served = list(pool.map(lambda _: chat(gw).headers["x-hapax-provider"], range(5)))
    assert sorted(served) == ["primary"] * 2 + ["secondary"] * 3
    assert posts(fake_provider) == 3
    # The probes succeeded: closed, and the target takes all the traffic again.
    assert chat(gw).headers["x-hapax-provider"] == "primary"
    assert gw.gateway.health.get(Target("primary", "m")).state == CLOSED


def test_every_target_open_is_503_no_healthy_target(hapax_gateway: GatewayFactory,
                                                     fake_provider: FakeProvider,
                                                     second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    second.default = Reply(status=503)
    cfg = config(fake_provider.base_url, second.base_url, {"failures": 1, "cooldown": "20s"})
    cfg["providers"]["secondary"]["breaker"] = {"failures": 1, "cooldown": "10s"}
    gw = hapax_gateway(cfg)
    with pytest.raises(openai.InternalServerError) as first:
        chat(gw)
    assert first.value.status_code == 502  # both tried: the last failure
    with pytest.raises(openai.InternalServerError) as info:
        chat(gw)
    assert info.value.status_code == 503
    body = info.value.response.json()["error"]
    assert body["code"] == "no_healthy_target"
    assert body["type"] == "server_error"
    assert "'m'" in body["message"]
    assert 8 <= int(info.value.response.headers["retry-after"]) <= 10  # the first to reopen
    assert posts(fake_provider) == 1
    assert len(second.requests) == 1
    doc = admin_health(gw)
    assert doc["status"] == "down"
    assert doc["models"]["m"]["status"] == "down"


def test_breaker_off_never_skips(hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
                                 second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url, "off"))
    for _ in range(8):
        assert chat(gw).headers["x-hapax-provider"] == "secondary"
    assert posts(fake_provider) == 8
    assert admin_health(gw)["models"]["m"]["targets"][0]["breaker"] == "off"


def test_a_4xx_is_a_success_for_health(hapax_gateway: GatewayFactory,
                                       fake_provider: FakeProvider,
                                       second: FakeProvider) -> None:
    fake_provider.default = Reply(status=400, json={"error": {"message": "bad prompt"}})
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url, {"failures": 1}))
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            chat(gw)
    assert posts(fake_provider) == 3
    assert gw.gateway.health.get(Target("primary", "m")).state == CLOSED


def test_admin_health_document(hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
                               second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 2, "cooldown": "30s"}))
    doc = admin_health(gw)
    assert doc["status"] == "ok"
    assert [t["breaker"] for t in doc["models"]["m"]["targets"]] == ["closed", "closed"]
    for _ in range(2):
        chat(gw)
    raw = urllib.request.urlopen(gw.url + "/admin/health", timeout=10).read()
    assert b"sk-secret-primary" not in raw
    doc = json.loads(raw)
    assert doc["status"] == "degraded"
    model = doc["models"]["m"]
    assert model["status"] == "degraded"
    primary, secondary = model["targets"]
    assert (primary["provider"], primary["model"], primary["breaker"]) == ("primary", "m", "open")
    assert primary["consecutive_failures"] == 2
    assert primary["window_requests"] == 2 and primary["error_rate"] == 1.0
    assert "500" in primary["last_error"]
    assert 25 < primary["retry_in_s"] <= 30
    assert primary["last_failure"] == pytest.approx(time.time(), abs=30)
    assert primary["last_success"] is None and primary["probe"] is None
    assert (secondary["provider"], secondary["breaker"]) == ("secondary", "closed")
    assert secondary["error_rate"] == 0.0 and secondary["outstanding"] == 0
    assert secondary["latency_ewma_ms"] > 0
    assert secondary["retry_in_s"] is None
    with urllib.request.urlopen(urllib.request.Request(gw.url + "/admin/health",
                                                       method="HEAD"), timeout=10) as resp:
        assert resp.status == 200


def test_active_probe_opens_a_dead_provider(hapax_gateway: GatewayFactory,
                                            second: FakeProvider) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    gw = hapax_gateway(config(dead, second.base_url, {"failures": 2, "cooldown": "60s"},
                              primary_extra={"health_check": {"interval": "50ms",
                                                              "timeout": "1s"}}))
    th = gw.gateway.health.get(Target("primary", "m"))
    assert wait_for(lambda: th.state == OPEN)  # without a single request
    assert chat(gw).headers["x-hapax-provider"] == "secondary"
    target = admin_health(gw)["models"]["m"]["targets"][0]
    assert target["breaker"] == "open"
    assert target["probe"]["healthy"] is False
    assert "cannot connect" in target["probe"]["error"]
    assert 'hapax_health_checks_total{provider="primary",result="unhealthy"}' in metrics(gw)


def test_active_probe_half_opens_a_recovered_provider(hapax_gateway: GatewayFactory,
                                                      fake_provider: FakeProvider,
                                                      second: FakeProvider) -> None:
    fake_provider.default = Reply(status=503)
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url,
                              {"failures": 1, "cooldown": "60s"},
                              primary_extra={"health_check": {"interval": "50ms"}}))
    th = gw.gateway.health.get(Target("primary", "m"))
    assert wait_for(lambda: th.state == OPEN)
    probe = next(r for r in fake_provider.requests if r.method == "GET")
    assert probe.path == "/v1/models"
    assert probe.headers["Authorization"] == "Bearer sk-secret-primary"
    fake_provider.default = Reply()  # recovered: long before the 60 s cooldown
    assert wait_for(lambda: th.state == HALF_OPEN)
    assert chat(gw).headers["x-hapax-provider"] == "primary"  # traffic confirms it
    assert th.state == CLOSED
    assert admin_health(gw)["models"]["m"]["targets"][0]["probe"]["healthy"] is True
    text = metrics(gw)
    assert 'hapax_health_checks_total{provider="primary",result="healthy"}' in text


class AfterResponse:
    def __init__(self) -> None:
        self.seen: queue.Queue[Any] = queue.Queue()

    def hapax_after_response(self, exchange: Any) -> None:
        self.seen.put(exchange)


def test_attempts_record_target_status_latency_and_reason(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
        second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=429, json={"error": {"message": "slow down"}}),
                        Reply(status=500))
    after = AfterResponse()
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url, retries=1),
                       plugins=[("after", after)])
    assert chat(gw).headers["x-hapax-provider"] == "secondary"
    ex = after.seen.get(timeout=10)
    got = [(a.target, a.number, a.status, a.reason) for a in ex.attempts]
    assert got == [(Target("primary", "m"), 1, 429, "429"),
                   (Target("primary", "m"), 2, 502, "500"),
                   (Target("secondary", "m"), 3, 200, None)]
    assert all(a.latency is not None and a.latency >= 0 for a in ex.attempts)
    assert "500" in (ex.attempts[1].error or "")


def test_skipped_targets_are_noted_on_the_exchange(hapax_gateway: GatewayFactory,
                                                   fake_provider: FakeProvider,
                                                   second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    after = AfterResponse()
    gw = hapax_gateway(config(fake_provider.base_url, second.base_url, {"failures": 1}),
                       plugins=[("after", after)])
    chat(gw)
    chat(gw)
    first, then = after.seen.get(timeout=10), after.seen.get(timeout=10)
    assert [a.target.provider for a in first.attempts] == ["primary", "secondary"]
    assert [a.target.provider for a in then.attempts] == ["secondary"]
    assert then.state["skipped"] == [Target("primary", "m")]


def test_carry_over_keeps_the_state_of_targets_that_still_exist() -> None:
    cfg = config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                 {"failures": 1, "cooldown": "60s"})
    old = Gateway(from_dict(cfg))
    old.health.get(Target("primary", "m")).failure("provider 'primary' answered 500")
    old.health.get(Target("secondary", "m")).success(0.25)
    old.health.note_probe("primary", "down")
    cfg["providers"].pop("secondary")
    cfg["providers"]["third"] = {"kind": "mock"}
    cfg["models"]["m"]["targets"] = [{"provider": "primary"}, {"provider": "third"}]
    new = Gateway(from_dict(cfg), previous=old)
    new.health.carry_over(old.health)
    kept = new.health.get(Target("primary", "m"))
    assert kept.state == OPEN and kept.retry_in() > 50
    assert kept.last_error == "provider 'primary' answered 500"
    assert new.health.probes["primary"][0] is False
    assert Target("secondary", "m") not in new.health.targets  # its provider is gone
    assert new.health.get(Target("third", "m")).state == CLOSED
    assert new.health.allow(Target("primary", "m")) < 0


@pytest.mark.parametrize(("breaker", "path", "words"), [
    ({"failures": 0}, "providers.p.breaker.failures", ">= 1"),
    ({"error_rate": 1.5}, "providers.p.breaker.error_rate", "at most 1"),
    ({"error_rate": "half"}, "providers.p.breaker.error_rate", "above 0"),
    ({"cooldown": "soon"}, "providers.p.breaker.cooldown", "duration"),
    ({"half_open": 1}, "providers.p.breaker.half_open", "half_open_requests"),
    ("on", "providers.p.breaker", "mapping"),
])
def test_bad_breaker_settings_name_the_key(breaker: Any, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"providers": {"p": {"kind": "mock", "breaker": breaker}},
                   "models": {"m": {"targets": [{"provider": "p"}]}}})
    [(where, message)] = info.value.problems
    assert where == path
    assert words in message


def test_bad_health_check_settings_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"providers": {"p": {"kind": "mock", "health_check": {
            "interval": "often", "path": "models"}}}})
    assert sorted(p for p, _ in info.value.problems) == [
        "providers.p.health_check.interval", "providers.p.health_check.path"]


def test_the_breaker_is_on_by_default() -> None:
    cfg = from_dict({"providers": {"p": {"kind": "mock"}},
                     "models": {"m": {"targets": [{"provider": "p"}]}}})
    breaker = cfg.providers["p"].breaker
    assert breaker is not None and breaker.failures == 5 and breaker.cooldown == 30.0
    assert cfg.providers["p"].health_check is None
