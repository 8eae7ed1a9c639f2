"""A fake Anthropic Messages API for tests: a real HTTP server on 127.0.0.1.

It records every request (``fake.requests``) and answers ``POST /v1/messages`` like
Anthropic: by default ``"Fake answer to: <last user text>"`` with usage, streamed as
Anthropic's event sequence (``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``…, ``content_block_stop``, ``message_delta``, ``message_stop``)
when the request says ``"stream": true``.  It is scripted like the OpenAI fake (queued
:class:`~hapax.testing.fake_provider.Reply` objects, ``script``, ``default``, faults
included); for tool use, answer with :func:`tool_use_message` (``Reply(json=...)``) or
:func:`tool_use_events` (``Reply(events=...)``).  Errors are in Anthropic's envelope.

``base_url`` has no ``/v1``, like the Anthropic SDK's.  Needs ``aiohttp``.
"""

from __future__ import annotations

from typing import Any

import orjson

from hapax.testing.fake_provider import FakeProvider, RecordedRequest, Reply

__all__ = ["FakeAnthropic", "Reply", "RecordedRequest", "sse", "tool_use_events",
           "tool_use_message", "PROMPT_TOKENS"]

#: ``input_tokens`` of every generated answer.
PROMPT_TOKENS = 9

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}


def sse(obj: dict[str, Any]) -> bytes:
    """One Anthropic stream event: ``event: <type>`` and its JSON ``data``."""
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _message(model: Any, content: list[dict[str, Any]], stop_reason: str | None,
             output_tokens: int) -> dict[str, Any]:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": output_tokens}}


def tool_use_message(name: str, tool_input: dict[str, Any], *, model: str = "claude-fake",
                     text: str | None = None, tool_id: str = "toolu_fake1") -> dict[str, Any]:
    """A complete (non-streamed) answer calling tool ``name`` with ``tool_input``
    (after ``text``, if given): ``stop_reason: tool_use``."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
    return _message(model, content, "tool_use", 12)


def tool_use_events(name: str, tool_input: dict[str, Any], *, model: str = "claude-fake",
                    tool_id: str = "toolu_fake1", pieces: int = 3) -> list[bytes]:
    """The streamed form of :func:`tool_use_message` (without text): the tool's input
    arrives as ``input_json_delta`` pieces."""
    args = orjson.dumps(tool_input).decode()
    size = max(1, -(-len(args) // pieces))
    out = [sse({"type": "message_start", "message": {**_message(model, [], None, 1)}}),
           sse({"type": "content_block_start", "index": 0, "content_block": {
               "type": "tool_use", "id": tool_id, "name": name, "input": {}}})]
    out += [sse({"type": "content_block_delta", "index": 0, "delta": {
        "type": "input_json_delta", "partial_json": args[i:i + size]}})
        for i in range(0, len(args), size)]
    out += [sse({"type": "content_block_stop", "index": 0}),
            sse({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": 12}}),
            sse({"type": "message_stop"})]
    return out


class FakeAnthropic(FakeProvider):
    """``with FakeAnthropic() as fake: ... fake.base_url ... fake.requests``"""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serves(self, path: str) -> bool:
        return path == "/v1/messages"

    def _error_body(self, status: int, message: str) -> Any:
        """Anthropic's error envelope, its error type chosen by ``status``."""
        return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"),
                                           "message": message}}

    def _completion(self, req: Any, reply: Reply) -> dict[str, Any]:
        text = self._text(req, reply)
        return _message(req.get("model"), [{"type": "text", "text": text}], "end_turn",
                        len(text.split()))

    def _events(self, req: Any, reply: Reply) -> list[bytes]:
        """Anthropic's event sequence for a text answer."""
        text, pieces = self._pieces(req, reply)
        out = [sse({"type": "message_start",
                    "message": _message(req.get("model"), [], None, 1)}),
               sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
               sse({"type": "ping"})]
        out += [sse({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": p}}) for p in pieces]
        out += [sse({"type": "content_block_stop", "index": 0}),
                sse({"type": "message_delta",
                     "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": {"output_tokens": len(text.split())}}),
                sse({"type": "message_stop"})]
        return out
