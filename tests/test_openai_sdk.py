"""The gateway driven by the official ``openai`` SDK, sync and async.

Each test checks both sides: what the SDK parsed, and what the fake provider received
(or, for the built-in ``mock`` provider, that the answer follows its documented rules).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import openai
import pytest

from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider, Reply

HELLO = [{"role": "user", "content": "hello there"}]


def client(gw: GatewayThread, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, **kwargs)


def aclient(gw: GatewayThread, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, **kwargs)


@pytest.fixture
def gw(fake_provider: FakeProvider, hapax_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    """Alias ``gpt-test`` served by the fake under the upstream name ``upstream-1``."""
    return hapax_gateway(config_for(fake_provider.base_url, models=["gpt-test", "embed-test"],
                                    upstream_model="upstream-1"))


def mock_config(**provider: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
        "providers": {"local": {"kind": "mock", **provider}},
        "models": {"mock-chat": {"targets": [{"provider": "local"}]},
                   "mock-embed": {"targets": [{"provider": "local"}]}},
    }


# -- chat ------------------------------------------------------------------------------


def test_chat_sync(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    with client(gw) as c:
        resp = c.chat.completions.create(model="gpt-test", messages=HELLO, temperature=0.2)
    assert resp.choices[0].message.content == "Fake answer to: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 5)
    [rec] = fake_provider.requests
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.json == {"model": "upstream-1", "messages": HELLO, "temperature": 0.2}


def test_chat_async(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    async def main() -> list[str | None]:
        async with aclient(gw) as c:
            answers = await asyncio.gather(*(
                c.chat.completions.create(model="gpt-test",
                                          messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(5)))
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(main()) == [f"Fake answer to: q{i}" for i in range(5)]
    assert sorted(r.json["messages"][0]["content"] for r in fake_provider.requests) == \
        [f"q{i}" for i in range(5)]
    assert {r.json["model"] for r in fake_provider.requests} == {"upstream-1"}


def test_stream_sync(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    fake_provider.queue(Reply(content="one two three four five six", chunks=4))
    with client(gw) as c:
        stream = c.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
        chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "one two three four five six"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 4
    assert all(ch.usage is None for ch in chunks)
    [rec] = fake_provider.requests
    assert rec.json == {"model": "upstream-1", "messages": HELLO, "stream": True}
    assert rec.headers.get("Accept") == "text/event-stream"


def test_stream_async(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    fake_provider.default = Reply(content="streamed async answer", chunks=3, chunk_delay=0.01)

    async def main() -> tuple[str, str | None]:
        async with aclient(gw) as c:
            stream = await c.chat.completions.create(model="gpt-test", messages=HELLO,
                                                     stream=True)
            text, finish = "", None
            async for ch in stream:
                if ch.choices:
                    text += ch.choices[0].delta.content or ""
                    finish = ch.choices[0].finish_reason or finish
        return text, finish

    assert asyncio.run(main()) == ("streamed async answer", "stop")
    assert fake_provider.requests[0].json["stream"] is True


def test_stream_raw_ends_with_done(gw: GatewayThread) -> None:
    """The relayed stream is complete SSE ending with ``[DONE]``."""
    with client(gw) as c:
        raw = c.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO,
                                                          stream=True)
        assert raw.headers["content-type"].startswith("text/event-stream")
        body = raw.http_response.read()
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in events)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_stream_include_usage(gw: GatewayThread, fake_provider: FakeProvider,
                              asynchronous: bool) -> None:
    fake_provider.default = Reply(content="a b c d")
    kwargs: dict[str, Any] = {"model": "gpt-test", "messages": HELLO, "stream": True,
                              "stream_options": {"include_usage": True}}
    if asynchronous:
        async def main() -> list[Any]:
            async with aclient(gw) as c:
                return [ch async for ch in await c.chat.completions.create(**kwargs)]
        chunks = asyncio.run(main())
    else:
        with client(gw) as c:
            chunks = list(c.chat.completions.create(**kwargs))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens,
            last.usage.total_tokens) == (7, 4, 11)
    assert all(ch.usage is None for ch in chunks[:-1])
    assert fake_provider.requests[0].json["stream_options"] == {"include_usage": True}


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city (\u00e9t\u00e9 \u2600).",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string"},
                                      "days": {"type": "integer", "minimum": 1}},
                       "required": ["city"]},
        "strict": False,
    },
}]

TOOL_REPLY = {
    "id": "chatcmpl-tool", "object": "chat.completion", "created": 1700000000,
    "model": "upstream-1",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_tools_passthrough(gw: GatewayThread, fake_provider: FakeProvider,
                           asynchronous: bool) -> None:
    fake_provider.queue(Reply(json=TOOL_REPLY))
    kwargs: dict[str, Any] = {"model": "gpt-test", "tools": TOOLS, "tool_choice": "auto",
                              "messages": [{"role": "user", "content": "weather in Paris?"}]}
    if asynchronous:
        async def main() -> Any:
            async with aclient(gw) as c:
                return await c.chat.completions.create(**kwargs)
        resp = asyncio.run(main())
    else:
        with client(gw) as c:
            resp = c.chat.completions.create(**kwargs)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id == "call_abc" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    [rec] = fake_provider.requests
    assert rec.json["tools"] == TOOLS
    assert rec.json["tool_choice"] == "auto"
    assert rec.json["model"] == "upstream-1"


def test_n_choices(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    with client(gw) as c:
        resp = c.chat.completions.create(model="gpt-test", messages=HELLO, n=2)
    assert [ch.index for ch in resp.choices] == [0, 1]
    assert {ch.message.content for ch in resp.choices} == {"Fake answer to: hello there"}
    assert fake_provider.requests[0].json["n"] == 2


# -- embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float", None], ids=["float", "sdk-default-base64"])
def test_embeddings_fake(gw: GatewayThread, fake_provider: FakeProvider,
                         encoding: str | None) -> None:
    kwargs: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}
    with client(gw) as c:
        resp = c.embeddings.create(model="embed-test", input=["alpha", "beta"], **kwargs)
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert d.embedding == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert resp.usage.prompt_tokens == 2
    [rec] = fake_provider.requests
    assert rec.path == "/v1/embeddings"
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    assert rec.json == {"model": "upstream-1", "input": ["alpha", "beta"],
                        "encoding_format": encoding or "base64"}


def test_embeddings_async(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    async def main() -> Any:
        async with aclient(gw) as c:
            return await c.embeddings.create(model="embed-test", input="only one")

    resp = asyncio.run(main())
    assert len(resp.data) == 1
    assert resp.data[0].embedding == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert fake_provider.requests[0].json["input"] == "only one"


def test_embeddings_mock_float_and_base64(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(mock_config(dimensions=8))
    with client(gw) as c:
        as_float = c.embeddings.create(model="mock-embed", input=["x y", "z"],
                                       encoding_format="float")
        as_b64 = c.embeddings.create(model="mock-embed", input=["x y", "z"])
        again = c.embeddings.create(model="mock-embed", input=["z"], encoding_format="float")
        sized = c.embeddings.create(model="mock-embed", input="z", dimensions=3,
                                    encoding_format="float")
    for f, b in zip(as_float.data, as_b64.data, strict=True):
        assert len(f.embedding) == 8
        assert math.isclose(math.fsum(v * v for v in f.embedding), 1.0, rel_tol=1e-9)
        # base64 carries float32: equal to the float answer up to float32 precision.
        assert b.embedding == pytest.approx(f.embedding, rel=1e-5, abs=1e-6)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert again.data[0].embedding == as_float.data[1].embedding  # deterministic per input
    assert len(sized.data[0].embedding) == 3


# -- /v1/models ---------------------------------------------------------------------------


def test_models_list(hapax_gateway: Callable[..., GatewayThread],
                     fake_provider: FakeProvider) -> None:
    cfg = config_for(fake_provider.base_url, models=["alpha", "beta", "gamma-1.5"])
    cfg["models"]["*"] = {"targets": [{"provider": "fake"}]}
    gw = hapax_gateway(cfg)
    with client(gw) as c:
        ids = [m.id for m in c.models.list()]

    async def alist() -> list[str]:
        async with aclient(gw) as ac:
            return [m.id async for m in ac.models.list()]

    assert sorted(ids) == ["alpha", "beta", "gamma-1.5"]  # the catch-all is not a model
    assert sorted(asyncio.run(alist())) == sorted(ids)
    assert fake_provider.requests == []  # answered by the gateway itself


# -- response headers ------------------------------------------------------------------


def test_request_id_and_provider_headers(gw: GatewayThread) -> None:
    with client(gw) as c:
        chat = c.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO)
        assert chat.parse().choices[0].message.content == "Fake answer to: hello there"
        stream = c.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO,
                                                             stream=True)
        stream.http_response.read()
        emb = c.embeddings.with_raw_response.create(model="embed-test", input="x")
        models = c.models.with_raw_response.list()
        mine = c.chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO, extra_headers={"x-request-id": "trace-42.abc"})
    ids = set()
    for raw in (chat, stream, emb, models):
        rid = raw.headers["x-request-id"]
        assert rid.startswith("req_")
        ids.add(rid)
    assert len(ids) == 4  # each request its own id
    assert mine.headers["x-request-id"] == "trace-42.abc"
    for raw in (chat, stream, emb, mine):
        assert raw.headers["x-hapax-provider"] == "fake"
    assert models.headers["x-hapax-provider"] == "hapax"


def test_error_responses_carry_request_id(gw: GatewayThread) -> None:
    with client(gw) as c, pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="no-such-model", messages=HELLO,
                                  extra_headers={"x-request-id": "client-err-1"})
    assert info.value.response.headers["x-request-id"] == "client-err-1"
    assert info.value.response.headers["x-hapax-provider"] == "hapax"
    assert info.value.code == "model_not_found"


def test_async_raw_headers(gw: GatewayThread) -> None:
    async def main() -> Any:
        async with aclient(gw) as c:
            return await c.chat.completions.with_raw_response.create(
                model="gpt-test", messages=HELLO, extra_headers={"x-request-id": "async-id"})

    raw = asyncio.run(main())
    assert raw.headers["x-request-id"] == "async-id"
    assert raw.headers["x-hapax-provider"] == "fake"


# -- the built-in mock provider ------------------------------------------------------------


def test_mock_is_deterministic(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(mock_config())
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is a gateway"}]
    with client(gw) as c:
        first = c.chat.completions.create(model="mock-chat", messages=msgs)
        second = c.chat.completions.create(model="mock-chat", messages=msgs)
        other = c.chat.completions.create(model="mock-chat",
                                          messages=[{"role": "user", "content": "other"}])
        raw = c.chat.completions.with_raw_response.create(model="mock-chat", messages=msgs)
    answer = first.choices[0].message.content
    assert answer == "Mock answer to: what is a gateway"
    assert second.choices[0].message.content == answer
    assert second.id == first.id
    assert other.choices[0].message.content == "Mock answer to: other"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (8, 7)
    assert raw.headers["x-hapax-provider"] == "local"


@pytest.mark.parametrize("chunks", [1, 5])
def test_mock_streams_chunks(hapax_gateway: Callable[..., GatewayThread], chunks: int) -> None:
    gw = hapax_gateway(mock_config(chunks=chunks))
    with client(gw) as c:
        stream = c.chat.completions.create(model="mock-chat", messages=HELLO, stream=True,
                                           stream_options={"include_usage": True})
        got = list(stream)
        whole = c.chat.completions.create(model="mock-chat", messages=HELLO)
    pieces = [ch.choices[0].delta.content for ch in got
              if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) == chunks
    assert "".join(pieces) == whole.choices[0].message.content == "Mock answer to: hello there"
    finishes = [ch.choices[0].finish_reason for ch in got if ch.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == 5


def test_mock_async_stream(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(mock_config(chunks=3, chunk_delay="5ms"))

    async def main() -> str:
        async with aclient(gw) as c:
            stream = await c.chat.completions.create(model="mock-chat", messages=HELLO,
                                                     stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream
                            if ch.choices])

    assert asyncio.run(main()) == "Mock answer to: hello there"


def test_mock_max_tokens(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(mock_config())
    long = [{"role": "user", "content": "one two three four five six seven"}]
    with client(gw) as c:
        cut = c.chat.completions.create(model="mock-chat", messages=long, max_tokens=4)
        cut2 = c.chat.completions.create(model="mock-chat", messages=long,
                                         max_completion_tokens=2)
        roomy = c.chat.completions.create(model="mock-chat", messages=long, max_tokens=100)
        streamed = list(c.chat.completions.create(model="mock-chat", messages=long,
                                                  max_tokens=4, stream=True))
    assert cut.choices[0].message.content == "Mock answer to: one"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 4
    assert cut2.choices[0].message.content == "Mock answer"
    assert cut2.choices[0].finish_reason == "length"
    assert roomy.choices[0].finish_reason == "stop"
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == \
        "Mock answer to: one"
    assert [ch.choices[0].finish_reason for ch in streamed if ch.choices][-1] == "length"


def test_mock_tools(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(mock_config(chunks=3))
    ask = [{"role": "user", "content": "Lyon"}]
    with client(gw) as c:
        resp = c.chat.completions.create(model="mock-chat", messages=ask, tools=TOOLS)
        streamed = list(c.chat.completions.create(model="mock-chat", messages=ask, tools=TOOLS,
                                                  stream=True))
        none = c.chat.completions.create(model="mock-chat", messages=ask, tools=TOOLS,
                                         tool_choice="none")
        call = (resp.choices[0].message.tool_calls or [])[0]
        after = c.chat.completions.create(model="mock-chat", tools=TOOLS, messages=[
            *ask, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].message.content is None
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Lyon"}
    # Streamed, the arguments arrive in pieces that reassemble to the same call.
    deltas = [tc for ch in streamed if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert deltas[0].id == call.id and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [ch.choices[0].finish_reason for ch in streamed if ch.choices][-1] == "tool_calls"
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == "Mock answer to: Lyon"
    assert after.choices[0].finish_reason == "stop"
    assert after.choices[0].message.content == "Mock answer to: Lyon"
