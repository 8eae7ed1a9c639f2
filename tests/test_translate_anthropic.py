"""Anthropic Messages ⇄ OpenAI Chat Completions translation (hapax.translate.anthropic).

Outputs are validated against the official SDKs' types (``anthropic.types.Message``,
``openai.types.chat.ChatCompletion`` / ``ChatCompletionChunk``, the Anthropic stream event
union) and streams are reassembled with the SDKs' own accumulators, which is what a client
does with them.  Hypothesis checks that any JSON shape gives a result, BadRequest or
UpstreamError, never another exception.
"""

from __future__ import annotations

from typing import Any

import anthropic.types as at
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from hapax.errors import BadRequest, UpstreamError
from hapax.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_error_to_openai,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_error_to_anthropic,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    openai_usage,
)

STREAM_EVENT = TypeAdapter(at.RawMessageStreamEvent)
WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def anthropic_request(**extra: Any) -> dict[str, Any]:
    body = {"model": "claude-x", "max_tokens": 256,
            "messages": [{"role": "user", "content": "Hello"}]}
    body.update(extra)
    return body


def openai_request(**extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "Hello"}]}
    body.update(extra)
    return body


def bad_request(fn: Any, *args: Any, **kwargs: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# -- requests: Anthropic -> OpenAI ------------------------------------------------------


def test_anthropic_request_basic_fields() -> None:
    out = anthropic_to_openai_request(anthropic_request(
        system="Be brief.", temperature=0.3, top_p=0.9, top_k=40,
        stop_sequences=["END"], metadata={"user_id": "user-7"}, thinking={"type": "disabled"}))
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello"}],
        "max_tokens": 256, "stop": ["END"], "temperature": 0.3, "top_p": 0.9,
        "user": "user-7",
    }


def test_anthropic_request_system_blocks_and_stream() -> None:
    out = anthropic_to_openai_request(anthropic_request(
        system=[{"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Two."}], stream=True))
    assert out["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_anthropic_request_multi_turn_with_tools() -> None:
    body = anthropic_request(
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                 "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "station"},
                             {"type": "text", "text": "offline"}]},
                {"type": "text", "text": "Also, which is warmer?"}]},
        ])
    out = anthropic_to_openai_request(body)
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "station\noffline"},
        {"role": "user", "content": "Also, which is warmer?"},
    ]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER_TOOL["input_schema"]}}]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False


def test_anthropic_request_tool_only_turns() -> None:
    out = anthropic_to_openai_request(anthropic_request(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                            "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]))
    assert out["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert out["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": ""}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_anthropic_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = anthropic_to_openai_request(anthropic_request(tools=[WEATHER_TOOL],
                                                        tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_anthropic_request_images() -> None:
    out = anthropic_to_openai_request(anthropic_request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}]}]))
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"model": "m", "messages": []}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": "5"}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": True}, "max_tokens"),
    (anthropic_request(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
    (anthropic_request(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "x",
                                        "media_type": "text/plain"}}]}]),
     "messages[0].content[0].type"),
    (anthropic_request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages[0].content[0].source"),
    (anthropic_request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}]),
     "messages[0].content[0].content[0]"),
    (anthropic_request(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools[0].type"),
    (anthropic_request(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (anthropic_request(tool_choice={"type": "tool"}), "tool_choice.name"),
    (anthropic_request(stop_sequences="END"), "stop_sequences"),
    (anthropic_request(system=[{"type": "image"}]), "system[0]"),
])
def test_anthropic_request_untranslatable(body: dict[str, Any], param: str) -> None:
    assert bad_request(anthropic_to_openai_request, body).param == param


# -- requests: OpenAI -> Anthropic ------------------------------------------------------


def test_openai_request_basic_fields() -> None:
    out = openai_to_anthropic_request(openai_request(
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello"},
                  {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]}],
        max_tokens=100, temperature=1.6, top_p=0.5, stop="END", user="user-7", seed=3,
        presence_penalty=0.5, frequency_penalty=0.1, logprobs=True, n=1,
        response_format={"type": "json_object"}, stream=True,
        stream_options={"include_usage": True}))
    assert out == {
        "model": "gpt-x", "system": "Be brief.\n\nNo emoji.",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 100, "stop_sequences": ["END"], "temperature": 1, "top_p": 0.5,
        "metadata": {"user_id": "user-7"}, "stream": True,
    }


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, 4096),
    ({"max_tokens": 50}, 50),
    ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
])
def test_openai_request_max_tokens(extra: dict[str, Any], expected: int) -> None:
    assert openai_to_anthropic_request(openai_request(**extra))["max_tokens"] == expected


