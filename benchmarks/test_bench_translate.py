"""What translating a stream between the Anthropic and OpenAI APIs costs per event.

Each group times 1000 typical text-delta events (one token of text) per round, fed one at
a time, after the stream's opening events, against:

* ``relay`` (the baseline): ``event_data`` of the same event — the least the gateway does
  to an event it relays unchanged (it looks at the data to spot errors and ``[DONE]``);
* ``loads+dumps``: ``orjson.loads`` + ``orjson.dumps`` of the event's JSON, the least any
  JSON-rewriting relay costs;
* ``translate``: the stream translator's ``feed`` (parse, build the other API's event).

Groups: ``translate-openai-to-anthropic`` (an OpenAI ``chat.completion.chunk`` in, an
Anthropic ``content_block_delta`` out) and ``translate-anthropic-to-openai`` (the reverse).

Run: ``pytest benchmarks/test_bench_translate.py --benchmark-only``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from hapax._core import IMPLEMENTATION
from hapax._core.sse import event_data
from hapax.translate import AnthropicToOpenAIStream, OpenAIToAnthropicStream

BATCH = 1000

OPENAI_FIRST = (b'data: {"id":"chatcmpl-AZ3kQ8vXyJ0bT1nP5rL2mW7cD9eF4","object":'
                b'"chat.completion.chunk","created":1732590000,"model":"gpt-4o-mini-2024-07-18",'
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":"The"},'
                b'"logprobs":null,"finish_reason":null}]}\n\n')
OPENAI_TEXT = (b'data: {"id":"chatcmpl-AZ3kQ8vXyJ0bT1nP5rL2mW7cD9eF4","object":'
               b'"chat.completion.chunk","created":1732590000,"model":"gpt-4o-mini-2024-07-18",'
               b'"system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":'
               b'{"content":" fox"},"logprobs":null,"finish_reason":null}]}\n\n')
ANTHROPIC_OPENING = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":'
    b'"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],'
    b'"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":'
    b'{"input_tokens":25,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
]
ANTHROPIC_TEXT = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                  b'"delta":{"type":"text_delta","text":" fox"}}\n\n')


def batch(step: Callable[[bytes], Any], event: bytes) -> Callable[[], None]:
    def run() -> None:
        for _ in range(BATCH):
            step(event)
    return run


def loads_dumps(event: bytes) -> bytes:
    return orjson.dumps(orjson.loads(event_data(event) or b"null"))


@pytest.mark.parametrize("case", ["relay", "loads+dumps", "translate"])
def test_openai_to_anthropic(measure: Any, benchmark: Any, case: str) -> None:
    benchmark.group = "translate-openai-to-anthropic"
    benchmark.name = f"{case} [{IMPLEMENTATION}]"
    if case == "translate":
        translator = OpenAIToAnthropicStream("claude-sonnet-4-5")
        translator.feed(OPENAI_FIRST)  # message_start, the text block opened
        out = translator.feed(OPENAI_TEXT)
        assert len(out) == 1 and b'"text_delta","text":" fox"' in out[0]
        step: Callable[[bytes], Any] = translator.feed
    else:
        step = event_data if case == "relay" else loads_dumps
    measure(batch(step, OPENAI_TEXT), ops=BATCH, baseline=case == "relay")


@pytest.mark.parametrize("case", ["relay", "loads+dumps", "translate"])
def test_anthropic_to_openai(measure: Any, benchmark: Any, case: str) -> None:
    benchmark.group = "translate-anthropic-to-openai"
    benchmark.name = f"{case} [{IMPLEMENTATION}]"
    if case == "translate":
        translator = AnthropicToOpenAIStream("gpt-4o-mini", include_usage=True)
        for event in ANTHROPIC_OPENING:
            translator.feed(event)
        out = translator.feed(ANTHROPIC_TEXT)
        assert len(out) == 1 and b'"delta":{"content":" fox"}' in out[0]
        step: Callable[[bytes], Any] = translator.feed
    else:
        step = event_data if case == "relay" else loads_dumps
    measure(batch(step, ANTHROPIC_TEXT), ops=BATCH, baseline=case == "relay")
