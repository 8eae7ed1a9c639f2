"""Whole responses, usage and error bodies: Anthropic Messages ⇄ OpenAI Chat
Completions (see :mod:`hapax.translate.anthropic`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from hapax.errors import UpstreamError
from hapax.translate._anthropic_request import _is_int

__all__ = [
    "openai_to_anthropic_response",
    "anthropic_to_openai_response",
    "anthropic_error_body",
    "openai_error_to_anthropic",
    "anthropic_error_to_openai",
    "openai_usage",
]

_STOP_TO_FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
_FINISH_TO_STOP = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}
# Anthropic's error types, by HTTP status; and the types it uses at all.
_STATUS_TO_ANTHROPIC_TYPE = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 502: "api_error", 504: "api_error",
    503: "overloaded_error", 529: "overloaded_error",
}
_ANTHROPIC_TYPES = frozenset(_STATUS_TO_ANTHROPIC_TYPE.values())
# Anthropic error type -> (OpenAI-style type, code).
_ANTHROPIC_TYPE_TO_OPENAI = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
    # Sent by Anthropic, never produced by anthropic_error_body (see _anthropic_type).
    "timeout_error": ("timeout_error", "upstream_timeout"),
    "billing_error": ("permission_error", "billing_error"),
}


# -- responses ----------------------------------------------------------------------------


def _int(value: object) -> int:
    return value if _is_int(value) else 0


def openai_usage(anthropic_usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic ``usage`` as OpenAI's: prompt tokens include cache writes and reads."""
    if not isinstance(anthropic_usage, dict):
        anthropic_usage = {}
    get = anthropic_usage.get
    prompt = _int(get("input_tokens")) + _int(get("cache_creation_input_tokens")) \
        + _int(get("cache_read_input_tokens"))
    completion = _int(get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _anthropic_usage(usage: object) -> dict[str, Any]:
    """OpenAI ``usage`` as Anthropic's; cached prompt tokens become cache reads."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out = {"input_tokens": prompt - cached if 0 < cached <= prompt else prompt,
           "output_tokens": _int(usage.get("completion_tokens"))}
    if 0 < cached <= prompt:
        out["cache_read_input_tokens"] = cached
    return out


def openai_to_anthropic_response(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` (first choice)."""
    if not isinstance(body, dict):
        raise UpstreamError("malformed chat completion from the provider: not a JSON object")
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise UpstreamError("malformed chat completion from the provider: no choices[0].message")
    message = choice["message"]
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some OpenAI-compatible servers answer with parts
        text = "".join(p["text"] for p in text
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError("malformed chat completion from the provider: a tool call "
                                "without a function name")
        arguments = function.get("arguments")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamError("malformed chat completion from the provider: tool call "
                                f"arguments of {function['name']!r} are not a JSON object")
        call_id = call.get("id")
        content.append({"type": "tool_use",
                        "id": call_id if isinstance(call_id, str) else _new_id("toolu_"),
                        "name": function["name"], "input": parsed})
    finish = choice.get("finish_reason")
    stop_reason = _FINISH_TO_STOP.get(finish, "end_turn") if isinstance(finish, str) \
        else "end_turn"
    upstream_id = body.get("id")
    return {
        "id": "msg_" + upstream_id if isinstance(upstream_id, str) else _new_id("msg_"),
        "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": _anthropic_usage(body.get("usage")),
    }


def anthropic_to_openai_response(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` with one choice."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise UpstreamError("malformed message from the provider: no content array")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body["content"]:
        if not isinstance(block, dict):
            raise UpstreamError("malformed message from the provider: a content block is "
                                "not an object")
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise UpstreamError("malformed message from the provider: a text block "
                                    "without text")
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise UpstreamError("malformed message from the provider: a tool_use block "
                                    "without id or name")
            try:
                arguments = orjson.dumps(block.get("input", {})).decode()
            except orjson.JSONEncodeError:
                raise UpstreamError("malformed message from the provider: tool_use input "
                                    "cannot be encoded") from None
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": arguments}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    stop = body.get("stop_reason")
    finish = _STOP_TO_FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"
    upstream_id = body.get("id")
    return {
        "id": "chatcmpl-" + upstream_id if isinstance(upstream_id, str)
        else _new_id("chatcmpl-"),
        "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
        "usage": openai_usage(body.get("usage") or {}),
    }


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


# -- errors -------------------------------------------------------------------------------


def _anthropic_type(status: int, type: str | None) -> str:
    if type in _ANTHROPIC_TYPES:
        return type
    if type in ("timeout_error", "upstream_error", "server_error"):
        return "overloaded_error" if status in (503, 529) else "api_error"
    found = _STATUS_TO_ANTHROPIC_TYPE.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str, type: str | None = None) -> bytes:
    """An Anthropic error envelope; ``type`` (Anthropic's, or one of Hapax's OpenAI-style
    types) defaults to the one Anthropic uses for ``status``."""
    return orjson.dumps({"type": "error", "error": {"type": _anthropic_type(status, type),
                                                    "message": message}})


def _error_fields(body: bytes, status: int, shape: str) -> tuple[str, str | None]:
    """(message, type) of an error body in the ``shape`` ("openai" or "anthropic")."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return error["message"], kind if isinstance(kind, str) else None
    if isinstance(error, str) and shape == "openai":  # some compatible servers do this
        return error, None
    text = body.decode("utf-8", "replace").strip()[:1000]
    return text or f"the provider answered HTTP {status}", None


def openai_error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI-style error body as an Anthropic one (the message kept)."""
    message, kind = _error_fields(body, status, "openai")
    return anthropic_error_body(status, message, kind)


def anthropic_error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic error body as an OpenAI-style one (the message kept)."""
    message, kind = _error_fields(body, status, "anthropic")
    found = _ANTHROPIC_TYPE_TO_OPENAI.get(kind) if kind else None
    openai_type, code = found or _ANTHROPIC_TYPE_TO_OPENAI[_anthropic_type(status, kind)]
    return orjson.dumps({"error": {"message": message, "type": openai_type,
                                   "param": None, "code": code}})
