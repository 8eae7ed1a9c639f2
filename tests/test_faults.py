"""Fault injection through the real server: one test per failure a provider can show.

Each test runs a gateway (its own, so a circuit breaker opened by one test cannot
affect another) in front of a model with two targets, two fake OpenAI-compatible
providers (hapax.testing.fake_provider) scripted to fail in one way, and asserts both
what the client sees and what each upstream received.  Every test runs twice: with the
official ``openai`` SDK on ``/v1/chat/completions`` and with the official ``anthropic``
SDK on ``/v1/messages`` (which the gateway translates for the OpenAI-compatible fakes).
The SDKs' own retries are off, so every retry seen is the gateway's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import RawContentBlockDeltaEvent, TextDelta
from helpers import HELLO, GatewayFactory, closed_port, metric, two_targets, wait_for
from openai.types.chat import ChatCompletionChunk

from hapax.testing import GatewayThread
from hapax.testing.fake_provider import (
    DONE,
    MALFORMED,
    FakeProvider,
    RecordedRequest,
    Reply,
    chunk,
    cycle,
)

#: The stream both fakes send in the stream tests: "Hello, world" in three chunks.
STREAM = [chunk("Hello"), chunk(", wor"), chunk("ld"), chunk(finish_reason="stop"), DONE]

CONTEXT_LENGTH_MESSAGE = ("This model's maximum context length is 8192 tokens. However, your "
                          "messages resulted in 9001 tokens. Please reduce the length of the "
                          "messages.")
CONTEXT_LENGTH = {"error": {"message": CONTEXT_LENGTH_MESSAGE, "type": "invalid_request_error",
                            "param": "messages", "code": "context_length_exceeded"}}


# -- what the upstreams received and the gateway counted ------------------------------

def prompts(fake: FakeProvider) -> list[str]:
    """The last user message of every request the fake received."""
    return [_last_user_text(r) for r in fake.requests]


def _last_user_text(request: RecordedRequest) -> str:
    for message in reversed(request.json["messages"]):
        if message["role"] == "user":
            content = message["content"]
            return content if isinstance(content, str) else "".join(
                part.get("text", "") for part in content)
    return ""


# -- the two client columns ----------------------------------------------------------------

class _TapStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, received: bytearray) -> None:
        self.inner, self.received = inner, received

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.inner:
            self.received += piece
            yield piece

    def close(self) -> None:
        self.inner.close()


class _Tap(httpx2.HTTPTransport):
    """The SDK's HTTP transport, keeping a copy of the last response's bytes as they
    reach the client (the SDKs hide ``[DONE]`` and ``message_stop``)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = bytearray()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        self.received = bytearray()
        response.stream = _TapStream(response.stream, self.received)
        return response


@dataclass
class Answer:
    text: str
    provider: str | None  # the x-hapax-provider header: the target that answered


@dataclass
class Streamed:
    text: str  # the text of every delta received
    provider: str | None
    raw: bytes  # every byte of the stream as received
    error: Exception | None  # what the SDK raised mid-stream

    def has(self, start: bytes) -> bool:
        """Whether one of the stream's SSE events starts with ``start``."""
        return any(event.startswith(start) for event in self.raw.split(b"\n\n"))


class Front:
    """An official SDK on its front door: the same calls in each client's dialect."""

    name: str
    sdk: ModuleType
    #: On the wire: how the event ending a complete stream starts, and how an in-band
    #: error event starts.
    end: bytes
    error_event: bytes

    def __init__(self, gw: GatewayThread) -> None:
        self.tap = _Tap()
        self.http = httpx2.Client(transport=self.tap)

    def chat(self) -> Answer:
        raise NotImplementedError

    def stream(self) -> Streamed:
        raise NotImplementedError

    def error(self, exc: Exception) -> dict[str, Any]:
        """The error object (``message``, ``type``...) of an error the SDK raised."""
        raise NotImplementedError

    def close(self) -> None:
        self.http.close()


class OpenAIFront(Front):
    name, sdk, end, error_event = "openai", openai, b"data: [DONE]", b'data: {"error"'

    def __init__(self, gw: GatewayThread) -> None:
        super().__init__(gw)
        self.client = openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0,
                                    timeout=20, http_client=self.http)

    def chat(self) -> Answer:
        raw = self.client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
        return Answer(raw.parse().choices[0].message.content or "",
                      raw.headers.get("x-hapax-provider"))

    def stream(self) -> Streamed:
        text, error = [], None
        with self.client.chat.completions.with_streaming_response.create(
                model="m", messages=HELLO, stream=True) as resp:
            provider = resp.headers.get("x-hapax-provider")
            try:
                for c in resp.parse():
                    if isinstance(c, ChatCompletionChunk) and c.choices:
                        text.append(c.choices[0].delta.content or "")
            except openai.APIError as exc:
                error = exc
        return Streamed("".join(text), provider, bytes(self.tap.received), error)

    def error(self, exc: Exception) -> dict[str, Any]:
        assert isinstance(exc, openai.APIError) and isinstance(exc.body, dict), exc
        return exc.body

    def close(self) -> None:
        self.client.close()
        super().close()


