"""The built-in ``mock`` provider: answers locally, deterministically, with no network.

What it answers is derived from the prompt, so the same request always gets the same
answer: ``"Mock answer to: <last user message>"`` (cut to ``max_tokens`` words, with
``finish_reason: length``).  Streams are cut into ``chunks`` pieces, ``chunk_delay``
apart, after ``latency``.  With ``tools`` (and ``tool_choice`` not ``none``) it calls
the chosen tool, filling its required string parameters with the prompt; after a
``tool`` message it answers in text.  Embeddings are unit vectors seeded by a hash of
each input, base64 (float32) or float lists as the request asks.

The provider's ``timeouts`` hold as for a real one: a ``latency`` above
``timeouts.first_byte`` or a ``chunk_delay`` above ``timeouts.idle`` ends in
:class:`~hapax.errors.UpstreamTimeout` when that timeout passes, so failover and stream
errors can be tried without a network.  A stream's ``close`` (the gateway calls it when
the request's deadline passes or the client leaves) stops it at once, even mid-pause.
"""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
import xxhash

from hapax.errors import BadRequest, UpstreamError, UpstreamTimeout
from hapax.providers.base import Provider
from hapax.types import Response, StreamResponse

if TYPE_CHECKING:
    from hapax.pipeline.exchange import Exchange
    from hapax.types import Attempt

__all__ = ["MockProvider"]

_JSON = [(b"content-type", b"application/json")]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _count(text: str) -> int:
    return len(text.split())


