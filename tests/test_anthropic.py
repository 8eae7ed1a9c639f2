"""The `anthropic` provider kind, the `POST /v1/messages` front door and translation
between the two formats (docs/anthropic.md), through the real server: the official
`anthropic` and `openai` SDKs as clients (their retries off), FakeAnthropic and
FakeProvider as upstreams speaking each wire protocol."""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from helpers import HELLO, GatewayFactory, track, wait_for
from helpers import client as openai_client

from hapax.builtins.ratelimit import estimate_tokens
from hapax.config import from_dict
from hapax.errors import ConfigError
from hapax.testing import GatewayThread
from hapax.testing.fake_anthropic import (
    PROMPT_TOKENS,
    FakeAnthropic,
    sse,
    tool_use_events,
    tool_use_message,
)
from hapax.testing.fake_provider import FakeProvider, Reply

PROVIDER_KEY = "sk-ant-provider-secret-0123456789"
GATEWAY_KEY = "hpx-test-key"
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
OPENAI_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": WEATHER["input_schema"]}}


@pytest.fixture
def second_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)


def claude(gw: GatewayThread, key: str = GATEWAY_KEY) -> anthropic.Anthropic:
    """The Anthropic SDK, sending the key as `x-api-key` (what Anthropic's API expects)."""
    return track(anthropic.Anthropic(base_url=gw.url, api_key=None,
                                     default_headers={"x-api-key": key}, max_retries=0))


def gpt(gw: GatewayThread) -> openai.OpenAI:
    return openai_client(gw, api_key=GATEWAY_KEY)


