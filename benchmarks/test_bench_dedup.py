"""What in-flight deduplication costs a worker, and what sharing across processes would.

* ``dedup-pipeline-sequential``: ``Gateway.handle`` of a temperature-0 chat request, one
  at a time, against a provider stub that answers after one trip through the event loop
  (no I/O), with
  ``dedup: off`` (baseline) and with the default ``dedup: deterministic``: every request
  then leads a flight of its own, the worst case (fingerprint, flight, task, shield,
  nothing shared).
* ``dedup-pipeline-concurrent``: 20 identical requests handled concurrently
  (``asyncio.gather``), ``off`` (baseline: 20 upstream calls) against ``deterministic``
  (one upstream call, 19 followers).  With a real provider the saving is the upstream
  call itself (network, provider time, tokens), which this stub leaves out.
* ``dedup-handoff``: handing one ~230-byte stream event to one reader: through the
  in-process replay log (append + read), against the least a cross-process hand-off
  costs: ``os.write`` + ``os.read`` of the event through a pipe, in one process (a real
  one adds a wake-up of the other process's event loop).

Run: ``pytest benchmarks/test_bench_dedup.py --benchmark-only``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest

from hapax._core.flight import ReplayLog
from hapax.config import from_dict
from hapax.pipeline.exchange import Exchange
from hapax.pipeline.gateway import Gateway
from hapax.providers.base import Provider
from hapax.types import Response

BATCH = 1000
CROWD = 20
COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-upstream","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":57,"completion_tokens":11,"total_tokens":68}}'
)
BODY = orjson.dumps({
    "model": "bench",
    "messages": [{"role": "system", "content": "You are a concise assistant."},
                 {"role": "user", "content": "Why should a gateway add little latency?"}],
    "temperature": 0, "max_tokens": 64, "user": "bench-user-42"})
HEADERS = {"host": "127.0.0.1:8080", "content-type": "application/json",
           "content-length": str(len(BODY)), "authorization": "Bearer sk-bench"}
EVENT = (b'data: {"id":"chatcmpl-AZ3kQ8vXyJ0bT1nP5rL2mW7cD9eF4","object":"chat.completion.chunk"'
         b',"created":1732590000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
         b'"delta":{"content":" fox"},"logprobs":null,"finish_reason":null}]}\n\n')


class CannedProvider(Provider):
    kind = "canned"
    calls = 0

    async def send(self, exchange: Any, attempt: Any, endpoint: str, body: bytes) -> Response:
        CannedProvider.calls += 1
        # One trip through the event loop, as any real upstream call makes (at least):
        # without it, requests without dedup would never wait, and followers always do.
        await asyncio.sleep(0)
        return Response(200, COMPLETION, [(b"content-type", b"application/json")])


class CannedPlugin:
    def hapax_register_providers(self, register: Any) -> None:
        register("canned", CannedProvider)


def gateway(loop: asyncio.AbstractEventLoop, dedup: str) -> Gateway:
    raw = {"server": {"access_log": {"format": "off"}},
           "providers": {"canned": {"kind": "canned"}},
           "models": {"bench": {"targets": [{"provider": "canned"}], "dedup": dedup}},
           "keys": [{"name": "bench", "key": "sk-bench"}]}
    gw = Gateway(from_dict(raw, "<bench>"), plugins=[("bench-canned", CannedPlugin())])
    loop.run_until_complete(gw.start())
    return gw


async def one(gw: Gateway) -> int:
    ex = Exchange("POST", "/v1/chat/completions", dict(HEADERS), BODY,
                  client=("127.0.0.1", 50000))
    resp = await gw.handle(ex)
    gw.finish(ex)
    return resp.status


@pytest.mark.benchmark(group="dedup-pipeline-sequential: one request at a time")
@pytest.mark.parametrize("dedup", ["off", "deterministic"])
def test_sequential(loop: asyncio.AbstractEventLoop, measure: Any, dedup: str) -> None:
    gw = gateway(loop, dedup)

    async def batch() -> None:
        for _ in range(BATCH):
            assert await one(gw) == 200
            await asyncio.sleep(0)

    CannedProvider.calls = 0
    loop.run_until_complete(batch())
    assert CannedProvider.calls == BATCH  # nothing to share one at a time
    measure(lambda: loop.run_until_complete(batch()), ops=BATCH, baseline=dedup == "off")
    loop.run_until_complete(gw.close())


@pytest.mark.benchmark(group="dedup-pipeline-concurrent: 20 identical requests at once")
@pytest.mark.parametrize("dedup", ["off", "deterministic"])
def test_concurrent(loop: asyncio.AbstractEventLoop, measure: Any, dedup: str) -> None:
    gw = gateway(loop, dedup)
    rounds = BATCH // CROWD

    async def batch() -> None:
        for _ in range(rounds):
            await asyncio.gather(*(one(gw) for _ in range(CROWD)))
            await asyncio.sleep(0)

    CannedProvider.calls = 0
    loop.run_until_complete(batch())
    assert CannedProvider.calls == (BATCH if dedup == "off" else rounds)
    measure(lambda: loop.run_until_complete(batch()), ops=BATCH, baseline=dedup == "off")
    loop.run_until_complete(gw.close())


@pytest.mark.benchmark(group="dedup-handoff: one stream event to one reader")
def test_handoff_replay_log(measure: Any) -> None:
    def run() -> None:
        log = ReplayLog(16 * 1024)
        sid = log.subscribe()
        for _ in range(BATCH):
            log.append(EVENT)
            log.read(sid)

    measure(run, ops=BATCH)


@pytest.mark.benchmark(group="dedup-handoff: one stream event to one reader")
def test_handoff_pipe(measure: Any) -> None:
    r, w = os.pipe()
    n = len(EVENT)

    def run() -> None:
        for _ in range(BATCH):
            os.write(w, EVENT)
            os.read(r, n)

    try:
        measure(run, ops=BATCH, baseline=True)
    finally:
        os.close(r)
        os.close(w)
