"""A fake OpenAI-compatible provider for tests: a real HTTP server on 127.0.0.1.

It records every request (method, path, headers, JSON body, arrival time, the reply
it got) and answers like OpenAI: by default ``"Fake answer to: <last user message>"``
with usage, streamed as SSE when asked.  Tests script other behaviour, faults included
(see docs/testing.md), in three ways, tried in this order for each request:

* ``fake.queue(Reply(status=429, ...), ...)``: the next requests get these replies;
* ``fake.script = fn``: ``fn(recorded_request) -> Reply`` computes the reply (see
  :func:`cycle` for a flapping provider and :func:`at_random` for random failures);
* ``fake.default``: every other request.

:func:`sse`, :func:`chunk`, :data:`DONE` and :data:`MALFORMED` build hand-written
streams for ``Reply(events=[...])``.

Runs in its own thread and event loop, so synchronous clients work against it.
Needs ``aiohttp`` (``pip install hapax[testing]``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FakeProvider", "Reply", "RecordedRequest", "Script", "sse", "chunk", "DONE",
           "MALFORMED", "cycle", "at_random"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: ``(host, port)`` of the connection the request came on: tells pooled,
    #: reused connections apart from new ones.
    peer: tuple[str, int] | None = None
    #: ``time.monotonic()`` when the request (its body read) reached the fake: the
    #: spacing of two requests shows a retry's backoff.
    at: float = 0.0
    #: The reply the fake chose for this request.
    reply: Reply | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class Reply:
    """What the fake answers to one request.

    ``status``/``json``/``body``: a plain response (``body`` bytes win over ``json``).
    ``content``: answer text (default: derived from the prompt).
    ``delay``: seconds before the response head.  ``stream``: force streaming on/off
    (default: what the request asked).  ``chunks``: number of content pieces;
    ``chunk_delay``: seconds between events.  ``events``: raw SSE bytes to send instead
    of generated ones.  ``hang``: never answer (the connection stays open).
    ``drop_after_events``: close the connection abruptly after that many events
    (``0``: right after the response head, before any event).
    ``stall_after_events``: after that many events, go silent with the connection open.
    ``reset``: abort the TCP connection (an RST) without sending a byte of response;
    the gateway sees "connection reset by peer".  ``headers``: extra response headers
    (``{"Retry-After": "1"}``).

    Faults, as the gateway sees them::

        Reply(status=500)                         # an error status (OpenAI's envelope)
        Reply(status=429, headers={"Retry-After": "2"})
        Reply(reset=True)                         # connection reset, no response
        Reply(hang=True)                          # no response at all
        Reply(delay=3)                            # slow first byte
        Reply(stream=True, drop_after_events=2)   # stream cut after two events
        Reply(stream=True, stall_after_events=2)  # stream stall
        Reply(events=[chunk("Hi"), MALFORMED, DONE])  # malformed chunk mid-stream
        Reply(events=[chunk("Hi"), chunk(finish_reason="stop")])  # no [DONE]
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    content: str | None = None
    delay: float = 0.0
    stream: bool | None = None
    chunks: int = 3
    chunk_delay: float = 0.0
    events: list[bytes] | None = None
    hang: bool = False
    drop_after_events: int | None = None
    stall_after_events: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False


#: What ``FakeProvider.script`` holds: computes the reply to one request.
Script = Callable[[RecordedRequest], Reply]

#: The event that ends a complete OpenAI stream.
DONE = b"data: [DONE]\n\n"
#: A chat chunk event cut off in the middle of its JSON.
MALFORMED = b'data: {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [{\n\n'