def test_openai_request_default_max_tokens_is_configurable() -> None:
    out = openai_to_anthropic_request(openai_request(), default_max_tokens=123)
    assert out["max_tokens"] == 123


@pytest.mark.parametrize(("temperature", "expected"), [(0, 0), (0.7, 0.7), (2, 1), (-1, 0)])
def test_openai_request_temperature_clamped(temperature: float, expected: float) -> None:
    out = openai_to_anthropic_request(openai_request(temperature=temperature))
    assert out["temperature"] == expected


def test_openai_request_multi_turn_with_tools() -> None:
    out = openai_to_anthropic_request(openai_request(
        messages=[
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Which is warmer?"},
            {"role": "assistant", "content": "Rome."},
            {"role": "system", "content": "Stay short."},
            {"role": "user", "content": "Thanks"},
            {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        ],
        tools=[{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": WEATHER_TOOL["input_schema"]}}],
        tool_choice="required", parallel_tool_calls=False))
    assert out["system"] == "Use tools.\n\nStay short."
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2",
             "content": [{"type": "text", "text": "21C"}]},
            {"type": "text", "text": "Which is warmer?"}]},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"},
                                     {"type": "text", "text": "Bye"}]},
    ]
    assert out["tools"] == [WEATHER_TOOL]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("none", False, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None,
     {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_openai_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body = openai_request(tools=[{"type": "function", "function": {"name": "get_weather"}}])
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = openai_to_anthropic_request(body)
    assert out["tool_choice"] == expected
    assert out["tools"] == [{"name": "get_weather",
                             "input_schema": {"type": "object", "properties": {}}}]


def test_openai_request_images() -> None:
    out = openai_to_anthropic_request(openai_request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg",
                                            "detail": "high"}}]}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}]


