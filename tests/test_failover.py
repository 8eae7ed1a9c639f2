"""Retries and failover (docs/reliability.md) through the real server: the openai SDK as
client (its own retries off), two fake providers as a model's two targets."""

from __future__ import annotations

import openai
import pytest
from helpers import HELLO, GatewayFactory, chat, client, closed_port, two_targets

from hapax.pipeline.executor import RetryBudget
from hapax.testing.fake_provider import FakeProvider, Reply


def test_500_is_retried_on_the_same_target(hapax_gateway: GatewayFactory,
                                           fake_provider: FakeProvider,
                                           second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=500), Reply(status=500))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=2))
    raw = chat(gw)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-hapax-provider"] == "primary"
    assert len(fake_provider.requests) == 3
    assert second.requests == []
    metrics = gw.gateway.metrics.render().decode()
    assert 'hapax_retries_total{model="m",reason="500"} 2' in metrics


def test_500_always_fails_over_to_the_secondary(hapax_gateway: GatewayFactory,
                                                fake_provider: FakeProvider,
                                                second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=1))
    raw = chat(gw)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-hapax-provider"] == "secondary"
    assert raw.parse().choices[0].message.content
    assert len(fake_provider.requests) == 2
    assert len(second.requests) == 1


def test_connection_refused_fails_over(hapax_gateway: GatewayFactory,
                                       second: FakeProvider) -> None:
    gw = hapax_gateway(two_targets(f"http://127.0.0.1:{closed_port()}/v1", second.base_url))
    raw = chat(gw)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-hapax-provider"] == "secondary"
    assert len(second.requests) == 1


def test_429_with_retry_after_waits_and_retries(hapax_gateway: GatewayFactory,
                                                fake_provider: FakeProvider,
                                                second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=429, json={"error": {"message": "slow down"}},
                              headers={"Retry-After": "1"}))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url))
    raw = chat(gw)
    assert raw.http_response.status_code == 200
    assert len(fake_provider.requests) == 2
    assert second.requests == []


def test_400_is_returned_at_once(hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
                                 second: FakeProvider) -> None:
    fake_provider.queue(Reply(status=400, json={"error": {"message": "bad prompt",
                                                          "type": "invalid_request_error"}}))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url))
    with pytest.raises(openai.BadRequestError, match="bad prompt"):
        chat(gw)
    assert len(fake_provider.requests) == 1
    assert second.requests == []


def test_retries_0_fails_over_straight_away(hapax_gateway: GatewayFactory,
                                            fake_provider: FakeProvider,
                                            second: FakeProvider) -> None:
    fake_provider.default = Reply(status=503)
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=0))
    raw = chat(gw)
    assert raw.headers["x-hapax-provider"] == "secondary"
    assert len(fake_provider.requests) == 1
    assert len(second.requests) == 1


def test_every_target_failing_returns_the_last_error(hapax_gateway: GatewayFactory,
                                                     fake_provider: FakeProvider,
                                                     second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    second.default = Reply(status=502)
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=1))
    with pytest.raises(openai.InternalServerError) as info:
        chat(gw)
    assert info.value.status_code == 502
    assert info.value.response.headers["x-hapax-provider"] == "secondary"
    assert len(fake_provider.requests) == 2
    assert len(second.requests) == 2
    metrics = gw.gateway.metrics.render().decode()
    assert 'hapax_failovers_total{model="m"} 1' in metrics
    assert 'hapax_retries_total{model="m",reason="500"} 1' in metrics


def test_stream_fails_over_before_the_first_event(hapax_gateway: GatewayFactory,
                                                  fake_provider: FakeProvider,
                                                  second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=0))
    with client(gw).chat.completions.with_streaming_response.create(
            model="m", messages=HELLO, stream=True) as resp:
        assert resp.headers["x-hapax-provider"] == "secondary"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text
    assert len(fake_provider.requests) == 1
    assert len(second.requests) == 1


def test_spent_retry_budget_fails_over_without_retrying(hapax_gateway: GatewayFactory,
                                                        fake_provider: FakeProvider,
                                                        second: FakeProvider) -> None:
    fake_provider.default = Reply(status=500)
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=2))
    gw.gateway.executor.budget = RetryBudget(ratio=0.0, floor=0)
    raw = chat(gw)
    assert raw.headers["x-hapax-provider"] == "secondary"
    assert len(fake_provider.requests) == 1  # no retry: straight to the next target
    assert len(second.requests) == 1


def test_retry_budget_is_a_share_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("hapax.pipeline.executor.time.monotonic", lambda: now[0])
    budget = RetryBudget(ratio=0.5, window=10.0, floor=2)
    for _ in range(10):
        budget.note_request()
    assert [budget.try_spend() for _ in range(8)] == [True] * 7 + [False]  # 2 + 0.5 x 10
    now[0] += 5.0  # half the window later: the same requests and retries still count
    assert not budget.try_spend()
    budget.note_request()
    budget.note_request()
    assert budget.try_spend() and not budget.try_spend()  # 2 + 0.5 x 12 = 8
    now[0] += 10.0  # the window has passed: only the floor is left
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