def sse(data: Any) -> bytes:
    """One SSE event: ``data`` as is if bytes or str, else as JSON."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = orjson.dumps(data)
    return b"data: " + data + b"\n\n"


def chunk(content: str | None = None, *, finish_reason: str | None = None,
          model: str = "fake-model") -> bytes:
    """One OpenAI ``chat.completion.chunk`` event carrying ``content`` (or only a
    ``finish_reason``), for hand-written streams: ``Reply(events=[chunk("Hi"), DONE])``."""
    delta = {"content": content} if content is not None else {}
    return sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


def cycle(*replies: Reply) -> Script:
    """A script answering with ``replies`` in turn, forever: a flapping provider is
    ``cycle(Reply(status=500), Reply())``."""
    turn = itertools.cycle(replies)
    return lambda request: next(turn)


def at_random(rate: float, failures: Sequence[Reply], *, seed: int = 0,
              ok: Reply | None = None) -> Script:
    """A script failing ``rate`` of the requests (0..1) at random, with one of
    ``failures`` picked at random, and answering the others with ``ok`` (default: a
    normal answer).  ``seed`` makes the sequence of choices repeatable."""
    rng = random.Random(seed)
    good = ok if ok is not None else Reply()
    return lambda request: rng.choice(failures) if rng.random() < rate else good


def _reset(transport: Any) -> None:
    """Abort the connection with an RST: SO_LINGER 0, then close without a goodbye."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _is_embeddings(path: str) -> bool:
    """Whether ``path`` is the embeddings endpoint (whose answers are never streamed)."""
    return path.endswith("/embeddings")


def _prompt(req: Any) -> str:
    """The text of the last user message of an OpenAI or Anthropic request body (its
    text parts, joined by spaces); empty if there is none."""
    try:
        for m in reversed(req["messages"]):
            if m.get("role") == "user":
                c = m.get("content")
                return c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in c if isinstance(p, dict)
                    and p.get("type") == "text")
    except (KeyError, TypeError, AttributeError):
        pass
    return ""