class AnthropicFront(Front):
    name, sdk, end, error_event = ("anthropic", anthropic, b"event: message_stop",
                                   b"event: error")

    def __init__(self, gw: GatewayThread) -> None:
        super().__init__(gw)
        # The SDK appends /v1/messages to its base_url.
        self.client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-test",
                                          max_retries=0, timeout=20, http_client=self.http)

    def chat(self) -> Answer:
        raw = self.client.messages.with_raw_response.create(model="m", max_tokens=64,
                                                            messages=HELLO)
        message = raw.parse()
        return Answer("".join(b.text for b in message.content if b.type == "text"),
                      raw.headers.get("x-hapax-provider"))

    def stream(self) -> Streamed:
        text, error = [], None
        with self.client.messages.with_streaming_response.create(
                model="m", max_tokens=64, messages=HELLO, stream=True) as resp:
            provider = resp.headers.get("x-hapax-provider")
            try:
                for event in resp.parse():
                    if isinstance(event, RawContentBlockDeltaEvent) and \
                            isinstance(event.delta, TextDelta):
                        text.append(event.delta.text)
            except anthropic.APIError as exc:
                error = exc
        return Streamed("".join(text), provider, bytes(self.tap.received), error)

    def error(self, exc: Exception) -> dict[str, Any]:
        assert isinstance(exc, anthropic.APIError) and isinstance(exc.body, dict), exc
        assert exc.body.get("type") == "error", exc.body  # Anthropic's error envelope
        error: dict[str, Any] = exc.body["error"]
        return error

    def close(self) -> None:
        self.client.close()
        super().close()


Connect = Callable[[GatewayThread], Front]


