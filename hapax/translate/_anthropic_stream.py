"""Streams: Anthropic Messages events ⇄ OpenAI ``chat.completion.chunk`` events, one
complete SSE event in, complete SSE events out (see :mod:`hapax.translate.anthropic`).

Both translators sit on the per-event hot path: a text delta costs one ``event_data``,
one ``orjson.loads`` and one ``orjson.dumps`` of the text, glued to prebuilt bytes
(``benchmarks/test_bench_translate.py``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from hapax._core.sse import event_data
from hapax.errors import UpstreamError
from hapax.translate._anthropic_request import _is_int
from hapax.translate._anthropic_response import (
    _FINISH_TO_STOP,
    _STOP_TO_FINISH,
    _int,
    _new_id,
    openai_usage,
)

__all__ = ["OpenAIToAnthropicStream", "AnthropicToOpenAIStream"]

_DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
_EV_MESSAGE_START = b"event: message_start\ndata: "
_EV_BLOCK_START = b"event: content_block_start\ndata: "
_EV_BLOCK_DELTA = b"event: content_block_delta\ndata: "
_EV_BLOCK_STOP = b"event: content_block_stop\ndata: "
_EV_MESSAGE_DELTA = b"event: message_delta\ndata: "
_EV_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_TEXT_DELTA_HEAD = b'{"type":"content_block_delta","index":'
_END = b"\n\n"
_CHUNK_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'


def _parse_chunk(data: bytes, what: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamError(f"malformed {what} chunk from the provider: not a JSON object")
    return chunk


def _stream_error(error: object, what: str) -> UpstreamError:
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = "no message"
    return UpstreamError(f"the provider reported an error mid-stream ({what}): {message}")


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` events in, Anthropic Messages stream events out.

    :meth:`feed` takes one complete SSE event and returns the events (complete, each
    ending in a blank line) to send on.  ``complete`` turns true when ``message_stop`` has
    been produced (on the upstream's ``[DONE]``); ``usage`` is the last usage the upstream
    reported (OpenAI-style dict) or ``None``.
    """

    __slots__ = ("model", "complete", "usage", "_started", "_index", "_open", "_tool",
                 "_stop_reason", "_text_head")

    def __init__(self, model: str) -> None:
        self.model = model
        self.complete = False
        self.usage: dict[str, Any] | None = None
        self._started = False
        self._index = -1  # index of the last content block started
        self._open: str | None = None  # "text" / "tool" / None: the open block's kind
        self._tool: object = None  # the OpenAI tool-call index of the open tool block
        self._stop_reason = "end_turn"
        self._text_head = b""  # prebuilt start of a text delta event for the open block

    def feed(self, event: bytes) -> list[bytes]:
        """Translate one upstream event; raise UpstreamError on an error or malformed one."""
        data = event_data(event)
        if not data or self.complete:
            return []
        if data == _DONE:
            return self._finish()
        chunk = _parse_chunk(data, "chat completion")
        error = chunk.get("error")
        if error is not None:
            raise _stream_error(error, "chat completion")
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(chunk.get("id")))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _normal_openai_usage(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return out
        choice = choices[0]
        if not isinstance(choice, dict):
            raise UpstreamError("malformed chat completion chunk from the provider: "
                                "choices[0] is not an object")
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content") or delta.get("refusal")
            if text and isinstance(text, str):
                if self._open != "text":
                    self._start_block(out, "text", {"type": "text", "text": ""})
                out.append(self._text_head + orjson.dumps(text) + b"}}\n\n")
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    self._tool_delta(out, call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._stop_reason = _FINISH_TO_STOP.get(finish, "end_turn")
        return out

    def _message_start(self, upstream_id: object) -> bytes:
        self._started = True
        message_id = "msg_" + upstream_id if isinstance(upstream_id, str) \
            else _new_id("msg_")
        message: dict[str, Any] = {
            "id": message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _EV_MESSAGE_START + orjson.dumps({"type": "message_start",
                                                 "message": message}) + _END

    def _start_block(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        if self._open is not None:
            out.append(self._block_stop())
        self._index += 1
        self._open = kind
        out.append(_EV_BLOCK_START + orjson.dumps({
            "type": "content_block_start", "index": self._index, "content_block": block,
        }) + _END)
        if kind == "text":
            self._text_head = (_EV_BLOCK_DELTA + _TEXT_DELTA_HEAD + str(self._index).encode()
                               + b',"delta":{"type":"text_delta","text":')

    def _block_stop(self) -> bytes:
        self._open = None
        return _EV_BLOCK_STOP + b'{"type":"content_block_stop","index":' \
            + str(self._index).encode() + b"}\n\n"

    def _tool_delta(self, out: list[bytes], call: object) -> None:
        if not isinstance(call, dict):
            raise UpstreamError("malformed chat completion chunk from the provider: a tool "
                                "call delta is not an object")
        index = call.get("index", 0)
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        if self._open != "tool" or index != self._tool:
            call_id, name = call.get("id"), function.get("name")
            self._start_block(out, "tool", {
                "type": "tool_use", "id": call_id if isinstance(call_id, str)
                else _new_id("toolu_"), "name": name if isinstance(name, str) else "",
                "input": {}})
            self._tool = index
        arguments = function.get("arguments")
        if arguments and isinstance(arguments, str):
            out.append(_EV_BLOCK_DELTA + orjson.dumps({
                "type": "content_block_delta", "index": self._index,
                "delta": {"type": "input_json_delta", "partial_json": arguments}}) + _END)

    def _finish(self) -> list[bytes]:
        out = [] if self._started else [self._message_start(None)]
        if self._open is not None:
            out.append(self._block_stop())
        usage = {"output_tokens": self.usage["completion_tokens"] if self.usage else 0}
        if self.usage:
            usage["input_tokens"] = self.usage["prompt_tokens"]
        out.append(_EV_MESSAGE_DELTA + orjson.dumps({
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": usage}) + _END)
        out.append(_EV_MESSAGE_STOP)
        self.complete = True
        return out


def _normal_openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": total if _is_int(total) else prompt + completion}


class AnthropicToOpenAIStream:
    """Anthropic Messages stream events in, OpenAI ``chat.completion.chunk`` events out.

    :meth:`feed` takes one complete SSE event and returns the ``data: ...`` events to send
    on.  On ``message_stop`` it produces the final chunk (with ``finish_reason``), a usage
    chunk if ``include_usage`` (the client's ``stream_options.include_usage``), and
    ``data: [DONE]``; ``complete`` then turns true.  ``usage`` is the usage reported so far
    (OpenAI-style dict) or ``None``.
    """

    __slots__ = ("model", "include_usage", "complete", "usage", "_head",
                 "_id", "_created", "_blocks", "_tools", "_stop_reason", "_anthropic_usage")

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.complete = False
        self.usage: dict[str, Any] | None = None
        self._head = b""  # prebuilt chunk bytes up to the delta object
        self._id = ""
        self._created = 0
        self._blocks: dict[int, int] = {}  # content block index -> tool call index
        self._tools = 0
        self._stop_reason: object = None
        self._anthropic_usage: dict[str, Any] = {}

    def feed(self, event: bytes) -> list[bytes]:
        """Translate one upstream event; raise UpstreamError on an error or malformed one."""
        data = event_data(event)
        if not data or self.complete:
            return []
        chunk = _parse_chunk(data, "message stream")
        kind = chunk.get("type")
        if kind == "content_block_delta":
            delta = chunk.get("delta")
            if not isinstance(delta, dict):
                raise UpstreamError("malformed message stream chunk from the provider: "
                                    "content_block_delta without a delta")
            dkind = delta.get("type")
            if dkind == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise UpstreamError("malformed message stream chunk from the provider: "
                                        "a text_delta without text")
                return [self._chunk(b'{"content":' + orjson.dumps(text) + b"}")] \
                    if text else []
            if dkind == "input_json_delta":
                partial = delta.get("partial_json")
                index = chunk.get("index")
                tool = self._blocks.get(index) if _is_int(index) else None
                if tool is None or not isinstance(partial, str):
                    raise UpstreamError("malformed message stream chunk from the provider: "
                                        "input_json_delta outside a tool_use block")
                if not partial:
                    return []
                return [self._chunk(orjson.dumps({"tool_calls": [
                    {"index": tool, "function": {"arguments": partial}}]}))]
            return []  # thinking, signature and citations deltas have no equivalent
        if kind == "message_start":
            return [self._start(chunk.get("message"))]
        if kind == "content_block_start":
            return self._block_start(chunk)
        if kind == "message_delta":
            delta, usage = chunk.get("delta"), chunk.get("usage")
            if isinstance(delta, dict) and "stop_reason" in delta:
                self._stop_reason = delta["stop_reason"]
            if isinstance(usage, dict):
                self._anthropic_usage.update(
                    (k, v) for k, v in usage.items() if _is_int(v))
                self.usage = openai_usage(self._anthropic_usage)
            return []
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            raise _stream_error(chunk.get("error"), "message stream")
        return []  # ping, content_block_stop, and event types added later

    def _chunk(self, delta: bytes) -> bytes:
        if not self._head:
            raise UpstreamError("malformed message stream from the provider: content "
                                "before message_start")
        return self._head + delta + _CHUNK_TAIL

    def _start(self, message: object) -> bytes:
        if not isinstance(message, dict):
            raise UpstreamError("malformed message stream chunk from the provider: "
                                "message_start without a message")
        upstream_id = message.get("id")
        self._id = "chatcmpl-" + upstream_id if isinstance(upstream_id, str) \
            else _new_id("chatcmpl-")
        self._created = int(time.time())
        self._head = b"data: " + orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self.model})[:-1] + b',"choices":[{"index":0,"delta":'
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._anthropic_usage = {k: v for k, v in usage.items() if _is_int(v)}
            self.usage = openai_usage(self._anthropic_usage)
        return self._chunk(b'{"role":"assistant","content":""}')

    def _block_start(self, chunk: dict[str, Any]) -> list[bytes]:
        block = chunk.get("content_block")
        if not isinstance(block, dict):
            raise UpstreamError("malformed message stream chunk from the provider: "
                                "content_block_start without a content_block")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            return [self._chunk(b'{"content":' + orjson.dumps(text) + b"}")] \
                if isinstance(text, str) and text else []
        if kind != "tool_use":
            return []
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise UpstreamError("malformed message stream chunk from the provider: a tool_use "
                                "block without id or name")
        index = chunk.get("index")
        if not _is_int(index):
            raise UpstreamError("malformed message stream chunk from the provider: a "
                                "content_block_start without an index")
        tool = self._blocks[index] = self._tools
        self._tools += 1
        return [self._chunk(orjson.dumps({"tool_calls": [{
            "index": tool, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}))]

    def _finish(self) -> list[bytes]:
        stop = self._stop_reason
        finish = _STOP_TO_FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"
        if not self._head:
            raise UpstreamError("malformed message stream from the provider: message_stop "
                                "before message_start")
        out = [self._head + b'{},"logprobs":null,"finish_reason":"' + finish.encode()
               + b'"}]}\n\n']
        if self.include_usage:
            out.append(b"data: " + orjson.dumps({
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self.model, "choices": [],
                "usage": self.usage or openai_usage({})}) + _END)
        out.append(_DONE_EVENT)
        self.complete = True
        return out