def post(gw: GatewayThread, path: str, body: dict[str, Any] | None = None,
         method: str = "POST") -> tuple[int, dict[str, str], str]:
    """A plain HTTP request with the gateway key in `x-api-key`: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, orjson.dumps(body) if body is not None else None,
                     {"x-api-key": GATEWAY_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def config(providers: dict[str, Any], models: dict[str, list[str]], **extra: Any
           ) -> dict[str, Any]:
    """Providers by name; models as alias -> provider names (upstream model `up-<alias>`)."""
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
        "providers": providers,
        "models": {alias: {"targets": [{"provider": p, "model": f"up-{alias}"} for p in names],
                           "retries": 0, "dedup": "off"}
                   for alias, names in models.items()},
        "keys": [{"name": "tester", "key": GATEWAY_KEY}],
    }
    cfg.update(extra)
    return cfg


def anthropic_provider(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {"kind": "anthropic", "base_url": fake.base_url, "api_key": PROVIDER_KEY, **extra}


@pytest.fixture
def native(hapax_gateway: GatewayFactory, fake_anthropic: FakeAnthropic) -> GatewayThread:
    """Alias `claude` on an anthropic provider."""
    return hapax_gateway(config({"anth": anthropic_provider(fake_anthropic)},
                                {"claude": ["anth"]}))


@pytest.fixture
def to_openai(hapax_gateway: GatewayFactory, fake_provider: FakeProvider) -> GatewayThread:
    """Alias `gpt` on an OpenAI-compatible provider."""
    return hapax_gateway(config({"oai": {"kind": "openai", "base_url": fake_provider.base_url}},
                                {"gpt": ["oai"]}))


def token_counts(gw: GatewayThread, alias: str, provider: str) -> tuple[float, float]:
    """(prompt, completion) from hapax_tokens_total, once the after-response stage ran."""
    def value(direction: str) -> float:
        for line in gw.gateway.metrics.render().decode().splitlines():
            if line.startswith("hapax_tokens_total{") and f'direction="{direction}"' in line \
                    and f'model="{alias}"' in line and f'provider="{provider}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    wait_for(lambda: value("completion") != 0, timeout=5)
    return value("prompt"), value("completion")


def openai_chunks(*deltas: dict[str, Any], finish: str = "stop",
                  usage: dict[str, int] | None = None) -> list[bytes]:
    """An OpenAI stream: the given deltas, a finish chunk, a usage chunk, [DONE]."""
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
            "model": "up-gpt"}

    def ev(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**base, **obj}) + b"\n\n"

    out = [ev({"choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas]
    out.append(ev({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    if usage is not None:
        out.append(ev({"choices": [], "usage": usage}))
    return [*out, b"data: [DONE]\n\n"]


# -- anthropic SDK -> anthropic provider (native) -------------------------------------------


def test_native_message_is_relayed_with_the_provider_headers(native: GatewayThread,
                                                             fake_anthropic: FakeAnthropic
                                                             ) -> None:
    raw = claude(native).messages.with_raw_response.create(
        model="claude", max_tokens=50, messages=HELLO,
        extra_headers={"anthropic-beta": "tools-2024-05-16", "x-request-id": "my-req-1"})
    msg = raw.parse()
    assert msg.content[0].type == "text" and msg.content[0].text == "Fake answer to: hello"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (PROMPT_TOKENS, 4)
    assert raw.headers["x-hapax-provider"] == "anth"
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "my-req-1"
    seen = fake_anthropic.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == PROVIDER_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    # Answers are read (translated, checked): asked for uncompressed.
    assert {k.lower(): v for k, v in seen.headers.items()}["accept-encoding"] == "identity"
    assert seen.headers["anthropic-beta"] == "tools-2024-05-16"
    assert "authorization" not in {k.lower() for k in seen.headers}
    assert seen.json == {"model": "up-claude", "max_tokens": 50, "messages": HELLO}
    assert token_counts(native, "claude", "anth") == (PROMPT_TOKENS, 4)


def test_native_stream_relays_the_event_sequence(native: GatewayThread) -> None:
    with claude(native).messages.create(model="claude", max_tokens=50, messages=HELLO,
                                        stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert token_counts(native, "claude", "anth") == (PROMPT_TOKENS, 4)


def test_native_stream_helper_builds_the_final_message(native: GatewayThread) -> None:
    with claude(native).messages.stream(model="claude", max_tokens=50,
                                        messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == "Fake answer to: hello"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 4


def test_native_tool_use_round_trip(native: GatewayThread,
                                    fake_anthropic: FakeAnthropic) -> None:
    client = claude(native)
    fake_anthropic.queue(Reply(json=tool_use_message("get_weather", {"city": "Paris"})))
    first = client.messages.create(model="claude", max_tokens=50, messages=HELLO,
                                   tools=[WEATHER])  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use" and call.input == {"city": "Paris"}
    history = [*HELLO, {"role": "assistant", "content": [c.model_dump(exclude_none=True)
                                                          for c in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": "sunny"}]}]
    second = client.messages.create(model="claude", max_tokens=50, messages=history,
                                    tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert second.content[0].type == "text"
    # Same format both sides: the body goes up as the client sent it, model replaced.
    assert fake_anthropic.requests[-1].json["messages"][2]["content"][0] == {
        "type": "tool_result", "tool_use_id": "toolu_fake1", "content": "sunny"}
    assert fake_anthropic.requests[-1].json["tools"] == [WEATHER]


def test_provider_4xx_passes_through_in_anthropics_format(native: GatewayThread,
                                                          fake_anthropic: FakeAnthropic
                                                          ) -> None:
    fake_anthropic.queue(Reply(status=400, json={"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages.0.content: empty"}}),
        Reply(status=429, headers={"retry-after": "7",
                                   "anthropic-ratelimit-requests-remaining": "0"}))
    client = claude(native)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude", max_tokens=50, messages=HELLO)
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages.0.content: empty"}}
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude", max_tokens=50, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_gateway_errors_use_anthropics_envelope(native: GatewayThread) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        claude(native, key="wrong-key").messages.create(model="claude", max_tokens=5,
                                                        messages=HELLO)
    assert denied.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid API key"}}
    client = claude(native)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=5, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    if True:
        for body, param in [({"model": "claude", "messages": HELLO}, "max_tokens"),
                            ({"model": "claude", "max_tokens": 0, "messages": HELLO},
                             "max_tokens"),
                            ({"model": "claude", "max_tokens": 5, "messages": []}, "messages"),
                            ({"model": "claude", "max_tokens": 5, "messages": HELLO,
                              "stream": "yes"}, "stream")]:
            status, _, text = post(native, "/v1/messages", body)
            assert status == 400, body
            err = json.loads(text)
            assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
            assert param in err["error"]["message"]
    status, headers, text = post(native, "/messages", method="GET")
    assert status == 405 and json.loads(text)["type"] == "error"


def test_bearer_key_is_accepted_too(native: GatewayThread) -> None:
    c = track(anthropic.Anthropic(base_url=native.url, api_key=GATEWAY_KEY, max_retries=0))
    assert c.messages.create(model="claude", max_tokens=5, messages=HELLO).content


def test_529_and_500_are_retried_then_failed_over(hapax_gateway: GatewayFactory,
                                                  fake_anthropic: FakeAnthropic,
                                                  second_anthropic: FakeAnthropic) -> None:
    cfg = config({"primary": anthropic_provider(fake_anthropic),
                  "secondary": anthropic_provider(second_anthropic)},
                 {"claude": ["primary", "secondary"]})
    cfg["models"]["claude"]["retries"] = 1
    fake_anthropic.queue(Reply(status=529), Reply(status=500))
    gw = hapax_gateway(cfg)
    raw = claude(gw).messages.with_raw_response.create(model="claude", max_tokens=5,
                                                       messages=HELLO)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-hapax-provider"] == "secondary"
    assert len(fake_anthropic.requests) == 2 and len(second_anthropic.requests) == 1
    assert 'hapax_retries_total{model="claude",reason="529"} 1' in \
        gw.gateway.metrics.render().decode()


@pytest.mark.parametrize(("reply", "says"), [(Reply(status=529), "answered 529"),
                                             (Reply(reset=True), "'anth'")],
                         ids=["529", "reset"])
def test_upstream_failure_is_a_502_in_anthropics_format(native: GatewayThread,
                                                        fake_anthropic: FakeAnthropic,
                                                        reply: Reply, says: str) -> None:
    fake_anthropic.queue(reply)
    with pytest.raises(anthropic.APIStatusError) as failed:
        claude(native).messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert says in failed.value.body["error"]["message"]  # type: ignore[index]


def test_error_event_before_anything_was_sent_fails_over(
        hapax_gateway: GatewayFactory, fake_anthropic: FakeAnthropic,
        second_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(events=[sse({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})]))
    gw = hapax_gateway(config({"primary": anthropic_provider(fake_anthropic),
                               "secondary": anthropic_provider(second_anthropic)},
                              {"claude": ["primary", "secondary"]}))
    with claude(gw).messages.stream(model="claude", max_tokens=5, messages=HELLO) as stream:
        assert stream.get_final_message().content[0].type == "text"
    assert len(second_anthropic.requests) == 1


@pytest.mark.parametrize("reply", [
    Reply(drop_after_events=4, chunk_delay=0.1),
    Reply(chunk_delay=0.1, events=tool_use_events("t", {"a": 1})[:2] + [
        sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]),
    Reply(chunk_delay=0.1, events=tool_use_events("t", {"a": 1})[:2] + [
        b"event: content_block_delta\ndata: [not json\n\n"]),
    Reply(chunk_delay=0.1, events=tool_use_events("t", {"a": 1})[:-1]),  # no message_stop
], ids=["dropped", "error-event", "malformed", "no-message-stop"])
def test_mid_stream_failure_ends_with_an_error_event(native: GatewayThread,
                                                     fake_anthropic: FakeAnthropic,
                                                     reply: Reply) -> None:
    fake_anthropic.queue(reply)
    with pytest.raises(anthropic.APIStatusError):  # noqa: PT012 - the stream is the call
        with claude(native).messages.stream(model="claude", max_tokens=5,
                                            messages=HELLO) as stream:
            stream.get_final_message()
    fake_anthropic.queue(reply)
    body = {"model": "claude", "max_tokens": 5, "messages": HELLO, "stream": True}
    status, _, text = post(native, "/v1/messages", body)
    assert status == 200
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "api_error"
    assert "event: message_stop" not in text


def test_deadline_is_a_504_in_anthropics_format(native: GatewayThread,
                                                fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as late:
        claude(native).messages.create(model="claude", max_tokens=5, messages=HELLO,
                                       extra_headers={"x-hapax-timeout": "500ms"})
    assert time.monotonic() - started < 5
    assert late.value.status_code == 504
    assert late.value.body["type"] == "error"  # type: ignore[index]


def test_a_complete_anthropic_stream_is_cached(hapax_gateway: GatewayFactory,
                                               fake_anthropic: FakeAnthropic) -> None:
    cfg = config({"anth": anthropic_provider(fake_anthropic)}, {"claude": ["anth"]})
    cfg["models"]["claude"]["cache"] = {"ttl": "60s"}
    gw = hapax_gateway(cfg)
    texts = []
    for expected in ("miss", "hit"):
        with claude(gw).messages.with_streaming_response.create(
                model="claude", max_tokens=5, messages=HELLO, stream=True) as raw:
            assert raw.headers["x-hapax-cache"] == expected
            texts.append(b"".join(raw.iter_bytes()))
    assert texts[0] == texts[1] and b"message_stop" in texts[0]
    assert len(fake_anthropic.requests) == 1


def test_identical_anthropic_streams_share_one_upstream_call(hapax_gateway: GatewayFactory,
                                                             fake_anthropic: FakeAnthropic
                                                             ) -> None:
    cfg = config({"anth": anthropic_provider(fake_anthropic)}, {"claude": ["anth"]})
    cfg["models"]["claude"]["dedup"] = "always"
    gw = hapax_gateway(cfg)
    fake_anthropic.queue(Reply(delay=1.0, chunk_delay=0.05))

    def ask() -> tuple[str, str]:
        with claude(gw).messages.with_streaming_response.create(
                model="claude", max_tokens=5, messages=HELLO, stream=True) as raw:
            return raw.headers["x-hapax-dedup"], b"".join(raw.iter_bytes()).decode()

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(lambda _: ask(), range(2)))
    assert [role for role, _ in answers] == ["follower", "leader"]
    assert answers[0][1] == answers[1][1]
    assert answers[0][1].rstrip().endswith('data: {"type":"message_stop"}')
    assert len(fake_anthropic.requests) == 1


# -- anthropic SDK -> OpenAI-compatible provider --------------------------------------------


def test_anthropic_request_is_translated_for_an_openai_provider(to_openai: GatewayThread,
                                                                fake_provider: FakeProvider
                                                                ) -> None:
    history = [{"role": "user", "content": "weather in Paris?"},
               {"role": "assistant", "content": [
                   {"type": "text", "text": "Let me look."},
                   {"type": "tool_use", "id": "call_1", "name": "get_weather",
                    "input": {"city": "Paris"}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                   {"type": "text", "text": "and tomorrow?"}]}]
    msg = claude(to_openai).messages.create(
        model="gpt", max_tokens=64, system="Be brief.", messages=history,  # type: ignore[arg-type]
        tools=[WEATHER], stop_sequences=["END"], extra_body={"temperature": 0.5})  # type: ignore[list-item]
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].text == "Fake answer to: and tomorrow?"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 5)
    up = fake_provider.requests[-1].json
    assert up["model"] == "up-gpt" and up["max_tokens"] == 64
    assert up["stop"] == ["END"] and up["temperature"] == 0.5
    assert up["tools"] == [OPENAI_WEATHER]
    assert up["messages"][0] == {"role": "system", "content": "Be brief."}
    assert up["messages"][1] == {"role": "user", "content": "weather in Paris?"}
    assert up["messages"][2]["role"] == "assistant"
    assert up["messages"][2]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(up["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris"}
    assert {"role": "tool", "tool_call_id": "call_1", "content": "sunny"} in up["messages"]
    assert up["messages"][-1]["role"] == "user"
    assert token_counts(to_openai, "gpt", "oai") == (7, 5)


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "max_tokens"),
                                                      ("tool_calls", "tool_use")])
def test_openai_answers_are_translated_back(to_openai: GatewayThread,
                                            fake_provider: FakeProvider, finish: str,
                                            stop_reason: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "partial"}
    if finish == "tool_calls":
        message = {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_9", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    fake_provider.queue(Reply(json={
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "up-gpt",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}))
    msg = claude(to_openai).messages.create(model="gpt", max_tokens=3, messages=HELLO,
                                            tools=[WEATHER])  # type: ignore[list-item]
    assert msg.stop_reason == stop_reason
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 3)
    block = msg.content[0]
    if finish == "tool_calls":
        assert block.type == "tool_use" and block.id == "call_9"
        assert block.name == "get_weather" and block.input == {"city": "Oslo"}
    else:
        assert block.type == "text" and block.text == "partial"


def test_openai_stream_is_translated_for_the_anthropic_sdk(to_openai: GatewayThread,
                                                           fake_provider: FakeProvider) -> None:
    with claude(to_openai).messages.stream(model="gpt", max_tokens=50,
                                           messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Fake answer to: hello"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4
    up = fake_provider.requests[-1].json
    assert up["stream"] is True and up["stream_options"] == {"include_usage": True}
    assert token_counts(to_openai, "gpt", "oai") == (7, 4)


def test_openai_tool_call_stream_becomes_a_tool_use_block(to_openai: GatewayThread,
                                                          fake_provider: FakeProvider) -> None:
    fake_provider.queue(Reply(chunk_delay=0.01, events=openai_chunks(
        {"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Rome"}'}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11})))
    with claude(to_openai).messages.stream(model="gpt", max_tokens=50, messages=HELLO,
                                           tools=[WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.id == "call_7"
    assert block.input == {"city": "Rome"}
    assert final.usage.output_tokens == 6


def test_openai_4xx_is_translated_to_anthropics_envelope(to_openai: GatewayThread,
                                                         fake_provider: FakeProvider) -> None:
    fake_provider.queue(Reply(status=400, json={"error": {
        "message": "bad temperature", "type": "invalid_request_error", "param": "temperature",
        "code": None}}))
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(to_openai).messages.create(model="gpt", max_tokens=5, messages=HELLO)
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "bad temperature"}}


def test_openai_stream_without_done_is_cut_for_the_anthropic_client(
        to_openai: GatewayThread, fake_provider: FakeProvider) -> None:
    fake_provider.queue(Reply(chunk_delay=0.1, events=openai_chunks({"content": "Hi"})[:-1]))
    body = {"model": "gpt", "max_tokens": 5, "messages": HELLO, "stream": True}
    status, _, text = post(to_openai, "/v1/messages", body)
    assert status == 200
    assert text.strip().split("\n\n")[-1].startswith("event: error\n")
    assert "event: message_stop" not in text


# -- openai SDK -> anthropic provider -----------------------------------------------------


def test_openai_request_is_translated_for_an_anthropic_provider(native: GatewayThread,
                                                                fake_anthropic: FakeAnthropic
                                                                ) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "toolu_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "user", "content": "thanks"}]
    done = gpt(native).chat.completions.create(
        model="claude", messages=messages, tools=[OPENAI_WEATHER],  # type: ignore[arg-type,list-item]
        max_tokens=40, stop="END")
    assert done.choices[0].message.content == "Fake answer to: thanks"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (PROMPT_TOKENS, 4)
    seen = fake_anthropic.requests[-1]
    assert seen.headers["x-api-key"] == PROVIDER_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    up = seen.json
    assert up["model"] == "up-claude" and up["max_tokens"] == 40
    assert up["system"] == "Be brief." and up["stop_sequences"] == ["END"]
    assert up["tools"] == [WEATHER]
    assert up["messages"][0] == {"role": "user", "content": "weather?"}
    assert up["messages"][1]["role"] == "assistant"
    assert up["messages"][1]["content"][-1] == {"type": "tool_use", "id": "toolu_1",
                                                "name": "get_weather",
                                                "input": {"city": "Paris"}}
    results = [b for m in up["messages"] if isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"]
    assert results and results[0]["tool_use_id"] == "toolu_1"
    assert token_counts(native, "claude", "anth") == (PROMPT_TOKENS, 4)


def test_anthropic_tool_use_answer_becomes_tool_calls(native: GatewayThread,
                                                      fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(json=tool_use_message("get_weather", {"city": "Lima"},
                                                     text="Checking.")))
    done = gpt(native).chat.completions.create(model="claude", messages=HELLO,  # type: ignore[arg-type]
                                               tools=[OPENAI_WEATHER])  # type: ignore[list-item]
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id == "toolu_fake1" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Lima"}  # type: ignore[union-attr]


def test_anthropic_stream_is_translated_for_the_openai_sdk(native: GatewayThread,
                                                           fake_anthropic: FakeAnthropic) -> None:
    stream = gpt(native).chat.completions.create(
        model="claude", messages=HELLO, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake answer to: hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake_anthropic.requests[-1].json["stream"] is True


def test_anthropic_tool_stream_is_reassembled_by_the_openai_sdk(native: GatewayThread,
                                                                fake_anthropic: FakeAnthropic
                                                                ) -> None:
    fake_anthropic.queue(Reply(chunk_delay=0.01, events=tool_use_events(
        "get_weather", {"city": "Kyoto", "days": 3}, pieces=4)))
    stream = gpt(native).chat.completions.create(model="claude", messages=HELLO,  # type: ignore[arg-type]
                                                 tools=[OPENAI_WEATHER],  # type: ignore[list-item]
                                                 stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["id"] == "toolu_fake1" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Kyoto", "days": 3}
    # Usage is known without include_usage: read from Anthropic's events.
    assert token_counts(native, "claude", "anth") == (PROMPT_TOKENS, 12)


def test_anthropic_4xx_is_translated_to_openais_envelope(native: GatewayThread,
                                                         fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(status=429, headers={"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError) as limited:
        gpt(native).chat.completions.create(model="claude", messages=HELLO)  # type: ignore[arg-type]
    assert limited.value.body == {"message": "fake error 429", "type": "rate_limit_error",
                                  "param": None, "code": "rate_limit_exceeded"}
    assert limited.value.response.headers["retry-after"] == "3"


def test_openai_mid_stream_failure_from_anthropic_raises_in_the_sdk(
        native: GatewayThread, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(drop_after_events=4, chunk_delay=0.1))
    stream = gpt(native).chat.completions.create(model="claude", messages=HELLO,  # type: ignore[arg-type]
                                                 stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_embeddings_cannot_go_to_an_anthropic_provider(native: GatewayThread,
                                                       fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        gpt(native).embeddings.create(model="claude", input="hi")
    assert bad.value.code == "unsupported_endpoint"
    assert "cannot serve embeddings" in bad.value.message
    assert fake_anthropic.requests == []


def test_untranslatable_request_is_a_400_in_the_front_doors_format(
        native: GatewayThread, fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        gpt(native).chat.completions.create(model="claude", messages=HELLO, n=2)  # type: ignore[arg-type]
    assert bad.value.param == "n"
    assert fake_anthropic.requests == []


def test_unknown_url_of_an_anthropic_client_is_a_404_in_its_format(
        native: GatewayThread) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:  # no such endpoint here
        claude(native).messages.count_tokens(model="claude", messages=HELLO)
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error",
        "message": "Unknown request URL: POST /v1/messages/count_tokens"}}
    # By its header too; an OpenAI client's unknown URL keeps OpenAI's envelope.
    status, _, body = post(native, "/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    conn = http.client.HTTPConnection("127.0.0.1", native.port, timeout=10)
    try:
        conn.request("POST", "/v1/nothing", b"{}", {"anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        assert resp.status == 404
        assert json.loads(resp.read())["error"]["type"] == "not_found_error"
    finally:
        conn.close()


# -- config, keys and logs ------------------------------------------------------------------


def test_provider_key_appears_in_no_response_or_log(hapax_gateway: GatewayFactory,
                                                    fake_anthropic: FakeAnthropic,
                                                    tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log = tmp_path / "access.log"
    cfg = config({"anth": anthropic_provider(fake_anthropic)}, {"claude": ["anth"]},
                 server={"host": "127.0.0.1", "port": 0,
                         "access_log": {"format": "json", "path": str(log)}})
    gw = hapax_gateway(cfg)
    fake_anthropic.queue(Reply(status=401, json={"type": "error", "error": {
        "type": "authentication_error", "message": "invalid x-api-key"}}))
    seen = []
    for stream in (False, False, True):
        status, headers, text = post(gw, "/v1/messages", {
            "model": "claude", "max_tokens": 5, "messages": HELLO, "stream": stream})
        seen.append(str(headers) + text)
    status, headers, text = post(gw, "/v1/chat/completions",
                                 {"model": "claude", "messages": HELLO})
    seen.append(str(headers) + text)
    gw.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [rec["status"] for rec in lines] == [401, 200, 200, 200]
    assert [(rec["tokens_in"], rec["tokens_out"]) for rec in lines[1:]] == [
        (PROMPT_TOKENS, 4)] * 3
    assert all(PROVIDER_KEY not in text for text in seen)
    assert PROVIDER_KEY not in log.read_text()
    assert PROVIDER_KEY not in caplog.text


def test_anthropic_provider_config() -> None:
    with pytest.raises(ConfigError) as missing:
        from_dict({"providers": {"a": {"kind": "anthropic"}},
                   "models": {"m": {"targets": [{"provider": "a"}]}}})
    assert "providers.a.api_key" in str(missing.value)
    cfg = from_dict({"providers": {"a": {"kind": "anthropic", "api_key": "k"}},
                     "models": {"m": {"targets": [{"provider": "a"}]}}})
    assert cfg.providers["a"].anthropic_version == "2023-06-01"
    assert 529 in cfg.models["m"].retry_on


def test_base_url_ending_in_v1_is_accepted(hapax_gateway: GatewayFactory,
                                           fake_anthropic: FakeAnthropic) -> None:
    gw = hapax_gateway(config({"anth": anthropic_provider(
        fake_anthropic, base_url=fake_anthropic.base_url + "/v1/",
        anthropic_version="2099-01-01", headers={"x-extra": "1"})}, {"claude": ["anth"]}))
    claude(gw).messages.create(model="claude", max_tokens=5, messages=HELLO)
    seen = fake_anthropic.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["anthropic-version"] == "2099-01-01"
    assert seen.headers["x-extra"] == "1"


def test_token_estimate_counts_anthropics_system_prompt() -> None:
    body = {"system": [{"type": "text", "text": "x" * 400}], "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]}
    assert estimate_tokens(body, 4, 256) == 100 + 10 + 10
    assert estimate_tokens({**body, "system": "z" * 40}, 4, 256) == 10 + 10 + 10