class MockProvider(Provider):
    kind = "mock"

    async def send(self, exchange: Exchange, attempt: Attempt, endpoint: str,
                   body: bytes) -> Response | StreamResponse:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON", code="invalid_json") from None
        if not isinstance(req, dict):
            raise BadRequest("request body must be a JSON object")
        latency, first_byte = self.config.latency, self.config.timeouts.first_byte
        if latency > first_byte:
            await asyncio.sleep(first_byte)
            raise UpstreamTimeout(f"provider {self.name!r} did not answer within "
                                  f"{first_byte:g}s (timeouts.first_byte)")
        if latency:
            await asyncio.sleep(latency)
        if endpoint == "embeddings":
            return Response(200, orjson.dumps(self._embeddings(req)), list(_JSON))
        plan = _Answer(req, self.name)
        if req.get("stream"):
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def close() -> None:
                if not closed.done():
                    closed.set_result(None)

            return StreamResponse(200, self._stream(plan, req, closed),
                                  [(b"content-type", b"text/event-stream"),
                                   (b"cache-control", b"no-cache")], close=close)
        return Response(200, orjson.dumps(plan.completion()), list(_JSON))

    async def _stream(self, plan: _Answer, req: dict[str, Any],
                      closed: asyncio.Future[None]) -> AsyncIterator[list[bytes]]:
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        delay, idle = self.config.chunk_delay, self.config.timeouts.idle
        pieces = plan.pieces(self.config.chunks)
        for i, chunk in enumerate(plan.chunks(pieces, include_usage)):
            if i and delay:
                await asyncio.wait([closed], timeout=min(delay, idle))
                if not closed.done() and delay > idle:
                    raise UpstreamTimeout(f"provider {self.name!r} went silent for {idle:g}s "
                                          f"in the middle of its response (timeouts.idle)")
            if closed.done():
                raise UpstreamError(f"stream from provider {self.name!r} closed")
            yield [b"data: " + orjson.dumps(chunk) + b"\n\n"]
        yield [b"data: [DONE]\n\n"]

    def _embeddings(self, req: dict[str, Any]) -> dict[str, Any]:
        inputs = req.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("'input' must be a string or a non-empty list", param="input")
        dims = req.get("dimensions") or self.config.dimensions
        if not isinstance(dims, int) or not 0 < dims <= 65536:
            raise BadRequest("'dimensions' must be a positive integer", param="dimensions")
        b64 = req.get("encoding_format") == "base64"
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += max(1, _count(text))
            rng = random.Random(xxhash.xxh64_intdigest(text.encode()))
            vec = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            vec = [v / norm for v in vec]
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": req.get("model", "mock"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class _Answer:
    """What the mock answers to one chat request."""

    def __init__(self, req: dict[str, Any], provider: str) -> None:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        self.model = req.get("model") or "mock"
        self.n = req.get("n") or 1
        if not isinstance(self.n, int) or not 1 <= self.n <= 128:
            raise BadRequest("'n' must be an integer between 1 and 128", param="n")
        prompt = ""
        self.prompt_tokens = 0
        for m in messages:
            if not isinstance(m, dict):
                raise BadRequest("each message must be an object", param="messages")
            text = _text_of(m.get("content"))
            self.prompt_tokens += _count(text) + 1
            if m.get("role") == "user":
                prompt = text
        seed = xxhash.xxh64_hexdigest(orjson.dumps(messages))
        self.id = f"chatcmpl-mock{seed}"
        self.created = int(time.time())
        self.tool_call = None
        tools = req.get("tools")
        choice = req.get("tool_choice", "auto")
        if tools and choice != "none" and messages[-1].get("role") != "tool":
            self.tool_call = self._call(tools, choice, prompt, seed)
        words = ("Mock answer to: " + prompt).split()
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        self.finish = "tool_calls" if self.tool_call else "stop"
        if isinstance(limit, int) and limit > 0 and len(words) > limit and not self.tool_call:
            words, self.finish = words[:limit], "length"
        self.text = " ".join(words)
        self.completion_tokens = (_count(self.tool_call["function"]["arguments"])
                                  if self.tool_call else len(words))

    @staticmethod
    def _call(tools: list[Any], choice: Any, prompt: str, seed: str) -> dict[str, Any] | None:
        funcs: list[dict[str, Any]] = [t["function"] for t in tools if isinstance(t, dict)
                                       and isinstance(t.get("function"), dict)]
        if not funcs:
            return None
        fn = funcs[0]
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            fn = next((f for f in funcs if f.get("name") == wanted), fn)
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        args = {}
        for name in params.get("required") or list(props)[:1]:
            kind = (props.get(name) or {}).get("type", "string")
            args[name] = {"integer": 1, "number": 1.0, "boolean": True, "array": [],
                          "object": {}}.get(kind, prompt)
        return {"id": f"call_{seed[:24]}", "type": "function",
                "function": {"name": fn.get("name", "tool"), "arguments": orjson.dumps(args)
                             .decode()}}

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens * self.n,
                "total_tokens": self.prompt_tokens + self.completion_tokens * self.n}

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool_call
                                   else self.text, "refusal": None}
        if self.tool_call:
            message["tool_calls"] = [self.tool_call]
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_hapax_mock",
                "choices": [{"index": i, "message": message, "logprobs": None,
                             "finish_reason": self.finish} for i in range(self.n)],
                "usage": self.usage()}

    def pieces(self, chunks: int) -> list[str]:
        text = self.tool_call["function"]["arguments"] if self.tool_call else self.text
        size = max(1, -(-len(text) // chunks))
        return [text[i:i + size] for i in range(0, len(text), size)] or [""]

    def chunks(self, pieces: list[str], include_usage: bool) -> list[dict[str, Any]]:
        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            c: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                 "created": self.created, "model": self.model,
                                 "system_fingerprint": "fp_hapax_mock", "choices": choices}
            if include_usage:
                c["usage"] = None
            return c

        def each(delta_of: Any, finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": i, "delta": delta_of(i), "logprobs": None, "finish_reason": finish}
                    for i in range(self.n)]

        out = []
        if self.tool_call:
            call = self.tool_call
            out.append(chunk(each(lambda i: {"role": "assistant", "content": None,
                                             "tool_calls": [{"index": 0, "id": call["id"],
                                                             "type": "function",
                                                             "function": {"name": call[
                                                                 "function"]["name"],
                                                                 "arguments": ""}}]})))
            for p in pieces:
                out.append(chunk(each(lambda i, p=p: {"tool_calls": [
                    {"index": 0, "function": {"arguments": p}}]})))
        else:
            out.append(chunk(each(lambda i: {"role": "assistant", "content": "",
                                             "refusal": None})))
            for p in pieces:
                out.append(chunk(each(lambda i, p=p: {"content": p})))
        out.append(chunk(each(lambda i: {}, self.finish)))
        if include_usage:
            last = chunk([])
            last["usage"] = self.usage()
            out.append(last)
        return out
