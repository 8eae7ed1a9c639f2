"""A fast OpenAI-compatible upstream stub: uvloop + httptools, keep-alive, canned answers.

``POST /v1/chat/completions`` answers a fixed chat completion, or a fixed SSE stream when
the request's ``Accept`` header asks for ``text/event-stream``; every other request gets a
404.  With ``--sse-delay MS`` the stream's events are written one at a time, MS apart (the
load tool's check that the gateway relays chunk by chunk, without buffering).

Nothing is parsed but HTTP framing, so the stub costs as little as a Python server can:
the load tool prefers nginx and falls back to this; the upstream-client benchmark uses it
so both clients face the same server.

Run: ``python benchmarks/load/stub.py [--port 0] [--host 127.0.0.1] [--sse-delay MS]`` —
prints ``PORT <n>`` once listening, serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import httptools

__all__ = ["COMPLETION", "SSE_BODY", "serve"]

#: The canned non-streaming answer (what a small real completion looks like).
COMPLETION = (
    b'{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion",'
    b'"created":1700000000,"model":"bench-upstream","system_fingerprint":"fp_bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox '
    b'jumps over the lazy dog. This is a canned answer from the benchmark stub."},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":57,"completion_tokens":19,"total_tokens":76}}'
)


def _sse() -> bytes:
    head = (b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
            b'"model":"bench-upstream","choices":[{"index":0,"delta":')
    words = [b"The", b" quick", b" brown", b" fox", b" jumps", b" over", b" the", b" lazy dog."]
    events = [b'data: ' + head + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
    for w in words:
        events.append(b'data: ' + head + b'{"content":"' + w + b'"},"finish_reason":null}]}\n\n')
    events.append(b'data: ' + head + b'{},"finish_reason":"stop"}]}\n\n')
    events.append(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
                  b'1700000000,"model":"bench-upstream","choices":[],"usage":{"prompt_tokens":57,'
                  b'"completion_tokens":8,"total_tokens":65}}\n\n')
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


#: The canned streaming answer: role, 8 content chunks, finish, usage, [DONE].
SSE_BODY = _sse()


def _response(ctype: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nx-request-id: stub\r\n\r\n" + body)


_JSON_RESP = _response(b"application/json", COMPLETION)
_SSE_RESP = _response(b"text/event-stream", SSE_BODY)
_SSE_HEAD, _, _ = _SSE_RESP.partition(b"\r\n\r\n")
_SSE_EVENTS = [e + b"\n\n" for e in SSE_BODY.split(b"\n\n") if e]
_NOT_FOUND = _response(b"application/json", b'{"error":{"message":"not found"}}').replace(
    b"200 OK", b"404 Not Found", 1)
_CLOSE = b"connection: close\r\n"


class _Stub(asyncio.Protocol):
    __slots__ = ("transport", "parser", "url", "sse", "delay")

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds between SSE events; 0 writes the stream at once
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.sse = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.sse = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"accept" and b"event-stream" in value:
            self.sse = True

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url == b"/v1/chat/completions" and self.parser.get_method() == b"POST":
            resp = _SSE_RESP if self.sse else _JSON_RESP
        else:
            resp = _NOT_FOUND
        if resp is _SSE_RESP and self.delay:
            self.transport.write(_SSE_HEAD + b"\r\n\r\n")
            self._trickle(0)
        elif self.parser.should_keep_alive():
            self.transport.write(resp)
        else:
            head, _, body = resp.partition(b"\r\n\r\n")
            self.transport.write(head + b"\r\n" + _CLOSE + b"\r\n" + body)
            self.transport.close()


    def _trickle(self, i: int) -> None:
        """Write event ``i`` of the stream, and schedule the next one ``delay`` later."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(_SSE_EVENTS[i])
        if i + 1 < len(_SSE_EVENTS):
            asyncio.get_running_loop().call_later(self.delay, self._trickle, i + 1)
        elif not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str = "127.0.0.1", port: int = 0,
                sse_delay: float = 0.0) -> asyncio.base_events.Server:
    """Start the stub on the running loop; ``server.sockets[0]`` has the port.

    ``sse_delay``: seconds between the events of a streamed answer (0: all at once).
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Stub(sse_delay), host, port, backlog=4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sse-delay", type=float, default=0.0, metavar="MS",
                        help="milliseconds between the events of a streamed answer")
    args = parser.parse_args(argv)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(serve(args.host, args.port, args.sse_delay / 1e3))
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    server.close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