@pytest.mark.parametrize(("body", "param"), [
    (openai_request(n=2), "n"),
    (openai_request(messages="hi"), "messages"),
    (openai_request(functions=[{"name": "f"}]), "functions"),
    (openai_request(messages=[{"role": "function", "name": "f", "content": "x"}]),
     "messages[0].role"),
    (openai_request(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]),
     "messages[0].content[0].type"),
    (openai_request(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]),
     "messages[0].content[0].image_url.url"),
    (openai_request(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (openai_request(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (openai_request(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (openai_request(tools=[{"type": "custom", "custom": {"name": "c"}}]), "tools[0].type"),
    (openai_request(tool_choice="sometimes"), "tool_choice"),
    (openai_request(max_tokens=0), "max_tokens"),
    (openai_request(max_completion_tokens="9"), "max_completion_tokens"),
    (openai_request(stop=3), "stop"),
    (openai_request(temperature="hot"), "temperature"),
])
def test_openai_request_untranslatable(body: dict[str, Any], param: str) -> None:
    assert bad_request(openai_to_anthropic_request, body).param == param


# -- round trips ------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=12)
_tool_calls = st.lists(st.tuples(st.sampled_from(["f", "g"]),
                                 st.dictionaries(st.sampled_from(["a", "b"]),
                                                 st.integers(-5, 5) | _text, max_size=2)),
                       min_size=1, max_size=3)


@st.composite
def openai_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid OpenAI conversations: system, user/assistant turns, tool calls and results."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for turn in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_text)})
        if draw(st.booleans()):
            calls = draw(_tool_calls)
            messages.append({"role": "assistant", "content": draw(st.none() | _text),
                             "tool_calls": [
                {"id": f"call_{turn}_{i}", "type": "function",
                 "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
                for i, (name, args) in enumerate(calls)]})
            messages.extend({"role": "tool", "tool_call_id": f"call_{turn}_{i}",
                             "content": draw(_text)} for i in range(len(calls)))
        messages.append({"role": "assistant", "content": draw(_text)})
    return messages


def meaning(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a conversation says, without the spelling: per message the role, the text
    (parts joined), tool calls as (id, name, parsed arguments), the tool call answered."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content)
        calls = tuple((c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                      for c in m.get("tool_calls", ()))
        out.append((m["role"], content or None, calls, m.get("tool_call_id")))
    return out


@settings(max_examples=150, deadline=None)
@given(openai_conversations())
def test_round_trip_openai_anthropic_openai(messages: list[dict[str, Any]]) -> None:
    body = openai_request(messages=messages, max_tokens=64)
    back = anthropic_to_openai_request(openai_to_anthropic_request(body))
    assert meaning(back["messages"]) == meaning(messages)
    assert back["max_tokens"] == 64


def test_round_trip_anthropic_openai_anthropic() -> None:
    body = anthropic_request(system="Sys", tools=[WEATHER_TOOL],
                             tool_choice={"type": "tool", "name": "get_weather"},
                             messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
            {"type": "text", "text": "Cold?"}]},
    ])
    assert openai_to_anthropic_request(anthropic_to_openai_request(body)) == body


# -- whole responses --------------------------------------------------------------------


def chat_completion(message: dict[str, Any], finish: str = "stop",
                    usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-upstream", "choices": [{"index": 0, "message": message,
                                                  "logprobs": None, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7,
                               "total_tokens": 18}}


def anthropic_message(content: list[dict[str, Any]], stop: str | None = "end_turn",
                      usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-up",
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 11, "output_tokens": 7}}


def test_openai_response_text() -> None:
    out = openai_to_anthropic_response(
        chat_completion({"role": "assistant", "content": "Hi there"}), model="claude-x")
    assert out == {"id": "msg_chatcmpl-abc", "type": "message", "role": "assistant",
                   "model": "claude-x", "content": [{"type": "text", "text": "Hi there"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 11, "output_tokens": 7}}
    at.Message.model_validate(out)


def test_openai_response_tool_calls_and_cached_usage() -> None:
    out = openai_to_anthropic_response(chat_completion(
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109,
               "prompt_tokens_details": {"cached_tokens": 64}}), model="claude-x")
    assert out["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {"input_tokens": 36, "output_tokens": 9,
                            "cache_read_input_tokens": 64}
    assert openai_usage(out["usage"])["prompt_tokens"] == 100
    at.Message.model_validate(out)


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"), ("weird", "end_turn")])
def test_openai_finish_reasons(finish: str, stop: str) -> None:
    out = openai_to_anthropic_response(
        chat_completion({"role": "assistant", "content": "x"}, finish=finish), model="m")
    assert out["stop_reason"] == stop


@pytest.mark.parametrize("body", [
    [], {"choices": []}, {"choices": [{"message": "x"}]},
    chat_completion({"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}),
    chat_completion({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}),
])
def test_openai_response_malformed(body: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        openai_to_anthropic_response(body, model="m")
    assert info.value.status == 502
    assert "malformed" in info.value.message


def test_anthropic_response_text_and_tools() -> None:
    out = anthropic_to_openai_response(anthropic_message([
        {"type": "thinking", "thinking": "...", "signature": "s"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}],
        stop="tool_use",
        usage={"input_tokens": 5, "cache_creation_input_tokens": 10,
               "cache_read_input_tokens": 20, "output_tokens": 8}), model="gpt-x")
    assert out["id"] == "chatcmpl-msg_01"
    assert out["object"] == "chat.completion" and out["model"] == "gpt-x"
    assert isinstance(out["created"], int)
    assert out["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                               "message": {"role": "assistant", "content": "Checking now.",
                                           "tool_calls": [{
        "id": "toolu_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}}]
    assert out["usage"] == {"prompt_tokens": 35, "completion_tokens": 8, "total_tokens": 43}
    ChatCompletion.model_validate(out)


def test_anthropic_response_tools_only_has_null_content() -> None:
    out = anthropic_to_openai_response(anthropic_message([
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}], stop="tool_use"), model="m")
    assert out["choices"][0]["message"]["content"] is None
    ChatCompletion.model_validate(out)


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), (None, "stop")])
def test_anthropic_stop_reasons(stop: str | None, finish: str) -> None:
    out = anthropic_to_openai_response(
        anthropic_message([{"type": "text", "text": "x"}], stop=stop), model="m")
    assert out["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("body", [
    {}, {"content": "text"}, anthropic_message([{"type": "text"}]),
    anthropic_message([{"type": "tool_use", "input": {}}])])
def test_anthropic_response_malformed(body: Any) -> None:
    with pytest.raises(UpstreamError, match="malformed"):
        anthropic_to_openai_response(body, model="m")


def test_openai_usage() -> None:
    assert openai_usage({"input_tokens": 3, "output_tokens": 4}) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert openai_usage({"input_tokens": 3, "cache_creation_input_tokens": 2,
                         "cache_read_input_tokens": None, "output_tokens": 1}) == {
        "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert openai_usage({}) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"),
    (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (504, "api_error"),
    (503, "overloaded_error"), (529, "overloaded_error"), (418, "invalid_request_error"),
    (599, "api_error")])
def test_anthropic_error_body_type_from_status(status: int, kind: str) -> None:
    body = orjson.loads(anthropic_error_body(status, "it broke"))
    assert body == {"type": "error", "error": {"type": kind, "message": "it broke"}}
    if kind != "request_too_large":  # documented by Anthropic, missing from the SDK's union
        at.ErrorResponse.model_validate(body)


@pytest.mark.parametrize(("status", "given", "kind"), [
    (504, "timeout_error", "api_error"), (502, "upstream_error", "api_error"),
    (500, "server_error", "api_error"), (503, "server_error", "overloaded_error"),
    (429, "rate_limit_error", "rate_limit_error"),
    (400, "invalid_request_error", "invalid_request_error"),
    (401, "authentication_error", "authentication_error"),
    (529, "overloaded_error", "overloaded_error"), (400, "made_up", "invalid_request_error")])
def test_anthropic_error_body_maps_hapax_types(status: int, given: str, kind: str) -> None:
    assert orjson.loads(anthropic_error_body(status, "m", given))["error"]["type"] == kind


def test_openai_error_to_anthropic() -> None:
    body = orjson.dumps({"error": {"message": "Invalid 'messages'", "type":
                                   "invalid_request_error", "param": "messages", "code": None}})
    assert orjson.loads(openai_error_to_anthropic(400, body)) == {
        "type": "error", "error": {"type": "invalid_request_error",
                                   "message": "Invalid 'messages'"}}
    out = orjson.loads(openai_error_to_anthropic(429, b'{"error":{"message":"slow down"}}'))
    assert out["error"] == {"type": "rate_limit_error", "message": "slow down"}
    out = orjson.loads(openai_error_to_anthropic(502, b"<html>Bad Gateway</html>\n"))
    assert out["error"] == {"type": "api_error", "message": "<html>Bad Gateway</html>"}
    out = orjson.loads(openai_error_to_anthropic(500, b""))
    assert out["error"]["message"] == "the provider answered HTTP 500"


def test_anthropic_error_to_openai() -> None:
    body = anthropic_error_body(529, "Overloaded")
    assert orjson.loads(anthropic_error_to_openai(529, body)) == {"error": {
        "message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}}
    body = anthropic_error_body(400, "max_tokens: Field required")
    out = orjson.loads(anthropic_error_to_openai(400, body))
    assert out["error"]["message"] == "max_tokens: Field required"
    assert out["error"]["type"] == "invalid_request_error"
    out = orjson.loads(anthropic_error_to_openai(401, b'{"type":"error","error":{"type":'
                                                      b'"authentication_error","message":"x"}}'))
    assert out["error"]["type"] == "authentication_error"
    out = orjson.loads(anthropic_error_to_openai(504, b'{"type":"error","error":{"type":'
                                                      b'"timeout_error","message":"slow"}}'))
    assert (out["error"]["type"], out["error"]["code"]) == ("timeout_error", "upstream_timeout")
    out = orjson.loads(anthropic_error_to_openai(503, b"upstream connect error"))
    assert out["error"] == {"message": "upstream connect error", "type": "server_error",
                            "param": None, "code": "overloaded"}


# -- streams: OpenAI chunks -> Anthropic events -----------------------------------------


def oa_chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
             usage: dict[str, Any] | None = None, choices: bool = True) -> bytes:
    chunk: dict[str, Any] = {"id": "chatcmpl-s1", "object": "chat.completion.chunk",
                             "created": 1700000000, "model": "gpt-up",
                             "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                                          "finish_reason": finish}] if choices else []}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


OA_DONE = b"data: [DONE]\n\n"
OA_USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def feed_all(translator: Any, events: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for event in events:
        produced = translator.feed(event)
        assert all(ev.endswith(b"\n\n") and b"\n\n" not in ev[:-2] for ev in produced)
        out.extend(produced)
    return out


def anthropic_events(raw: list[bytes]) -> list[dict[str, Any]]:
    """Parse Anthropic SSE events, checking the ``event:`` name matches ``type``."""
    parsed = []
    for ev in raw:
        name_line, data_line = ev[:-2].split(b"\n")
        body = orjson.loads(data_line.removeprefix(b"data: "))
        assert name_line == b"event: " + body["type"].encode()
        STREAM_EVENT.validate_python(body)
        parsed.append(body)
    return parsed


def accumulate(events: list[dict[str, Any]]) -> at.Message:
    """What the anthropic SDK's stream helper builds from the events."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for body in events:
        snapshot = accumulate_event(event=STREAM_EVENT.validate_python(body),
                                    current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot


def test_openai_stream_text_only() -> None:
    tr = OpenAIToAnthropicStream("claude-x")
    raw = feed_all(tr, [
        oa_chunk({"role": "assistant", "content": ""}), b": keep-alive\n\n",
        oa_chunk({"content": "Hello"}), oa_chunk({"content": ", world"}),
        oa_chunk(finish="stop"), oa_chunk(usage=OA_USAGE, choices=False)])
    assert not tr.complete
    raw += feed_all(tr, [OA_DONE])
    assert tr.complete
    events = anthropic_events(raw)
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0]["message"]
    assert start["id"] == "msg_chatcmpl-s1" and start["model"] == "claude-x"
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"output_tokens": 5, "input_tokens": 12}
    assert tr.usage == OA_USAGE
    message = accumulate(events)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello, world"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert tr.feed(oa_chunk({"content": "late"})) == []


def test_openai_stream_tool_call_in_pieces() -> None:
    tr = OpenAIToAnthropicStream("claude-x")
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    raw = feed_all(tr, [
        oa_chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}),
        *(oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
          for p in pieces),
        oa_chunk(finish="tool_calls"), oa_chunk(usage=OA_USAGE, choices=False), OA_DONE])
    events = anthropic_events(raw)
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[1]["content_block"] == {"type": "tool_use", "id": "call_9",
                                          "name": "get_weather", "input": {}}
    assert [e["delta"] for e in events[2:5]] == [
        {"type": "input_json_delta", "partial_json": p} for p in pieces]
    message = accumulate(events)
    assert message.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_openai_stream_text_then_two_tool_calls() -> None:
    tr = OpenAIToAnthropicStream("claude-x")
    raw = feed_all(tr, [
        oa_chunk({"role": "assistant", "content": "Checking both."}),
        oa_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city"'}}]}),
        oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}),
        oa_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                  "function": {"name": "get_time", "arguments": ""}}]}),
        oa_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"tz": "CET"}'}}]}),
        oa_chunk(finish="tool_calls"), OA_DONE])
    events = anthropic_events(raw)
    starts = [e for e in events if e["type"] == "content_block_start"]
    stops = [e for e in events if e["type"] == "content_block_stop"]
    assert [s["index"] for s in starts] == [0, 1, 2] == [s["index"] for s in stops]
    message = accumulate(events)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].input == {"tz": "CET"}  # type: ignore[union-attr]
    assert message.content[2].id == "call_b"  # type: ignore[union-attr]
    assert events[-2]["usage"] == {"output_tokens": 0}  # no usage chunk upstream
    assert tr.usage is None


def test_openai_stream_done_without_chunks_is_still_a_valid_stream() -> None:
    events = anthropic_events(OpenAIToAnthropicStream("m").feed(OA_DONE))
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]


def test_openai_stream_length_stop_reason() -> None:
    tr = OpenAIToAnthropicStream("m")
    events = anthropic_events(feed_all(tr, [oa_chunk({"content": "x"}),
                                            oa_chunk(finish="length"), OA_DONE]))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


def test_openai_stream_in_band_error() -> None:
    tr = OpenAIToAnthropicStream("m")
    tr.feed(oa_chunk({"content": "x"}))
    with pytest.raises(UpstreamError, match="The server had an error"):
        tr.feed(b'data: {"error": {"message": "The server had an error", "type": '
                b'"server_error"}}\n\n')


@pytest.mark.parametrize("event", [b"data: {not json\n\n", b"data: [1, 2]\n\n",
                                   b'data: "x"\n\n'])
def test_openai_stream_malformed(event: bytes) -> None:
    with pytest.raises(UpstreamError, match="malformed chat completion chunk"):
        OpenAIToAnthropicStream("m").feed(event)


# -- streams: Anthropic events -> OpenAI chunks -----------------------------------------


def an_event(body: dict[str, Any]) -> bytes:
    return b"event: " + body["type"].encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


AN_START = an_event({"type": "message_start", "message": {
    "id": "msg_s1", "type": "message", "role": "assistant", "content": [], "model": "claude-up",
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}}})
AN_PING = an_event({"type": "ping"})
AN_STOP = an_event({"type": "message_stop"})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return an_event({"type": "content_block_start", "index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return an_event({"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> bytes:
    return an_event({"type": "content_block_stop", "index": index})


def message_delta(stop: str, output_tokens: int) -> bytes:
    return an_event({"type": "message_delta", "delta": {"stop_reason": stop,
                                                        "stop_sequence": None},
                     "usage": {"output_tokens": output_tokens}})


def openai_chunks(raw: list[bytes]) -> list[dict[str, Any]]:
    assert raw[-1] == b"data: [DONE]\n\n"
    chunks = []
    for ev in raw[:-1]:
        assert ev.startswith(b"data: ")
        chunk = orjson.loads(ev[6:])
        ChatCompletionChunk.model_validate(chunk)
        chunks.append(chunk)
    return chunks


def reassemble(chunks: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Any:
    """What the openai SDK's stream helper builds from the chunks."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    return state.get_final_completion()


def test_anthropic_stream_text_only_with_usage() -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=True)
    raw = feed_all(tr, [
        AN_START, block_start(0, {"type": "text", "text": ""}), AN_PING,
        block_delta(0, {"type": "text_delta", "text": "Hello"}),
        block_delta(0, {"type": "text_delta", "text": ", world"}),
        block_stop(0), message_delta("end_turn", 9)])
    assert not tr.complete
    raw += feed_all(tr, [AN_STOP])
    assert tr.complete
    chunks = openai_chunks(raw)
    assert [c["choices"][0]["delta"] if c["choices"] else "usage" for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": ", world"},
        {}, "usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["id"] == "chatcmpl-msg_s1" and c["model"] == "gpt-x" for c in chunks)
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 9,
                                   "total_tokens": 34}
    assert tr.usage == chunks[-1]["usage"]
    completion = reassemble(chunks)
    assert completion.choices[0].message.content == "Hello, world"
    assert completion.usage.total_tokens == 34
    assert tr.feed(AN_PING) == []


def test_anthropic_stream_without_usage_chunk() -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=False)
    raw = feed_all(tr, [AN_START, block_start(0, {"type": "text", "text": ""}),
                        block_delta(0, {"type": "text_delta", "text": "Hi"}), block_stop(0),
                        message_delta("max_tokens", 1), AN_STOP])
    chunks = openai_chunks(raw)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert tr.usage == {"prompt_tokens": 25, "completion_tokens": 1, "total_tokens": 26}


def test_anthropic_stream_tool_call_in_pieces_after_thinking() -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=True)
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    raw = feed_all(tr, [
        AN_START,
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "The user wants..."}),
        block_delta(0, {"type": "signature_delta", "signature": "abc"}), block_stop(0),
        block_start(1, {"type": "tool_use", "id": "toolu_7", "name": "get_weather",
                        "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": ""}),
        *(block_delta(1, {"type": "input_json_delta", "partial_json": p}) for p in pieces),
        block_stop(1), message_delta("tool_use", 30), AN_STOP])
    chunks = openai_chunks(raw)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"tool_calls": [{"index": 0, "id": "toolu_7", "type": "function",
                                         "function": {"name": "get_weather",
                                                      "arguments": ""}}]}
    assert deltas[2:5] == [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                           for p in pieces]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    completion = reassemble(chunks)
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("toolu_7", "get_weather")
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}


