"""The gateway's own cost per request, in-process (no sockets).

* ``pipeline`` group — ``Gateway.handle(exchange)`` for a ~400-byte chat request with an
  ``Authorization`` header and gateway keys configured, against a provider stub that
  returns a canned Response without I/O (so the figure is the gateway's own work), and
  against the built-in ``mock`` provider.  Baseline: the harness alone (building the
  Exchange and awaiting a coroutine that returns a canned Response).
* ``http11`` group — the same request as bytes through :class:`HTTP11Protocol` with a
  fake transport: parse → handle → write.  Baseline: ``handle`` alone, so the ratio is
  what the HTTP/1.1 listener adds.  And the same request refused by a gateway at its
  capacity (503 in the listener's read): what shedding one costs.

Each round drives ``BATCH`` requests inside one ``loop.run_until_complete``; the summary
at the end of the run gives µs per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hapax.config import from_dict
from hapax.pipeline.exchange import Exchange
from hapax.pipeline.gateway import Gateway
from hapax.providers.base import Provider
from hapax.server.http11 import HTTP11Protocol, ListenerState
from hapax.types import Response

BATCH = 1000
sleep0 = asyncio.sleep
KEY = "sk-bench-0123456789abcdef0123456789abcdef"

COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-upstream","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":57,"completion_tokens":11,"total_tokens":68}}'
)


def chat_body(model: str) -> bytes:
    """A ~400-byte chat completion request."""
    return orjson.dumps({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one "
                                          "sentence and do not repeat the question."},
            {"role": "user", "content": "Summarise in one line why a gateway between an "
                                        "application and its LLM providers should add as "
                                        "little latency as possible to each request."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "user": "bench-user-42",
    })


def headers_for(body: bytes, *, auth: bool = True) -> dict[str, str]:
    headers = {"host": "127.0.0.1:8080", "content-type": "application/json",
               "content-length": str(len(body)), "user-agent": "OpenAI/Python 1.50.0",
               "accept": "application/json"}
    if auth:
        headers["authorization"] = f"Bearer {KEY}"
    return headers


class CannedProvider(Provider):
    """Answers every request with the same Response, without I/O."""

    kind = "canned"

    async def send(self, exchange: Any, attempt: Any, endpoint: str, body: bytes) -> Response:
        return Response(200, COMPLETION, [(b"content-type", b"application/json")])


class CannedPlugin:
    def hapax_register_providers(self, register: Any) -> None:
        register("canned", CannedProvider)


def make_gateway(loop: asyncio.AbstractEventLoop, *, keys: bool = True) -> Gateway:
    raw: dict[str, Any] = {
        "server": {"access_log": {"format": "off"}},
        "providers": {"canned": {"kind": "canned"}, "mock": {"kind": "mock"}},
        "models": {
            "bench-stub": {"targets": [{"provider": "canned"}]},
            "bench-rewrite": {"targets": [{"provider": "canned", "model": "upstream-model"}]},
            "bench-mock": {"targets": [{"provider": "mock"}]},
        },
    }
    if keys:
        raw["keys"] = [{"name": "other", "key": "sk-some-other-key"},
                       {"name": "bench", "key": KEY}]
    gw = Gateway(from_dict(raw, "<bench>"), plugins=[("bench-canned", CannedPlugin())])
    loop.run_until_complete(gw.start())
    return gw


def handle_batch(loop: asyncio.AbstractEventLoop, gw: Gateway, body: bytes,
                 headers: dict[str, str]) -> Any:
    handle, finish = gw.handle, gw.finish

    async def batch() -> int:
        status = 0
        for _ in range(BATCH):
            ex = Exchange("POST", "/v1/chat/completions", dict(headers), body,
                          client=("127.0.0.1", 50000))
            resp = await handle(ex)
            finish(ex)
            status = resp.status
            # One loop iteration per request, as when serving: the after-response work
            # runs inside the round and exchanges do not pile up.
            await sleep0(0)
        return status

    return lambda: loop.run_until_complete(batch())


# --- pipeline -------------------------------------------------------------------------


@pytest.mark.benchmark(group="pipeline")
def test_harness_only(loop: asyncio.AbstractEventLoop, measure: Any) -> None:
    body = chat_body("bench-stub")
    headers = headers_for(body)
    canned = Response(200, COMPLETION)

    async def handle(ex: Exchange) -> Response:
        return canned

    def finish(ex: Exchange) -> None:
        pass

    async def batch() -> None:
        for _ in range(BATCH):
            ex = Exchange("POST", "/v1/chat/completions", dict(headers), body,
                          client=("127.0.0.1", 50000))
            await handle(ex)
            finish(ex)
            await sleep0(0)

    measure(lambda: loop.run_until_complete(batch()), ops=BATCH, baseline=True)


@pytest.mark.benchmark(group="pipeline")
@pytest.mark.parametrize("model,keys", [
    ("bench-stub", True),      # the headline figure: keys on, canned provider
    ("bench-stub", False),     # open gateway: no authentication work
    ("bench-rewrite", True),   # alias != upstream model: the body's model is rewritten
    ("bench-mock", True),      # the built-in mock provider (parses and builds JSON)
], ids=["canned-keys", "canned-open", "canned-rewrite", "mock-keys"])
def test_handle(loop: asyncio.AbstractEventLoop, measure: Any, model: str, keys: bool) -> None:
    gw = make_gateway(loop, keys=keys)
    body = chat_body(model)
    run = handle_batch(loop, gw, body, headers_for(body, auth=keys))
    assert run() == 200  # the walk succeeds before it is timed
    measure(run, ops=BATCH)
    loop.run_until_complete(gw.close())


# --- HTTP/1.1 listener ----------------------------------------------------------------


class FakeTransport:
    """Just enough of an asyncio transport for HTTP11Protocol; counts what is written."""

    def __init__(self) -> None:
        self.written = 0
        self.last = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def connected(loop: asyncio.AbstractEventLoop, gw: Gateway
              ) -> tuple[HTTP11Protocol, FakeTransport, bytes]:
    """A listener connection to ``gw`` on a fake transport, and the request's bytes."""
    proto = HTTP11Protocol(ListenerState(gw, loop))
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, raw_request(chat_body("bench-stub"))


