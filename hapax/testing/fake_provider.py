"""A fake OpenAI-compatible provider for tests: a real HTTP server on 127.0.0.1.

It records every request (method, path, headers, JSON body) and answers like OpenAI:
by default ``"Fake answer to: <last user message>"`` with usage, streamed as SSE when
asked.  Tests script other behaviour by queueing :class:`Reply` objects
(``fake.queue(Reply(status=429, ...))``) or by replacing ``fake.default``.

Runs in its own thread and event loop, so synchronous clients work against it.
Needs ``aiohttp`` (``pip install hapax[testing]``).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FakeProvider", "Reply", "RecordedRequest"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: ``(host, port)`` of the connection the request came on: tells pooled,
    #: reused connections apart from new ones.
    peer: tuple[str, int] | None = None

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
    ``drop_after_events``: close the connection abruptly after that many events.
    ``stall_after_events``: after that many events, go silent with the connection open.
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


def _prompt(req: Any) -> str:
    try:
        for m in reversed(req["messages"]):
            if m.get("role") == "user":
                c = m.get("content")
                return c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in c if isinstance(p, dict))
    except (KeyError, TypeError, AttributeError):
        pass
    return ""


class FakeProvider:
    """``with FakeProvider() as fake: ... fake.base_url ... fake.requests``"""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default = Reply()
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

    def _next(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

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

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        rec = RecordedRequest(request.method, request.path, dict(request.headers), body,
                              (peer[0], peer[1]) if peer else None)
        self.requests.append(rec)
        reply = self._next()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if reply.hang:
                await asyncio.sleep(3600)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.body is not None or reply.json is not None or reply.status != 200:
                data = reply.body if reply.body is not None else orjson.dumps(
                    reply.json if reply.json is not None else
                    {"error": {"message": f"fake error {reply.status}", "type": "fake",
                               "code": None, "param": None}})
                return web.Response(status=reply.status, body=data, headers=reply.headers,
                                    content_type=None if "Content-Type" in reply.headers
                                    else "application/json")
            req = rec.json if body else {}
            if request.path.endswith("/embeddings"):
                return web.json_response(self._embeddings(req))
            stream = reply.stream if reply.stream is not None else bool(req.get("stream"))
            if stream:
                return await self._stream(request, req, reply)
            return web.json_response(self._completion(req, reply))
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        finally:
            self.active -= 1

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

    def _events(self, req: Any, reply: Reply) -> list[bytes]:
        if reply.events is not None:
            return reply.events
        text = self._text(req, reply)
        size = max(1, -(-len(text) // max(1, reply.chunks)))
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
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
        for i, event in enumerate(self._events(req, reply)):
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