def test_anthropic_stream_text_and_two_tool_calls() -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=False)
    raw = feed_all(tr, [
        AN_START, block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "Both:"}), block_stop(0),
        block_start(1, {"type": "tool_use", "id": "toolu_a", "name": "get_weather",
                        "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}),
        block_delta(2, {"type": "input_json_delta", "partial_json": '{"tz"'}),
        block_delta(2, {"type": "input_json_delta", "partial_json": ': "CET"}'}),
        block_stop(2), message_delta("tool_use", 40), AN_STOP])
    message = reassemble(openai_chunks(raw)).choices[0].message
    assert message.content == "Both:"
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments))
            for c in message.tool_calls] == [("toolu_a", "get_weather", {"city": "Oslo"}),
                                             ("toolu_b", "get_time", {"tz": "CET"})]


def test_anthropic_stream_error_event() -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=False)
    tr.feed(AN_START)
    with pytest.raises(UpstreamError, match="Overloaded") as info:
        tr.feed(an_event({"type": "error", "error": {"type": "overloaded_error",
                                                     "message": "Overloaded"}}))
    assert info.value.status == 502
    assert not tr.complete


@pytest.mark.parametrize("events", [
    [b"event: message_start\ndata: {oops\n\n"],
    [b"data: 42\n\n"],
    [AN_START, block_delta(3, {"type": "input_json_delta", "partial_json": "{"})],
    [block_delta(0, {"type": "text_delta", "text": "early"})],
    [AN_STOP],
    [an_event({"type": "message_start", "message": "x"})],
])
def test_anthropic_stream_malformed(events: list[bytes]) -> None:
    tr = AnthropicToOpenAIStream("gpt-x", include_usage=False)
    with pytest.raises(UpstreamError, match="malformed"):
        feed_all(tr, events)


