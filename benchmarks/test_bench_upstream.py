"""Hapax's upstream client against aiohttp's, on the same stub, in the same run.

The gateway spends most of a proxied request talking to the provider, so the upstream
client was chosen by measurement (see docs/performance.md): this file is that
measurement.  Both clients send the same keep-alive POST (a ~400-byte chat request) to the
same local stub (benchmarks/load/stub.py: uvloop + httptools, a fixed chat-completion
JSON, run in its own process so the CPU column is the client's alone) and read the whole
body:

* Hapax: ``await pool.request(raw_request_bytes)`` then ``await resp.read()``
  (:class:`hapax.providers.upstream.UpstreamPool`);
* aiohttp: ``async with session.post(url, data=body, headers=...) as r: await r.read()``
  with one keep-alive ``ClientSession``.

Sequentially and with 16 requests in flight.  Baseline of each group: Hapax's client, so
the ratio reads "aiohttp costs N times as much".

``test_stream_checks`` prices the OpenAI adapter's stream checks (malformed events, error
events, a missing ``[DONE]``: hapax.providers.openai) per relayed event: the checked relay
against bare SSE framing (the baseline), and against parsing every event as JSON (the
design it replaced).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from hapax._core.sse import SSEDecoder, event_data
from hapax.providers import openai as openai_adapter
from hapax.providers.upstream import UpstreamPool

BATCH = 800
STUB = Path(__file__).parent / "load" / "stub.py"
BODY = (
    b'{"model":"bench-upstream","messages":[{"role":"system","content":"You are a concise '
    b'assistant. Answer in one sentence and do not repeat the question."},{"role":"user",'
    b'"content":"Summarise in one line why a gateway between an application and its LLM '
    b'providers should add as little latency as possible to each request."}],'
    b'"temperature":0.2,"max_tokens":64,"user":"bench-user-42"}'
)
HEADERS = {"user-agent": "hapax/bench", "content-type": "application/json",
           "authorization": "Bearer sk-upstream-bench-key"}


@pytest.fixture(scope="module")
def stub_port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"stub did not start: {line!r}"
        yield int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def raw_request(port: int) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}"
            f"content-length: {len(BODY)}\r\n\r\n").encode() + BODY


class HapaxClient:
    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = UpstreamPool("stub", "127.0.0.1", port, ssl_context=None,
                                 max_connections=64, connect_timeout=5,
                                 first_byte_timeout=30, idle_timeout=30,
                                 keepalive_timeout=60, loop=loop)
        self.data = raw_request(port)

    async def one(self) -> bytes:
        resp = await self.pool.request(self.data)
        body = await resp.read()
        assert resp.status == 200
        return body

    async def close(self) -> None:
        await self.pool.close()


class AiohttpClient:
    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60))

    async def one(self) -> bytes:
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as resp:
            body = await resp.read()
            assert resp.status == 200
            return body

    async def close(self) -> None:
        await self.session.close()


CLIENTS: dict[str, Callable[[int, asyncio.AbstractEventLoop], Any]] = {
    "hapax": HapaxClient, "aiohttp": AiohttpClient}


@pytest.mark.parametrize("concurrency", [1, 16], ids=["sequential", "c16"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_upstream_client(loop: asyncio.AbstractEventLoop, measure: Any, benchmark: Any,
                         stub_port: int, client: str, concurrency: int) -> None:
    benchmark.group = f"upstream client: {'sequential' if concurrency == 1 else 'c=16'}"
    benchmark.extra_info["aiohttp_extensions"] = not os.environ.get("AIOHTTP_NO_EXTENSIONS")

    async def make() -> Any:
        return CLIENTS[client](stub_port, loop)

    c = loop.run_until_complete(make())
    per_worker = BATCH // concurrency

    async def worker() -> None:
        one = c.one
        for _ in range(per_worker):
            await one()

    async def batch() -> None:
        if concurrency == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    first = loop.run_until_complete(c.one())
    assert first.startswith(b'{"id":"chatcmpl-bench')
    measure(lambda: loop.run_until_complete(batch()), ops=per_worker * concurrency,
            baseline=client == "hapax")
    loop.run_until_complete(c.close())


# -- stream checks --------------------------------------------------------------------------

STREAM_EVENTS = 400


def stream_pieces() -> list[bytes]:
    """A realistic chat stream as it arrives: one event per read, a word of content each."""
    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-AbCdEf0123456789", "object": "chat.completion.chunk",
            "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0123456789",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}) + b"\n\n"
    pieces = [event({"role": "assistant", "content": ""})]
    pieces += [event({"content": " word"}) for _ in range(STREAM_EVENTS - 3)]
    pieces += [event({}, "stop"), b"data: [DONE]\n\n"]
    return pieces


class Pieces:
    """Stands in for an UpstreamResponse: yields prepared reads, no socket."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._next = 0

    @property
    def done(self) -> bool:
        """Everything was read (as UpstreamResponse.done: the stream's end arrived with
        its last piece, so the relay has nothing to drain after [DONE])."""
        return self._next >= len(self._pieces)

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        if self._next >= len(self._pieces):
            raise StopAsyncIteration
        self._next += 1
        return self._pieces[self._next - 1]

    def close(self) -> None:
        pass


async def bare_relay(resp: Pieces) -> Any:
    """SSE framing only: the relay before the checks."""
    decoder = SSEDecoder()
    async for piece in resp:
        events = decoder.feed(piece)
        if events:
            yield events


async def parsing_relay(resp: Pieces) -> Any:
    """The rejected design: parse every event's data as JSON."""
    decoder = SSEDecoder()
    async for piece in resp:
        events = decoder.feed(piece)
        for ev in events:
            data = event_data(ev)
            if data is not None and data != b"[DONE]":
                obj = orjson.loads(data)
                if not isinstance(obj, dict) or "error" in obj:
                    raise ValueError(data[:80])
        if events:
            yield events


RELAYS: dict[str, Callable[[Any], Any]] = {
    "bare": bare_relay,
    "checked": lambda resp: openai_adapter._relay(resp, "bench"),
    "parse-every-event": parsing_relay,
}


@pytest.mark.parametrize("relay", list(RELAYS))
def test_stream_checks(loop: asyncio.AbstractEventLoop, measure: Any, benchmark: Any,
                       relay: str) -> None:
    benchmark.group = "stream relay, per event"
    pieces = stream_pieces()
    make = RELAYS[relay]

    async def one_stream() -> int:
        n = 0
        async for events in make(Pieces(pieces)):
            n += len(events)
        return n

    assert loop.run_until_complete(one_stream()) == STREAM_EVENTS
    measure(lambda: loop.run_until_complete(one_stream()), ops=STREAM_EVENTS,
            baseline=relay == "bare")
