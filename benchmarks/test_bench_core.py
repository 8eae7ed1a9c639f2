"""The Cython core against its pure-Python twins, side by side.

Each benchmark is parametrized over the implementation (``c`` and ``py``) and grouped by
operation, so pytest-benchmark's table puts the two next to each other:

* ``core-sse-decode``: a 100-event OpenAI chat-completion stream (role chunk, content
  chunks, finish chunk, ``[DONE]``; ~26 KiB) fed to a fresh decoder in 1 KiB pieces,
  then flushed; and the same stream in 61-byte pieces (small network reads, most
  events spanning several pieces);
* ``core-sse-data``: ``event_data`` on one typical content event;
* ``core-json-*``: ``find_value`` / ``replace_string_value`` of ``model`` in a ~400-byte
  chat request where it comes first, and in a ~4 KiB one where it comes last, after
  the messages.

Run: ``pytest benchmarks/test_bench_core.py --benchmark-only``.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def sse(request: pytest.FixtureRequest) -> ModuleType:
    return twin("sse", request.param)


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def core_json(request: pytest.FixtureRequest) -> ModuleType:
    return twin("json", request.param)


# -- data -------------------------------------------------------------------------------


def chat_chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` event as OpenAI sends it (~230 bytes)."""
    chunk = {
        "id": "chatcmpl-AZ3kQ8vXyJ0bT1nP5rL2mW7cD9eF4",
        "object": "chat.completion.chunk",
        "created": 1732590000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


WORDS = "The quick brown fox jumps over the lazy dog while the cat sleeps".split()
EVENTS = [
    chat_chunk({"role": "assistant", "content": ""}),
    *(chat_chunk({"content": " " + WORDS[i % len(WORDS)]}) for i in range(97)),
    chat_chunk({}, finish="stop"),
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)
assert len(EVENTS) == 100  # the stream the docstring promises


def pieces(size: int) -> list[bytes]:
    return [STREAM[i : i + size] for i in range(0, len(STREAM), size)]


QUESTION = 'What does "idempotent" mean for an HTTP method? Give one example.'
ANSWER = (
    "A method is idempotent when repeating it has the same effect as doing it once: "
    "PUT /items/42 twice leaves one item 42.\nGET, PUT and DELETE are; POST is not."
)


def chat_request(*, model_first: bool, turns: int) -> bytes:
    """A chat request: ``turns`` earlier question/answer pairs, then a question."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
    ]
    for _ in range(turns):
        messages += [{"role": "user", "content": QUESTION},
                     {"role": "assistant", "content": ANSWER}]
    messages.append({"role": "user", "content": QUESTION})
    rest = {"messages": messages, "temperature": 0.7, "top_p": 1, "max_tokens": 512,
            "presence_penalty": 0, "frequency_penalty": 0, "user": "team-7f3a9c/alice",
            "stream": True, "stream_options": {"include_usage": True}}
    body = {"model": "gpt-4o-mini", **rest} if model_first else {**rest, "model": "gpt-4o-mini"}
    return json.dumps(body).encode()


SMALL = chat_request(model_first=True, turns=0)
LARGE = chat_request(model_first=False, turns=13)
assert 350 <= len(SMALL) <= 600 and 3500 <= len(LARGE) <= 4500, (len(SMALL), len(LARGE))


# -- SSE --------------------------------------------------------------------------------


@pytest.mark.benchmark(group="core-sse-decode: 100 events in 1 KiB pieces")
def test_sse_decode_stream(benchmark: Any, sse: ModuleType) -> None:
    stream = pieces(1024)

    def decode() -> int:
        decoder = sse.SSEDecoder()
        n = 0
        for piece in stream:
            n += len(decoder.feed(piece))
        decoder.flush()
        return n

    assert benchmark(decode) == len(EVENTS)


@pytest.mark.benchmark(group="core-sse-decode: 100 events in 61-byte pieces")
def test_sse_decode_small_pieces(benchmark: Any, sse: ModuleType) -> None:
    stream = pieces(61)

    def decode() -> int:
        decoder = sse.SSEDecoder()
        n = 0
        for piece in stream:
            n += len(decoder.feed(piece))
        decoder.flush()
        return n

    assert benchmark(decode) == len(EVENTS)


@pytest.mark.benchmark(group="core-sse-data: event_data of one event")
def test_sse_event_data(benchmark: Any, sse: ModuleType) -> None:
    event = EVENTS[50]
    assert benchmark(sse.event_data, event) == event[6:-2]


# -- JSON -------------------------------------------------------------------------------

BODIES = [
    pytest.param(SMALL, id="400B-model-first"),
    pytest.param(LARGE, id="4KiB-model-last"),
]


@pytest.mark.parametrize("body", BODIES)
def test_json_find_value(benchmark: Any, core_json: ModuleType, body: bytes) -> None:
    benchmark.group = f"core-json-find: {len(body)} bytes"
    span = benchmark(core_json.find_value, body, b"model")
    assert span is not None and body[span[0] : span[1]] == b'"gpt-4o-mini"'


@pytest.mark.parametrize("body", BODIES)
def test_json_replace_string_value(benchmark: Any, core_json: ModuleType, body: bytes) -> None:
    benchmark.group = f"core-json-replace: {len(body)} bytes"
    out = benchmark(core_json.replace_string_value, body, b"model", b"gpt-4o-mini-2024-07-18")
    assert out is not None and json.loads(out)["model"] == "gpt-4o-mini-2024-07-18"