# -- fuzz: no exception other than BadRequest / UpstreamError ---------------------------

_keys = st.sampled_from(["model", "messages", "role", "content", "type", "text", "system",
                         "max_tokens", "max_completion_tokens", "tools", "tool_choice",
                         "tool_calls", "tool_call_id", "tool_use_id", "id", "name", "input",
                         "function", "arguments", "source", "image_url", "url", "data",
                         "media_type", "stop", "stop_sequences", "temperature", "n", "usage",
                         "choices", "message", "delta", "index", "finish_reason",
                         "stop_reason", "error", "content_block", "partial_json",
                         "parallel_tool_calls", "metadata", "user", "stream", "x"])
_values = st.sampled_from(["user", "assistant", "system", "developer", "tool", "text",
                           "image", "image_url", "tool_use", "tool_result", "function",
                           "auto", "any", "none", "required", "base64", "url",
                           "data:image/png;base64,AA", "https://x/y.png", "{}", "{bad",
                           "message_start", "content_block_start", "content_block_delta",
                           "message_delta", "message_stop", "text_delta", "input_json_delta",
                           "error", "stop", "tool_calls", "end_turn", "tool_use"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5) | _values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=30)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tolerates(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except (BadRequest, UpstreamError):
        pass


@st.composite
def near(draw: st.DrawFn, template: Any) -> Any:
    """A value shaped like ``template`` with a few fields dropped or replaced by any JSON:
    reaches the deep branches that random JSON alone almost never does."""
    roll = draw(st.integers(0, 19))
    if roll == 0:
        return draw(_json)
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if draw(st.integers(0, 9)):  # 1 in 10: the key is missing
                out[key] = draw(near(value))
        return out
    if isinstance(template, list):
        items = [draw(near(item)) for item in template if draw(st.integers(0, 9))]
        if roll == 1:
            items.insert(draw(st.integers(0, len(items))), draw(_json))
        return items
    return template


ANTHROPIC_REQUEST = anthropic_request(
    system=[{"type": "text", "text": "s"}], tools=[WEATHER_TOOL], stream=True,
    tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
    stop_sequences=["x"], metadata={"user_id": "u"}, temperature=0.5,
    messages=[{"role": "user", "content": [
        {"type": "text", "text": "t"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "tool_result", "tool_use_id": "t1",
         "content": [{"type": "text", "text": "r"}]}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "t"}, {"type": "thinking", "thinking": "."},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]}])