@pytest.fixture(params=[OpenAIFront, AnthropicFront], ids=["openai", "anthropic"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(gw)``: a client of this column's SDK for gateway ``gw``, closed after
    the test (an unclosed SDK client leaks its sockets into later tests)."""
    made: list[Front] = []

    def make(gw: GatewayThread) -> Front:
        front: Front = request.param(gw)
        made.append(front)
        return front

    yield make
    for front in made:
        front.close()


def assert_complete(streamed: Streamed, front: Front, text: str) -> None:
    assert streamed.error is None, streamed.error
    assert streamed.text == text
    assert streamed.has(front.end)
    assert not streamed.has(front.error_event)


def assert_cut(streamed: Streamed, front: Front, text: str) -> None:
    """The stream ended with an in-band error after ``text``, never with a success end."""
    assert streamed.error is not None, streamed.raw
    assert front.error(streamed.error)["message"]
    assert streamed.text == text
    assert streamed.has(front.error_event)
    assert not streamed.has(front.end)


# -- error statuses ----------------------------------------------------------------------

def test_500_is_retried_then_failed_over(hapax_gateway: GatewayFactory, connect: Connect,
                                         primary: FakeProvider,
                                         secondary: FakeProvider) -> None:
    primary.default = Reply(status=500)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    answer = connect(gw).chat()
    assert answer.provider == "secondary"
    assert answer.text == "Fake answer to: hello"
    assert prompts(primary) == ["hello"] * 3  # 1 + retries attempts, then failover
    assert prompts(secondary) == ["hello"]
    assert all(r.json["model"] == "m" for r in primary.requests + secondary.requests)


def test_429_with_retry_after_waits_that_long(hapax_gateway: GatewayFactory,
                                             connect: Connect, primary: FakeProvider,
                                             secondary: FakeProvider) -> None:
    primary.queue(Reply(status=429, json={"error": {"message": "slow down",
                                                    "type": "rate_limit_error"}},
                        headers={"Retry-After": "1"}))
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    answer = connect(gw).chat()
    assert answer.provider == "primary"
    first, retry = primary.requests
    assert retry.at - first.at >= 0.9  # the provider asked for 1 s
    assert secondary.requests == []


def test_429_without_retry_after_backs_off_and_retries(hapax_gateway: GatewayFactory,
                                                       connect: Connect,
                                                       primary: FakeProvider,
                                                       secondary: FakeProvider) -> None:
    primary.queue(Reply(status=429), Reply(status=429))
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    answer = connect(gw).chat()
    assert answer.provider == "primary"
    assert prompts(primary) == ["hello"] * 3
    a, b, c = (r.at for r in primary.requests)
    # Full jitter: the n-th retry sleeps up to 0.1 s * 2**n (generous margins).
    assert b - a < 1.5 and c - b < 1.5
    assert secondary.requests == []
    assert metric(gw, "hapax_retries_total", model="m", reason="429") == 2


def test_429_from_every_target_reaches_the_client(hapax_gateway: GatewayFactory,
                                                  connect: Connect, primary: FakeProvider,
                                                  secondary: FakeProvider) -> None:
    primary.default = Reply(status=429, headers={"Retry-After": "3"})
    secondary.default = Reply(status=429, headers={"Retry-After": "7"})
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0))
    front = connect(gw)
    with pytest.raises(front.sdk.RateLimitError) as info:
        front.chat()
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"  # the last target's advice
    assert front.error(info.value)["message"]
    assert len(primary.requests) == 1
    assert len(secondary.requests) == 1


def test_context_length_error_is_answered_once(hapax_gateway: GatewayFactory,
                                               connect: Connect, primary: FakeProvider,
                                               secondary: FakeProvider) -> None:
    primary.default = Reply(status=400, json=CONTEXT_LENGTH)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    front = connect(gw)
    with pytest.raises(front.sdk.BadRequestError) as info:
        front.chat()
    assert info.value.status_code == 400
    error = front.error(info.value)
    assert error["message"] == CONTEXT_LENGTH_MESSAGE
    assert error["type"] == "invalid_request_error"
    if front.name == "openai":  # OpenAI's own envelope, passed on as is
        assert error == CONTEXT_LENGTH["error"]
    assert len(primary.requests) == 1  # the caller's fault: never retried...
    assert secondary.requests == []  # ...nor failed over


# -- connection faults -------------------------------------------------------------------

def test_connection_refused_fails_over(hapax_gateway: GatewayFactory, connect: Connect,
                                       secondary: FakeProvider) -> None:
    gw = hapax_gateway(two_targets(f"http://127.0.0.1:{closed_port()}/v1",
                                   secondary.base_url, retries=1))
    answer = connect(gw).chat()
    assert answer.provider == "secondary"
    assert answer.text == "Fake answer to: hello"
    assert prompts(secondary) == ["hello"]
    assert metric(gw, "hapax_upstream_errors_total", provider="primary",
                  kind="upstream_unreachable") == 2  # 1 + retries attempts, both refused


def test_connection_reset_fails_over(hapax_gateway: GatewayFactory, connect: Connect,
                                     primary: FakeProvider, secondary: FakeProvider) -> None:
    primary.default = Reply(reset=True)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=1))
    answer = connect(gw).chat()
    assert answer.provider == "secondary"
    assert answer.text == "Fake answer to: hello"
    assert prompts(primary) == ["hello"] * 2
    assert prompts(secondary) == ["hello"]


def test_no_response_fails_over_after_the_first_byte_timeout(
        hapax_gateway: GatewayFactory, connect: Connect, primary: FakeProvider,
        secondary: FakeProvider) -> None:
    primary.default = Reply(hang=True)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0,
                                   timeouts={"first_byte": "0.5s"}))
    front = connect(gw)
    started = time.monotonic()
    answer = front.chat()
    assert time.monotonic() - started < 4.5  # 0.5 s, with a wide margin: not the hang
    assert answer.provider == "secondary"
    assert len(primary.requests) == 1
    assert wait_for(lambda: primary.disconnects == 1, timeout=5)  # the gateway hung up on it
    assert prompts(secondary) == ["hello"]


def test_slow_first_byte_within_the_timeout_is_served(hapax_gateway: GatewayFactory,
                                                      connect: Connect,
                                                      primary: FakeProvider,
                                                      secondary: FakeProvider) -> None:
    primary.default = Reply(delay=0.4)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0,
                                   timeouts={"first_byte": "3s"}))
    answer = connect(gw).chat()
    assert answer.provider == "primary"
    assert answer.text == "Fake answer to: hello"
    assert len(primary.requests) == 1
    assert secondary.requests == []


def test_slow_first_byte_past_the_timeout_fails_over(hapax_gateway: GatewayFactory,
                                                     connect: Connect,
                                                     primary: FakeProvider,
                                                     secondary: FakeProvider) -> None:
    primary.default = Reply(delay=10)
    secondary.default = Reply(events=STREAM)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0,
                                   timeouts={"first_byte": "0.5s"}))
    front = connect(gw)
    started = time.monotonic()
    streamed = front.stream()
    assert time.monotonic() - started < 5  # not the primary's 10 s
    assert streamed.provider == "secondary"
    assert_complete(streamed, front, "Hello, world")
    assert len(primary.requests) == 1
    assert [r.json["stream"] for r in secondary.requests] == [True]


# -- stream faults -------------------------------------------------------------------------

def test_stream_cut_before_the_first_event_fails_over(hapax_gateway: GatewayFactory,
                                                      connect: Connect,
                                                      primary: FakeProvider,
                                                      secondary: FakeProvider) -> None:
    primary.default = Reply(events=STREAM, drop_after_events=0)
    secondary.default = Reply(events=STREAM)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0))
    front = connect(gw)
    streamed = front.stream()
    assert streamed.provider == "secondary"
    assert_complete(streamed, front, "Hello, world")
    assert prompts(primary) == ["hello"]
    assert prompts(secondary) == ["hello"]


def test_stream_cut_mid_stream_ends_with_an_error_event(hapax_gateway: GatewayFactory,
                                                        connect: Connect,
                                                        primary: FakeProvider,
                                                        secondary: FakeProvider) -> None:
    primary.default = Reply(events=STREAM, drop_after_events=2)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    front = connect(gw)
    streamed = front.stream()
    assert streamed.provider == "primary"
    assert_cut(streamed, front, "Hello, wor")  # what the primary sent before the cut
    assert len(primary.requests) == 1  # part of an answer was sent: never retried
    assert secondary.requests == []


def test_stream_stall_ends_with_an_error_event_after_idle(hapax_gateway: GatewayFactory,
                                                          connect: Connect,
                                                          primary: FakeProvider,
                                                          secondary: FakeProvider) -> None:
    primary.default = Reply(events=STREAM, stall_after_events=2)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2,
                                   timeouts={"first_byte": "5s", "idle": "0.5s"}))
    front = connect(gw)
    started = time.monotonic()
    streamed = front.stream()
    assert time.monotonic() - started < 4.5  # idle is 0.5 s, first_byte 5 s
    assert_cut(streamed, front, "Hello, wor")
    if front.name == "openai":
        assert front.error(streamed.error)["code"] == "upstream_timeout"  # type: ignore[arg-type]
    assert len(primary.requests) == 1
    assert wait_for(lambda: primary.disconnects == 1, timeout=5)  # the stalled upstream was closed
    assert secondary.requests == []


def test_malformed_chunk_ends_the_stream_with_an_error_event(hapax_gateway: GatewayFactory,
                                                             connect: Connect,
                                                             primary: FakeProvider,
                                                             secondary: FakeProvider) -> None:
    primary.queue(Reply(events=[chunk("Hello"), MALFORMED, chunk(" world"),
                                chunk(finish_reason="stop"), DONE]))
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    front = connect(gw)
    assert_cut(front.stream(), front, "Hello")
    answer = front.chat()  # the gateway (and its connection pool) still serves
    assert answer.provider == "primary"
    assert answer.text == "Fake answer to: hello"
    assert prompts(primary) == ["hello"] * 2
    assert secondary.requests == []


def test_missing_done_ends_the_stream_with_an_error_event(hapax_gateway: GatewayFactory,
                                                          connect: Connect,
                                                          primary: FakeProvider,
                                                          secondary: FakeProvider) -> None:
    primary.default = Reply(events=STREAM[:-1])  # a clean end of body, but no [DONE]
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=2))
    front = connect(gw)
    assert_cut(front.stream(), front, "Hello, world")
    assert len(primary.requests) == 1
    assert secondary.requests == []


# -- a flapping provider ---------------------------------------------------------------------

def test_flapping_primary_every_request_succeeds(hapax_gateway: GatewayFactory,
                                                 connect: Connect, primary: FakeProvider,
                                                 secondary: FakeProvider) -> None:
    primary.script = cycle(Reply(status=500), Reply())  # fails every other call
    secondary.default = Reply(content="Hello, world")
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0))
    front = connect(gw)
    served = []
    for streaming in (False, False, True, True, False, True):
        if streaming:
            streamed = front.stream()
            assert streamed.error is None and streamed.has(front.end)
            served.append(streamed.provider)
        else:
            served.append(front.chat().provider)
    # Primary calls alternate fail/ok: a failure fails over, the next request is back on it.
    assert served == ["secondary", "primary"] * 3
    assert len(primary.requests) == 6
    assert [r.reply.status for r in primary.requests if r.reply] == [500, 200] * 3
    assert len(secondary.requests) == 3


# -- the testing guide's example ---------------------------------------------------------

def test_the_testing_guide_example_passes(hapax_gateway: GatewayFactory,
                                          fake_provider: FakeProvider) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text("utf-8")
    blocks = re.findall(r"^<!-- tested: retry-after-example -->\n```python\n(.*?)^```$", text,
                        re.M | re.S)
    assert len(blocks) == 1 and text.count("```python") == 1  # every example is tested
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/testing.md", "exec"), namespace)
    [test] = [fn for name, fn in namespace.items() if name.startswith("test_")]
    test(hapax_gateway, fake_provider)
    assert len(fake_provider.requests) == 2