def raw_request(body: bytes) -> bytes:
    head = "".join(f"{k.title()}: {v}\r\n" for k, v in headers_for(body).items())
    return f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode() + body


@pytest.mark.benchmark(group="http11")
def test_handle_only(loop: asyncio.AbstractEventLoop, measure: Any) -> None:
    gw = make_gateway(loop)
    body = chat_body("bench-stub")
    run = handle_batch(loop, gw, body, headers_for(body))
    assert run() == 200
    measure(run, ops=BATCH, baseline=True)
    loop.run_until_complete(gw.close())


@pytest.mark.benchmark(group="http11")
def test_http11_parse_handle_write(loop: asyncio.AbstractEventLoop, measure: Any) -> None:
    gw = make_gateway(loop)
    proto, transport, raw = connected(loop, gw)

    async def batch() -> None:
        for _ in range(BATCH):
            written = transport.written
            proto.data_received(raw)  # one keep-alive request, parsed and queued
            # The connection's one task serves it (and then waits for the next request:
            # it never ends on its own): wait until the response is written.
            while transport.written == written:
                await sleep0(0)

    def run() -> None:
        loop.run_until_complete(batch())

    run()
    assert transport.last.startswith(b"HTTP/1.1 200 OK\r\n") and transport.last.endswith(
        COMPLETION), transport.last[:200]
    assert not transport.closed
    measure(run, ops=BATCH)
    proto.connection_lost(None)
    loop.run_until_complete(gw.close())


@pytest.mark.benchmark(group="http11")
def test_http11_refused_while_overloaded(loop: asyncio.AbstractEventLoop, measure: Any) -> None:
    """The same request to a gateway that is at its capacity: answered 503 in the read
    that completed it (no task, no hook before it) — what a shed request costs the
    worker beyond the system calls, against the served request above."""
    gw = make_gateway(loop)
    gw.max_concurrent = 0  # at its limit for every request (the in-flight count is 0)
    proto, transport, raw = connected(loop, gw)

    async def batch() -> None:
        for _ in range(BATCH):
            proto.data_received(raw)  # answered before it returns
        await sleep0(0)  # the after-response work of the batch (scheduled with call_soon)

    def run() -> None:
        loop.run_until_complete(batch())

    run()
    assert transport.last.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), transport.last
    assert b'"code":"overloaded"' in transport.last and not transport.closed
    measure(run, ops=BATCH)
    proto.connection_lost(None)
    loop.run_until_complete(gw.close())