class FakeProvider:
    """``with FakeProvider() as fake: ... fake.base_url ... fake.requests``"""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default = Reply()
        #: Computes the reply to each request that finds the queue empty (else ``default``).
        self.script: Script | None = None
        self._queue: deque[Reply] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.port = 0
        self.active = 0  # requests being answered right now
        self.max_active = 0  # the most answered at once (concurrency limits)
        self.disconnects = 0  # requests whose client (the gateway) went away mid-answer

    # -- scripting ------------------------------------------------------------------

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._queue.extend(replies)

    def _next(self, request: RecordedRequest | None = None) -> Reply:
        """The reply to ``request``: queued, else scripted, else the default (a caller
        that passes no request, such as an older subclass, skips the script)."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        script = self.script
        if script is not None and request is not None:
            return script(request)
        return self.default

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(target=self._run, name="hapax-fake-provider",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake provider did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        from aiohttp import web

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a gateway that hangs up stops the answer at once (and is
        # counted in `disconnects`), even while the reply is hanging or delayed.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     handler_cancellation=True)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.close()

    # -- answering --------------------------------------------------------------------

    async def _receive(self, request: Any) -> tuple[RecordedRequest, Reply]:
        """Read and record one request and choose its reply (queue, script, default);
        a ``reset`` reply is carried out here."""
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        rec = RecordedRequest(request.method, request.path, dict(request.headers), body,
                              (peer[0], peer[1]) if peer else None, time.monotonic())
        self.requests.append(rec)
        reply = rec.reply = self._next(rec)
        if reply.reset:
            _reset(request.transport)
        return rec, reply

    async def _handle(self, request: Any) -> Any:
        """Answer one request: record it, carry out its reply's faults (reset, hang,
        delay), then send the reply's error or body, or a generated answer (streamed when
        asked).  Subclasses speak another API by overriding the ``_serves``,
        ``_error_body``, ``_answer``/``_completion`` and ``_events`` hooks."""
        from aiohttp import web

        rec, reply = await self._receive(request)
        if reply.reset:
            return web.Response()  # never sent: the connection is gone
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if reply.hang:
                await asyncio.sleep(3600)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.status == 200 and reply.json is None and reply.body is None \
                    and not self._serves(request.path):
                reply = Reply(status=404, json=self._error_body(404, f"no route {request.path}"))
            if reply.body is not None or reply.json is not None or reply.status != 200:
                data = reply.body if reply.body is not None else orjson.dumps(
                    reply.json if reply.json is not None else
                    self._error_body(reply.status, f"fake error {reply.status}"))
                return web.Response(status=reply.status, body=data, headers=reply.headers,
                                    content_type=None if "Content-Type" in reply.headers
                                    else "application/json")
            req = rec.json if rec.body else {}
            stream = reply.stream if reply.stream is not None else bool(req.get("stream"))
            if stream and not _is_embeddings(request.path):
                return await self._stream(request, req, reply)
            return self._answer(request.path, req, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        finally:
            self.active -= 1

    # -- the API spoken: hooks a fake of another provider overrides ----------------------

    def _serves(self, path: str) -> bool:
        """Whether ``path`` is an endpoint of the API (else a default reply is a 404)."""
        return True

    def _error_body(self, status: int, message: str) -> Any:
        """The JSON body of a generated error (OpenAI's envelope)."""
        return {"error": {"message": message, "type": "fake", "code": None, "param": None}}

    def _answer(self, path: str, req: Any, reply: Reply) -> Any:
        """The response to a successful, non-streamed request (with ``reply.headers``)."""
        from aiohttp import web

        answer = self._embeddings(req) if _is_embeddings(path) else self._completion(req, reply)
        return web.json_response(answer, headers=reply.headers)

    def _text(self, req: Any, reply: Reply) -> str:
        return reply.content if reply.content is not None else f"Fake answer to: {_prompt(req)}"

    def _completion(self, req: Any, reply: Reply) -> dict[str, Any]:
        text = self._text(req, reply)
        n = req.get("n") or 1
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()),
                 "total_tokens": 7 + len(text.split())}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model"),
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None} for i in range(n)],
                "usage": usage}

    def _embeddings(self, req: Any) -> dict[str, Any]:
        inputs = req.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs or []
        vector: Any = [0.1, 0.2, 0.3]
        if req.get("encoding_format") == "base64":  # what the openai SDK asks by default
            vector = base64.b64encode(struct.pack("<3f", *vector)).decode()
        return {"object": "list", "model": req.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": vector}
                         for i, _ in enumerate(inputs)],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}

    def _pieces(self, req: Any, reply: Reply) -> tuple[str, list[str]]:
        """The answer text, and the ``reply.chunks`` pieces a generated stream sends it in."""
        text = self._text(req, reply)
        size = max(1, -(-len(text) // max(1, reply.chunks)))
        return text, [text[i:i + size] for i in range(0, len(text), size)]

    def _events(self, req: Any, reply: Reply) -> list[bytes]:
        """The events of a generated stream (OpenAI's chunks, ``[DONE]`` last)."""
        text, pieces = self._pieces(req, reply)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": req.get("model")}

        def ev(obj: Any) -> bytes:
            return b"data: " + orjson.dumps({**base, **obj}) + b"\n\n"

        out = [ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None}]})]
        out += [ev({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
                for p in pieces]
        out.append(ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        opts = req.get("stream_options") or {}
        if opts.get("include_usage"):
            out.append(ev({"choices": [], "usage": {
                "prompt_tokens": 7, "completion_tokens": len(text.split()),
                "total_tokens": 7 + len(text.split())}}))
        out.append(b"data: [DONE]\n\n")
        return out

    async def _stream(self, request: Any, req: Any, reply: Reply) -> Any:
        from aiohttp import web

        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                       **reply.headers})
        await resp.prepare(request)
        events = reply.events if reply.events is not None else self._events(req, reply)
        for i, event in enumerate(events):
            if reply.drop_after_events is not None and i >= reply.drop_after_events:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if reply.stall_after_events is not None and i >= reply.stall_after_events:
                await asyncio.sleep(3600)
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await resp.write(event)
        await resp.write_eof()
        return resp
