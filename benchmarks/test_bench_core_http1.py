"""HTTP/1.1 message handling (hapax._core.http1), compiled against pure-Python, side by side.

What the listener does per request around httptools, on what the openai SDK sends (a
chat completion: 8 headers, the ~400-byte body does not matter here):

* ``core-http1-collect``: ``on_url`` and 8 ``on_header`` calls (httptools makes them
  on the unit directly), then ``reset`` for the next message;
* ``core-http1-scan``: ``scan`` of the complete head (content-length, expect, framing);
* ``core-http1-finish``: ``finish``: the header dict and the path/query split;
* ``core-http1-head``: ``response_head`` of a non-streamed answer (one provider header,
  ``date``, ``content-length``) followed by its ~330-byte body;
* ``core-http1-chunk``: ``chunk`` of one ~220-byte stream event (the common batch), and
  of the first batch, which carries the head.

Each round performs 1 000 operations; the per-operation table at the end gives µs/op
and the C/py ratio.  Run: ``pytest benchmarks/test_bench_core_http1.py --benchmark-only``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from twins import IMPLS, twin

OPS = 1_000
URL = b"/v1/chat/completions"
HEADERS = [
    (b"Host", b"127.0.0.1:8080"), (b"Content-Type", b"application/json"),
    (b"Content-Length", b"412"), (b"User-Agent", b"OpenAI/Python 1.50.0"),
    (b"Accept", b"application/json"),
    (b"Authorization", b"Bearer sk-bench-0123456789abcdef0123456789abcdef"),
    (b"X-Stainless-Lang", b"python"), (b"X-Stainless-Retry-Count", b"0"),
]
COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-upstream","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":57,"completion_tokens":11,"total_tokens":68}}'
)
EVENT = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
         b'"model":"bench-upstream","choices":[{"index":0,"delta":{"content":"word "},'
         b'"finish_reason":null}]}\n\n')
DATE = b"date: Thu, 26 Nov 2026 09:18:03 GMT\r\nserver: hapax\r\n"
RID = "req_1a2b3c4d000000002a"


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return twin("http1", request.param)


def is_baseline(impl: ModuleType) -> bool:
    return impl.__name__.endswith("_py")


def full_head(impl: ModuleType) -> Any:
    head = impl.RequestHead()
    head.on_url(URL)
    for name, value in HEADERS:
        head.on_header(name, value)
    return head


@pytest.mark.benchmark(group="core-http1-collect: on_url + 8 on_header + reset")
def test_collect(measure: Any, impl: ModuleType) -> None:
    head = impl.RequestHead()
    on_url, on_header, reset = head.on_url, head.on_header, head.reset
    h0, h1, h2, h3, h4, h5, h6, h7 = HEADERS

    def run() -> None:
        for _ in range(OPS):
            on_url(URL)
            # As httptools calls it: one call per header, no loop of our own.
            on_header(*h0)
            on_header(*h1)
            on_header(*h2)
            on_header(*h3)
            on_header(*h4)
            on_header(*h5)
            on_header(*h6)
            on_header(*h7)
            reset()

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert head.size == 0


@pytest.mark.benchmark(group="core-http1-scan: the complete head, 8 headers")
def test_scan(measure: Any, impl: ModuleType) -> None:
    scan = full_head(impl).scan

    def run() -> None:
        for _ in range(OPS):
            scan(1 << 20)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert scan(1 << 20) == impl.BODY_FRAMED


@pytest.mark.benchmark(group="core-http1-finish: header dict + target split, 8 headers")
def test_finish(measure: Any, impl: ModuleType) -> None:
    finish = full_head(impl).finish

    def run() -> None:
        for _ in range(OPS):
            finish()

    measure(run, ops=OPS, baseline=is_baseline(impl))
    headers, path, query = finish()
    assert len(headers) == 8 and path == "/v1/chat/completions" and query is None


@pytest.mark.benchmark(group="core-http1-head: response head + 330-byte body")
def test_response_head(measure: Any, impl: ModuleType) -> None:
    response_head = impl.response_head
    provider = [(b"content-type", b"application/json")]
    extra: list[tuple[bytes, bytes]] = []
    framing = b"content-length: %d\r\n" % len(COMPLETION)

    def run() -> None:
        for _ in range(OPS):
            response_head(200, provider, extra, RID, "canned", DATE, b"", framing, b"",
                          COMPLETION)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert response_head(200, provider, extra, RID, "canned", DATE, b"", framing, b"",
                         COMPLETION).endswith(b"\r\n\r\n" + COMPLETION)


@pytest.mark.benchmark(group="core-http1-chunk: one event, framed")
def test_chunk(measure: Any, impl: ModuleType) -> None:
    chunk = impl.chunk
    batch = [EVENT]

    def run() -> None:
        for _ in range(OPS):
            chunk(batch, b"", True)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert chunk(batch) == b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


@pytest.mark.benchmark(group="core-http1-chunk-first: head + one event, framed")
def test_chunk_with_head(measure: Any, impl: ModuleType) -> None:
    chunk = impl.chunk
    batch = [EVENT]
    head = impl.response_head(200, [(b"content-type", b"text/event-stream"),
                                     (b"cache-control", b"no-cache")], [], RID, "canned",
                              DATE, b"", b"transfer-encoding: chunked\r\n", b"")

    def run() -> None:
        for _ in range(OPS):
            chunk(batch, head, True)

    measure(run, ops=OPS, baseline=is_baseline(impl))
    assert chunk(batch, head).startswith(head)