OPENAI_REQUEST = openai_request(
    n=1, max_tokens=5, max_completion_tokens=5, stop=["x"], temperature=1.5, top_p=1,
    user="u", stream=True, parallel_tool_calls=False,
    tools=[{"type": "function", "function": {"name": "f", "description": "d",
                                             "parameters": {"type": "object"}}}],
    tool_choice={"type": "function", "function": {"name": "f"}},
    messages=[
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "t"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}],
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]}])
OPENAI_COMPLETION = chat_completion(
    {"role": "assistant", "content": "x", "refusal": "r", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    usage={"prompt_tokens": 5, "completion_tokens": 1,
           "prompt_tokens_details": {"cached_tokens": 2}})
ANTHROPIC_MESSAGE = anthropic_message(
    [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    usage={"input_tokens": 1, "cache_read_input_tokens": 2, "output_tokens": 3})
OPENAI_CHUNKS = [orjson.loads(oa_chunk(d, f, u)[6:]) for d, f, u in [
    ({"role": "assistant", "content": "a", "refusal": None}, None, None),
    ({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                      "function": {"name": "f", "arguments": "{"}}]}, "tool_calls", OA_USAGE)]]
ANTHROPIC_EVENTS = [orjson.loads(ev.split(b"data: ", 1)[1]) for ev in [
    AN_START, block_start(0, {"type": "text", "text": "x"}),
    block_start(1, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
    block_delta(0, {"type": "text_delta", "text": "a"}),
    block_delta(1, {"type": "input_json_delta", "partial_json": "{"}),
    message_delta("tool_use", 3), AN_STOP,
    an_event({"type": "error", "error": {"type": "api_error", "message": "m"}})]]


@FUZZ
@given(_json)
def test_fuzz_any_json(value: Any) -> None:
    _tolerates(anthropic_to_openai_request, value)
    _tolerates(openai_to_anthropic_request, value)
    _tolerates(openai_to_anthropic_response, value, model="m")
    _tolerates(anthropic_to_openai_response, value, model="m")
    assert set(openai_usage(value)) == {"prompt_tokens", "completion_tokens", "total_tokens"}


@FUZZ
@given(near(ANTHROPIC_REQUEST))
def test_fuzz_anthropic_request(body: Any) -> None:
    _tolerates(anthropic_to_openai_request, body)


@FUZZ
@given(near(OPENAI_REQUEST))
def test_fuzz_openai_request(body: Any) -> None:
    _tolerates(openai_to_anthropic_request, body)


@FUZZ
@given(near(OPENAI_COMPLETION), near(ANTHROPIC_MESSAGE))
def test_fuzz_responses(completion: Any, message: Any) -> None:
    _tolerates(openai_to_anthropic_response, completion, model="m")
    _tolerates(anthropic_to_openai_response, message, model="m")


def _feed_tolerantly(tr: Any, chunks: list[Any]) -> None:
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [OA_DONE]
    try:
        for event in events:
            for out in tr.feed(event):
                assert out.endswith(b"\n\n")
    except UpstreamError:
        pass


@FUZZ
@given(st.lists(st.one_of([near(c) for c in OPENAI_CHUNKS]) | _json, max_size=8))
def test_fuzz_openai_stream(chunks: list[Any]) -> None:
    _feed_tolerantly(OpenAIToAnthropicStream("m"), chunks)


@FUZZ
@given(st.lists(st.one_of([near(e) for e in ANTHROPIC_EVENTS]) | _json, max_size=8),
       st.booleans())
def test_fuzz_anthropic_stream(events: list[Any], include_usage: bool) -> None:
    _feed_tolerantly(AnthropicToOpenAIStream("m", include_usage=include_usage), events)


@FUZZ
@given(st.integers(100, 599), st.binary(max_size=40) | _json.map(orjson.dumps),
       st.none() | _values)
def test_fuzz_errors(status: int, body: bytes, kind: str | None) -> None:
    for out in (openai_error_to_anthropic(status, body), anthropic_error_to_openai(status, body),
                anthropic_error_body(status, "m", kind)):
        assert isinstance(orjson.loads(out)["error"]["message"], str)
